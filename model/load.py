"""load_model / save_model: any supported checkpoint -> Transformer (+ tokenizer), and back to disk.

Loading builds the model on the meta device and assigns the (mmapped) checkpoint tensors, so a
checkpoint is never held twice in memory.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from common.io import atomic_write
from model.config import CONFIGS, FAMILIES, ModelConfig
from model.gguf_format import read_gguf, write_vocab_gguf
from model.hf_format import read_hf_dir, write_hf_dir
from model.meta_format import read_meta_dir, write_meta_dir
from model.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer, tokenizer_from_gguf
from model.transformer import Transformer

MISTRAL_TOKENIZER_FILES = ("tokenizer.model.v1", "tokenizer.model.v3")
TOKENIZER_FILES = ("tokenizer.model", *MISTRAL_TOKENIZER_FILES, "tokenizer.gguf")
_SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_dim")


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], device="cpu", dtype=torch.float32,
                source: str = "checkpoint") -> Transformer:  # fmt: skip
    """A Transformer whose parameters are `state` (Meta names), checked strictly by name and shape."""
    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = dict(state)
    if config.tie_embeddings:
        expected.pop("output.weight")
        state.pop("output.weight", None)  # some tied exports repeat the embedding as output
    missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unknown:
        raise ValueError(f"{source}: tensor names do not match the model (missing {missing[:5]}, unknown {unknown[:5]})")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise ValueError(f"{source}: tensor {key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
        if not state[key].is_floating_point():  # before the cast, which would hide it
            raise ValueError(f"{source}: tensor {key} has non-float dtype {state[key].dtype}")
        state[key] = state[key].to(device=device, dtype=dtype)
        if not torch.isfinite(state[key]).all():
            raise ValueError(f"{source}: tensor {key} holds NaN or inf")
    if config.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.rebuild_buffers(device)
    return model.eval()


def _find_tokenizer(path: Path) -> Tokenizer | None:
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            tokenizer = load_tokenizer(path / name)
            tokenizer.source = path / name
            return tokenizer
    return None


def _resolve(source: str | Path, ckpt_dir: str | Path | None) -> tuple[Path, ModelConfig | None]:
    """Checkpoint path and, for a named config, the config it must match."""
    name = str(source)
    if name not in CONFIGS:
        return Path(source), None
    if ckpt_dir is not None:
        base = Path(ckpt_dir)
        return (base / name if (base / name).exists() else base), CONFIGS[name]
    if name == "smollm2-135m":
        from common.assets import asset_path

        return asset_path("smollm2-135m"), CONFIGS[name]
    raise FileNotFoundError(f"model {name!r} has no checkpoint here: pass ckpt_dir (--ckpt-dir) pointing to its weights")


def read_checkpoint(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None]:
    """Config, Meta-named state dict and tokenizer (None when the checkpoint carries none) of any format."""
    if path.is_file() and path.suffix == ".gguf":
        config, state, meta = read_gguf(path)
        tokenizer = None
        if "tokenizer.ggml.tokens" in meta:
            tokenizer = tokenizer_from_gguf(path, metadata=meta)
            tokenizer.source = path
        return config, state, tokenizer
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    if not path.is_dir():
        raise ValueError(f"{path}: not a checkpoint (expected a .gguf file or a Meta/Mistral/HF directory)")
    tokenizer = _find_tokenizer(path)
    if (path / "params.json").is_file():
        config, state = read_meta_dir(path, tokenizer.vocab_size if tokenizer else None)
    elif (path / "config.json").is_file():
        config, state = read_hf_dir(path)
    else:
        raise FileNotFoundError(f"{path}: neither params.json (Meta/Mistral) nor config.json (HF) found")
    if Path(getattr(tokenizer, "source", "")).name in MISTRAL_TOKENIZER_FILES:
        config.family = "mistral"  # Mistral's own file names state the family where params.json cannot
    if isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.chat_template = FAMILIES[config.family].chat_template
    return config, state, tokenizer


def load_model(source: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
               ckpt_dir: str | Path | None = None) -> tuple[Transformer, Tokenizer | None]:  # fmt: skip
    """(model, tokenizer) from a Meta/Mistral dir, an HF dir, a .gguf file or a named config.

    The tokenizer is None when the checkpoint has no tokenizer file or vocabulary.
    """
    path, named = _resolve(source, ckpt_dir)
    config, state, tokenizer = read_checkpoint(path)
    if named is not None:
        diff = [f for f in _SHAPE_FIELDS if getattr(config, f) != getattr(named, f)]
        if diff:
            raise ValueError(f"{path}: checkpoint does not match config {named.name!r} (differs in {diff})")
        config.name = named.name
    return build_model(config, state, device, dtype, str(path)), tokenizer


def save_model(model: Transformer, out_dir: str | Path, format: str = "meta", tokenizer: Tokenizer | str | Path | None = None,
               max_shard_bytes: int = 5 << 30) -> None:  # fmt: skip
    """Write `model` as a Meta dir (params.json + consolidated.00.pth) or an HF dir (config.json + safetensors).

    `tokenizer` (a loaded Tokenizer or a tokenizer file) is copied next to the weights.
    """
    if format not in ("meta", "hf"):
        raise ValueError(f"unknown save format {format!r} (meta or hf)")
    out_dir = Path(out_dir)
    state = model.state_dict()
    if format == "meta":
        write_meta_dir(state, model.config, out_dir)
    else:
        write_hf_dir(state, model.config, out_dir, max_shard_bytes)
    if tokenizer is not None:
        _copy_tokenizer(tokenizer, out_dir)


def _copy_tokenizer(tokenizer: Tokenizer | str | Path, out_dir: Path) -> None:
    source = Path(tokenizer) if isinstance(tokenizer, (str, Path)) else getattr(tokenizer, "source", None)
    if source is None or not Path(source).is_file():
        raise ValueError(f"cannot save tokenizer: its source file is unknown or missing ({source})")
    source = Path(source)
    if source.suffix == ".gguf":
        write_vocab_gguf(source, out_dir / "tokenizer.gguf")
    else:
        # Mistral's file name survives, so the copy loads with the Mistral chat format again.
        mistral = isinstance(tokenizer, Tokenizer) and tokenizer.chat_template == "mistral"
        name = source.name if source.name in MISTRAL_TOKENIZER_FILES else "tokenizer.model" + ".v1" * mistral
        atomic_write(out_dir / name, lambda tmp: shutil.copyfile(source, tmp))
