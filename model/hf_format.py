"""Hugging Face layout: config.json + (sharded) safetensors; names and q/k row order from the family (model/families/)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.errors import UserError
from common.io import atomic_write, write_json
from model.config import ModelConfig, checked, rope_scaling_from
from model.families import FAMILIES
from model.tensor_names import from_ours, to_ours

DROPPED_SUFFIXES = ("rotary_emb.inv_freq",)


def family_from_hf(cfg: dict, name: str) -> str:
    """The family whose HF model_type config.json names."""
    for family in FAMILIES.values():
        if family.hf_model_type == cfg.get("model_type"):
            return family.name
    known = ", ".join(f.hf_model_type for f in FAMILIES.values())
    raise ValueError(f"{name}: model_type {cfg.get('model_type')!r} is not supported ({known})")


def config_from_hf(cfg: dict, name: str) -> ModelConfig:
    """ModelConfig from an HF config.json dict."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{name}: config.json must hold an object, got a {type(cfg).__name__}")
    family = family_from_hf(cfg, name)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size") if k not in cfg]
    if missing:
        raise ValueError(f"{name}: config.json is missing {missing}")
    dim, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1:
        raise ValueError(f"{name}: num_attention_heads must be a positive integer, got {n_heads!r}")
    if cfg.get("head_dim") not in (None, dim // n_heads):
        raise ValueError(f"{name}: head_dim {cfg['head_dim']} != hidden_size / num_attention_heads is unsupported")
    scaling = None
    rope = cfg.get("rope_parameters") or {}  # transformers 5 writes rope_theta and the scaling in here
    rs = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if rs is not None:
        kind = rs.get("rope_type", rs.get("type"))
        if kind != "llama3":
            raise ValueError(f"{name}: rope_scaling type {kind!r} is not supported (only llama3)")
        scaling = rope_scaling_from(rs, name, "original_max_position_embeddings")
    return checked(name, ModelConfig,
        name=cfg.get("_name_or_path") or name, dim=dim, n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads, vocab_size=cfg["vocab_size"],
        ffn_dim=cfg["intermediate_size"], norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))), rope_scaling=scaling,
        max_seq_len=cfg.get("max_position_embeddings", 4096),
        sliding_window=cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), family=family,
    )  # fmt: skip


def hf_config_from(config: ModelConfig) -> dict:
    cfg = {
        "architectures": [FAMILIES[config.family].hf_architecture], "model_type": FAMILIES[config.family].hf_model_type,
        "_name_or_path": config.name, "hidden_size": config.dim, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "vocab_size": config.vocab_size, "intermediate_size": config.ffn_dim,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings, "hidden_act": "silu", "torch_dtype": "float32",
    }  # fmt: skip
    if config.sliding_window is not None:
        cfg["sliding_window"] = config.sliding_window
    if config.rope_scaling is not None:
        s = config.rope_scaling
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_seq_len}  # fmt: skip
    return cfg


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no weight_map")
        files = [path / f for f in sorted(set(weight_map.values()))]
    else:
        files = [path / "model.safetensors"]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing safetensors file")
    extra = sorted({p.name for p in path.glob("model*.safetensors")} - {f.name for f in files})
    if extra:  # a stale export's files beside this one: which set is meant cannot be told
        listed = f"{index.name} lists" if index.is_file() else "without an index, the weights are"
        names = [f.name for f in files]
        names = f"{names[0]} .. {names[-1]} ({len(names)} files)" if len(names) > 2 else ", ".join(names)
        raise UserError(f"{path}: the shard files do not fit together: {listed} {names}, but the folder also holds "
                        f"{', '.join(extra)}; remove the stale files or export again")
    return files


def read_hf_dir(path: str | Path, weights: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor] | None]:
    """Config and Meta-named state dict of an HF directory (safetensors, sharded or not;
    `weights=False`: the config, and None)."""
    path = Path(path)
    config = config_from_hf(_read_json(path / "config.json"), str(path))
    if not weights:
        return config, None
    state = {}
    for f in _safetensors_files(path):
        try:
            with safe_open(f, framework="pt") as reader:
                for key in reader.keys():
                    state[key] = reader.get_tensor(key)
        except Exception as err:
            raise ValueError(f"{f}: cannot read safetensors ({err})") from err
    state = {k: v for k, v in state.items() if not k.endswith(DROPPED_SUFFIXES)}
    return config, to_ours(state, config, "hf", str(path))


def write_hf_dir(state: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path, max_shard_bytes: int = 5 << 30,
                 token_ids: dict | None = None) -> None:  # fmt: skip
    """config.json + model.safetensors, or model-NNNNN-of-NNNNN.safetensors + index above max_shard_bytes.

    `token_ids`: bos_token_id / eos_token_id / pad_token_id written into config.json.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf = {k: v.detach().cpu().contiguous() for k, v in from_ours(state, config, "hf").items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in hf.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for name, shard in zip(names, shards):
        atomic_write(out_dir / name, lambda tmp, s=shard: save_file(s, tmp, metadata={"format": "pt"}))
    if n > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in hf.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}  # fmt: skip
        write_json(out_dir / "model.safetensors.index.json", index)
    cfg = hf_config_from(config)
    cfg["torch_dtype"] = str(next(iter(hf.values())).dtype).removeprefix("torch.")
    cfg.update(token_ids or {})
    write_json(out_dir / "config.json", cfg)
