"""Meta (LLaMA-2/3) and Mistral consolidated checkpoints: params.json <-> ModelConfig, shard merge/split."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.errors import UserError
from common.io import atomic_write, write_json
from model.config import Llama3RopeScaling, ModelConfig, checked, meta_ffn_dim, rope_scaling_from
from model.families import FAMILIES

# Meta's model-parallel layout: column-parallel weights split rows, row-parallel weights split columns.
_CAT_DIM0 = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3", "output")
_CAT_DIM1 = ("attention.wo", "feed_forward.w2")
_REPLICATED = ("attention_norm", "ffn_norm", "norm")
DROPPED_KEYS = ("rope.freqs",)
KNOWN_PARAMS = {
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier", "norm_eps",
    "rope_theta", "use_scaled_rope", "rope_scaling", "head_dim", "hidden_dim", "sliding_window", "max_seq_len",
    "max_batch_size", "tie_embeddings", "name", "family",
}  # fmt: skip


def family_from_params(params: dict, name: str) -> str:
    """The family a params.json names: its "family" key (ours, for families without a Meta-format release),
    else the first family whose sign keys it has (Mistral's sliding_window), else the first registered (LLaMA)."""
    if "family" in params:
        if params["family"] not in FAMILIES:
            raise ValueError(f"{name}: unknown model family {params['family']!r}; known: {', '.join(FAMILIES)}")
        return params["family"]
    signed = [f.name for f in FAMILIES.values() if f.meta_sign and all(params.get(k) for k in f.meta_sign)]
    return signed[0] if signed else next(iter(FAMILIES))


def config_from_params(params: dict, name: str, tokenizer_vocab: int | None = None) -> ModelConfig:
    """ModelConfig from a Meta/Mistral params.json dict (vocab_size -1 takes the tokenizer's size)."""
    if not isinstance(params, dict):
        raise ValueError(f"{name}: must hold an object of hyper-parameters, got a {type(params).__name__}")
    unknown = sorted(set(params) - KNOWN_PARAMS)
    if unknown:
        raise ValueError(f"{name}: params.json has unknown keys {unknown}")
    missing = [k for k in ("dim", "n_layers", "n_heads") if k not in params]
    if "hidden_dim" not in params and "multiple_of" not in params:
        missing.append("hidden_dim or multiple_of")
    if missing:
        raise ValueError(f"{name}: params.json is missing {missing}")
    dim, n_heads = params["dim"], params["n_heads"]
    for key, value in (("dim", dim), ("n_heads", n_heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")
    if params.get("head_dim", dim // n_heads) * n_heads != dim:
        raise ValueError(f"{name}: params.json head_dim {params.get('head_dim', dim / n_heads)} * n_heads {n_heads} "
                         f"!= dim {dim}")
    vocab = params.get("vocab_size", -1)
    if vocab is None or vocab <= 0:
        if tokenizer_vocab is None:
            raise ValueError(f"{name}: params.json has vocab_size {vocab} and there is no tokenizer.model to take it from")
        vocab = tokenizer_vocab
    if "hidden_dim" in params:
        ffn = params["hidden_dim"]
    else:
        ffn = meta_ffn_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
    scaling = None
    if isinstance(params.get("rope_scaling"), dict):
        scaling = rope_scaling_from(params["rope_scaling"], name, "original_max_seq_len")
    elif params.get("use_scaled_rope"):
        scaling = Llama3RopeScaling()
    theta = float(params.get("rope_theta", 10000.0))
    window = params.get("sliding_window")
    default_len = 131072 if scaling else 32768 if window else 8192 if theta >= 500000 else 4096
    return checked(name, ModelConfig,
        name=params.get("name", name), dim=dim, n_layers=params["n_layers"], n_heads=n_heads,
        n_kv_heads=params.get("n_kv_heads") or n_heads, vocab_size=vocab, ffn_dim=ffn,
        norm_eps=float(params.get("norm_eps", 1e-5)), rope_theta=theta, rope_scaling=scaling,
        max_seq_len=params.get("max_seq_len", default_len), sliding_window=window,
        tie_embeddings=bool(params.get("tie_embeddings", False)),
        family=family_from_params(params, name),
    )  # fmt: skip


# (multiple_of, ffn_dim_multiplier) pairs of Meta's own releases, tried first: LLaMA-2 7B/13B, 70B, LLaMA-3.
_META_FFN_CHOICES = ((256, None), (4096, 1.3), (1024, 1.3))


def meta_ffn_args(dim: int, ffn_dim: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) for which Meta's formula `meta_ffn_dim` gives ffn_dim back."""
    sizes = [1 << k for k in range(12, -1, -1)]
    for multiple_of, multiplier in (*_META_FFN_CHOICES, *((m, None) for m in sizes), *((m, 1.3) for m in sizes)):
        if meta_ffn_dim(dim, multiple_of, multiplier) == ffn_dim:
            return multiple_of, multiplier
    # Any size: a multiplier that lands exactly on ffn_dim (int() truncates, so aim half a unit above it).
    multiplier = (ffn_dim + 0.5) / int(2 * 4 * dim / 3)
    assert meta_ffn_dim(dim, 1, multiplier) == ffn_dim
    return 1, multiplier


def params_from_config(config: ModelConfig) -> dict:
    """params.json with exactly the keys Meta's ``ModelArgs`` (Mistral's, for a family declaring
    ``meta_params="mistral"``) takes.

    Meta: dim, n_layers, n_heads, n_kv_heads, vocab_size, multiple_of, ffn_dim_multiplier, norm_eps,
    rope_theta, use_scaled_rope; Mistral: dim, n_layers, head_dim, hidden_dim, n_heads, n_kv_heads,
    norm_eps, vocab_size, rope_theta, sliding_window. The sequence length is left to the loader, as in
    Meta's files. Only what neither has is written as our own key: tied embeddings (SmolLM2), RoPE
    scaling other than LLaMA-3.1's, and the family when these keys do not name it (Qwen2).
    """
    mistral = FAMILIES[config.family].meta_params == "mistral"
    if mistral:
        params = dict(
            dim=config.dim, n_layers=config.n_layers, head_dim=config.head_dim, hidden_dim=config.ffn_dim,
            n_heads=config.n_heads, n_kv_heads=config.n_kv_heads, norm_eps=config.norm_eps,
            vocab_size=config.vocab_size,
        )  # fmt: skip
    else:
        multiple_of, multiplier = meta_ffn_args(config.dim, config.ffn_dim)
        params = dict(dim=config.dim, n_layers=config.n_layers, n_heads=config.n_heads)
        if config.n_kv_heads != config.n_heads:  # LLaMA-2 7B/13B files have no n_kv_heads
            params["n_kv_heads"] = config.n_kv_heads
        params.update(vocab_size=config.vocab_size, multiple_of=multiple_of)
        if multiplier is not None:
            params["ffn_dim_multiplier"] = multiplier
        params["norm_eps"] = config.norm_eps
    if config.sliding_window is not None:
        params["sliding_window"] = config.sliding_window
    if config.rope_theta != 10000.0:  # LLaMA-2's ModelArgs has no rope_theta; its files and Mistral v0.1's omit it
        params["rope_theta"] = config.rope_theta
    if not mistral and config.rope_scaling == Llama3RopeScaling():
        params["use_scaled_rope"] = True
    if config.rope_scaling is not None and not params.get("use_scaled_rope"):
        params["rope_scaling"] = vars(config.rope_scaling).copy()
    if config.tie_embeddings:
        params["tie_embeddings"] = True
    if family_from_params(params, "params.json") != config.family:  # no sign of its own in these keys
        params["family"] = config.family
    return params


def _module_of(key: str) -> str:
    """'layers.3.attention.wq.weight' -> 'attention.wq'; 'output.weight' -> 'output'."""
    parts = key.split(".")
    return ".".join(parts[2:-1] if parts[0] == "layers" else parts[:-1])


def merge_shards(shards: list[dict[str, torch.Tensor]], dim: int) -> dict[str, torch.Tensor]:
    """One state dict from Meta model-parallel shards (`dim` = model width, to tell the embedding axis)."""
    if len(shards) == 1:
        return {k: v for k, v in shards[0].items() if k not in DROPPED_KEYS}
    keys = [k for k in shards[0] if k not in DROPPED_KEYS]
    for i, shard in enumerate(shards[1:], 1):
        if set(shard) - set(DROPPED_KEYS) != set(keys):
            raise ValueError(f"shard {i} has different tensor names than shard 0")
    merged = {}
    for key in keys:
        parts, module = [s[key] for s in shards], _module_of(key)
        if module in _REPLICATED:
            merged[key] = parts[0]
        elif module == "tok_embeddings":  # LLaMA-2 splits the width, LLaMA-3 the vocabulary
            merged[key] = torch.cat(parts, dim=0 if parts[0].shape[1] == dim else 1)
        elif module in _CAT_DIM0:
            merged[key] = torch.cat(parts, dim=0)
        elif module in _CAT_DIM1:
            merged[key] = torch.cat(parts, dim=1)
        else:
            raise ValueError(f"unknown tensor name {key!r} in Meta shards")
    return merged


def split_shards(state: dict[str, torch.Tensor], n: int, embedding_dim: int) -> list[dict[str, torch.Tensor]]:
    """Inverse of `merge_shards`: n model-parallel shards, embeddings split along `embedding_dim` (1: LLaMA-2)."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for key, value in state.items():
        module = _module_of(key)
        if module in _REPLICATED:
            parts = [value] * n
        else:
            axis = embedding_dim if module == "tok_embeddings" else 1 if module in _CAT_DIM1 else 0
            parts = value.chunk(n, dim=axis)
        for shard, part in zip(shards, parts):
            shard[key] = part.clone()
    return shards


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot read checkpoint ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensor names to tensors, got a {type(state).__name__}")
    return state


def _fitting_shards(path: Path, files: list[Path]) -> list[dict[str, torch.Tensor]]:
    """The model-parallel shards consolidated.00.pth .. NN, refused when they are not one set (a stale file
    of another export beside them): numbered without a gap, the same tensor names and shapes in each."""
    names = [f.name for f in files]
    if names != [f"consolidated.{i:02d}.pth" for i in range(len(files))]:
        raise UserError(f"{path}: the shard files do not fit together: {', '.join(names)} are not numbered "
                        f"consolidated.00.pth .. consolidated.{len(files) - 1:02d}.pth; remove the stale files")
    shards = [_load_pth(f) for f in files]
    shapes = [{k: tuple(v.shape) for k, v in shard.items()} for shard in shards]
    for name, shard in zip(names[1:], shapes[1:]):
        if shard != shapes[0]:
            differ = min(k for k in shard.keys() | shapes[0].keys() if shard.get(k) != shapes[0].get(k))
            raise UserError(f"{path}: the shard files do not fit together: {names[0]} and {name} differ in {differ} "
                            f"({shapes[0].get(differ, 'missing')} vs {shard.get(differ, 'missing')}); remove the "
                            "stale files or export again")
    return shards


def read_meta_dir(path: str | Path, tokenizer_vocab: int | None = None,
                  weights: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor] | None]:
    """Config and merged state dict (mmapped where possible) of a Meta or Mistral checkpoint directory
    (`weights=False`: the config, and None)."""
    path = Path(path)
    params_file = path / "params.json"
    if not params_file.is_file():
        raise FileNotFoundError(f"{params_file}: missing (a Meta/Mistral checkpoint needs params.json)")
    try:
        params = json.loads(params_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{params_file}: invalid JSON ({err})") from err
    config = config_from_params(params, str(params_file), tokenizer_vocab)
    if not weights:
        return config, None
    pth = sorted(path.glob("consolidated.*.pth"))
    safetensors = path / "consolidated.safetensors"
    if pth:
        state = merge_shards(_fitting_shards(path, pth), config.dim)
    elif safetensors.is_file():
        try:
            state = load_file(safetensors)
        except Exception as err:
            raise ValueError(f"{safetensors}: cannot read checkpoint ({err})") from err
        state = {k: v for k, v in state.items() if k not in DROPPED_KEYS}
    else:
        raise FileNotFoundError(f"{path}: no consolidated.NN.pth or consolidated.safetensors")
    return config, state


def write_meta_dir(state: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path, n_shards: int = 1,
                   embedding_dim: int = 1) -> None:  # fmt: skip
    """Write params.json + consolidated.NN.pth (each file atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "output.weight"}
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    shards = [state] if n_shards == 1 else split_shards(state, n_shards, embedding_dim)
    for i, shard in enumerate(shards):
        atomic_write(out_dir / f"consolidated.{i:02d}.pth", lambda tmp, s=shard: torch.save(s, tmp))
    write_json(out_dir / "params.json", params_from_config(config))
