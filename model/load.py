"""load_model: any supported checkpoint -> Transformer (+ tokenizer); `model.save` writes them back.

Loading builds the model on the meta device and assigns the (mmapped) checkpoint tensors, so a
checkpoint is never held twice in memory.
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.errors import UserError
from model.config import CONFIGS, ModelConfig
from model.families import FAMILIES
from model.gguf_format import read_gguf
from model.hf_format import read_hf_dir
from model.meta_format import read_meta_dir
from model.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer, tokenizer_from_gguf
from model.transformer import Transformer

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
        raise UserError(f"{source}: tensor names do not match the model (missing {missing[:5]}, unknown {unknown[:5]})")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise UserError(f"{source}: tensor {key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
        if not state[key].is_floating_point():  # before the cast, which would hide it
            raise UserError(f"{source}: tensor {key} has non-float dtype {state[key].dtype}")
        state[key] = state[key].to(device=device, dtype=dtype)
        if not torch.isfinite(state[key]).all():
            raise UserError(f"{source}: tensor {key} holds NaN or inf")
    if config.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.rebuild_buffers(device)
    return model.eval()


def family_tokenizer_files() -> dict[str, str]:
    """Tokenizer file name -> the family it names (Mistral's tokenizer.model.v1 / .v3)."""
    return {file: f.name for f in FAMILIES.values() for file in f.tokenizer_files}


def _find_tokenizer(path: Path) -> Tokenizer | None:
    for name in ("tokenizer.json", "tokenizer.model", *family_tokenizer_files(), "tokenizer.gguf"):
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
    if name == "smollm2-135m" and ckpt_dir is None:  # the default model: the fetched GGUF asset, on every machine
        from common.assets import asset_path

        return asset_path("smollm2-135m"), CONFIGS[name]
    from model.discover import find_checkpoint

    return find_checkpoint(name, ckpt_dir), CONFIGS[name]


def read_checkpoint(path: Path, weights: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor] | None, Tokenizer | None]:
    """Config, Meta-named state dict and tokenizer (None when the checkpoint carries none) of any format;
    `weights=False`: the state dict is None, and only a GGUF file's tensors are read."""
    if path.is_file() and path.suffix == ".gguf":
        config, state, meta = read_gguf(path)
        tokenizer = None
        if "tokenizer.ggml.tokens" in meta:
            tokenizer = tokenizer_from_gguf(path, metadata=meta)
            tokenizer.source = path
        return config, state if weights else None, tokenizer
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    if not path.is_dir():
        raise UserError(f"{path}: not a checkpoint (expected a .gguf file or a Meta/Mistral/HF directory)")
    tokenizer = _find_tokenizer(path)
    if tokenizer is None and (path / "params.json").is_file():
        tokenizer = _find_tokenizer(path.parent)  # Meta's download: tokenizer.model beside the llama-2-7b/ folder
    if (path / "params.json").is_file():
        config, state = read_meta_dir(path, tokenizer.vocab_size if tokenizer else None, weights)
    elif (path / "config.json").is_file():
        config, state = read_hf_dir(path, weights)
    else:
        raise FileNotFoundError(f"{path}: neither params.json (Meta/Mistral) nor config.json (HF) found")
    named = family_tokenizer_files().get(Path(getattr(tokenizer, "source", "")).name)
    if named is not None:
        config.family = named  # Mistral's own file names state the family where params.json cannot
    if isinstance(tokenizer, SentencePieceTokenizer) or getattr(tokenizer, "chat_template", None) == "llama2":
        # a SentencePiece file, or an HF tokenizer.json without a template: the family's built-in format
        tokenizer.chat_template = FAMILIES[config.family].chat_template
    return config, state, tokenizer


def check_tokenizer_fits(tokenizer: Tokenizer, config: ModelConfig, model: str | Path) -> None:
    """A command that runs the model on the tokenizer's ids: every id must have an embedding row."""
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"{getattr(tokenizer, 'source', None) or 'the tokenizer'}: its vocabulary of "
                        f"{tokenizer.vocab_size} tokens does not fit the {config.vocab_size} embedding rows of {model}")


def load_model(source: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
               ckpt_dir: str | Path | None = None, tokenizer: str | Path | None = None, weights: bool = True,
               ) -> tuple[Transformer, Tokenizer | None]:  # fmt: skip
    """(model, tokenizer) from a Meta/Mistral dir, an HF dir, a .gguf file or a named config.

    The tokenizer is None when the checkpoint has no tokenizer file or vocabulary; `tokenizer` (a file
    or folder) replaces the checkpoint's own. `weights=False`: the model on the meta device, its weights
    not read (a Meta or HF folder reads only its config; a GGUF file is read whole).
    """
    path, named = _resolve(source, ckpt_dir)
    try:  # the format readers' errors name the file they read: a ValueError there is about a user's file
        config, state, found = read_checkpoint(path, weights)
        tokenizer = found if tokenizer is None else load_tokenizer(tokenizer)
    except UserError:
        raise
    except ValueError as err:
        raise UserError(str(err)) from err
    if tokenizer is not found and isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.chat_template = FAMILIES[config.family].chat_template
    if named is not None:
        diff = [f for f in _SHAPE_FIELDS if getattr(config, f) != getattr(named, f)]
        if diff:
            raise UserError(f"{path}: checkpoint does not match config {named.name!r} (differs in {diff})")
        config.name = named.name
    if state is None:
        with torch.device("meta"):
            model = Transformer(config)
        model.tie_weights()
        return model.to(dtype).eval(), tokenizer
    return build_model(config, state, device, dtype, str(path)), tokenizer
