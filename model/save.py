"""save_model: a Transformer (+ its tokenizer) written as a folder other tools open.

``hf``: config.json (with bos/eos/pad ids and the weights' dtype), safetensors, tokenizer.json +
tokenizer_config.json (special tokens, chat template) + generation_config.json, which
``transformers.AutoTokenizer`` / ``AutoModelForCausalLM`` (and so vLLM) load; an HF source folder's own
tokenizer files are copied as they are. ``meta``: params.json with Meta's (or Mistral's) keys and
consolidated.NN.pth, with the tokenizer file beside it as Meta's and Mistral's code expect. ``gguf``:
model.gguf as llama.cpp writes it (model/gguf_format.py), the tokenizer and chat template in its metadata.
"""
from __future__ import annotations

from pathlib import Path

from model.gguf_format import write_gguf, write_vocab_gguf
from model.hf_format import write_hf_dir
from model.families import FAMILIES
from model.load import family_tokenizer_files
from common.io import atomic_write, copy_file
from model.meta_format import write_meta_dir
from model.tokenizer import Tokenizer, load_tokenizer
from model.tokenizer_json import llama3_ranks_file, special_ids, write_hf_tokenizer
from model.transformer import Transformer

FORMATS = ("meta", "hf", "gguf")


def save_model(model: Transformer, out_dir: str | Path, format: str = "meta", tokenizer: Tokenizer | str | Path | None = None,
               max_shard_bytes: int = 5 << 30, meta_shards: int = 1, gguf_type: str = "F16") -> None:  # fmt: skip
    """Write `model` (and `tokenizer`, a loaded Tokenizer or a tokenizer file) as a Meta or an HF folder, or
    as `out_dir`/model.gguf.

    `meta_shards`: Meta's model-parallel layout (consolidated.00.pth ... for 13B: 2, 70B: 8). `gguf_type`:
    the GGUF matrices' type (F32, F16, BF16, Q8_0).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown save format {format!r} ({', '.join(FORMATS)})")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state, config = model.state_dict(), model.config
    if format == "meta":
        _check_shards(config, meta_shards)
        # LLaMA-2 shards split the embedding width, LLaMA-3 (vocabulary > 100k) the vocabulary.
        write_meta_dir(state, config, out_dir, meta_shards, embedding_dim=0 if config.vocab_size > 100_000 else 1)
        if tokenizer is not None:
            _write_meta_tokenizer(tokenizer, out_dir, config.max_seq_len)
    elif format == "gguf":
        write_gguf(state, config, out_dir / "model.gguf", gguf_type, tokenizer)
    else:
        write_hf_dir(state, config, out_dir, max_shard_bytes, special_ids(tokenizer) if tokenizer else None)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, out_dir, config.max_seq_len)


def _check_shards(config, n: int) -> None:
    sizes = {"n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "ffn_dim": config.ffn_dim, "dim": config.dim}
    bad = [f"{k} {v}" for k, v in sizes.items() if v % n]
    if n < 1 or bad:
        raise ValueError(f"cannot write {n} model-parallel shards: {', '.join(bad) or 'need at least 1'} not divisible")


def _write_meta_tokenizer(tokenizer: Tokenizer, out_dir: Path, max_length: int) -> None:
    """The tokenizer file beside Meta weights: tokenizer.model (Mistral's .v1/.v3 name kept), or the GGUF vocab."""
    source = getattr(tokenizer, "source", None)
    if source is None or not Path(source).is_file():
        raise ValueError(f"cannot save tokenizer: its source file is unknown or missing ({source})")
    source = Path(source)
    if source.suffix == ".gguf":
        write_vocab_gguf(source, out_dir / "tokenizer.gguf")
    elif source.name == "tokenizer.json":  # an HF folder: its SentencePiece/tiktoken file if it has one
        for candidate in (source.parent / "tokenizer.model", source.parent / "original" / "tokenizer.model"):
            if candidate.is_file():
                copy_file(candidate, out_dir / "tokenizer.model")
                return
        ranks = llama3_ranks_file(tokenizer)  # LLaMA-3 without original/: Meta's tiktoken file from tokenizer.json
        if ranks is not None:
            atomic_write(out_dir / "tokenizer.model", lambda tmp: tmp.write_bytes(ranks))
        else:
            write_hf_tokenizer(tokenizer, out_dir, max_length)
    else:
        # A family's own file name (Mistral's .v1) survives, so the copy loads with its chat format again.
        named = [f.tokenizer_files[0] for f in FAMILIES.values() if f.tokenizer_files and f.chat_template == tokenizer.chat_template]
        name = source.name if source.name in family_tokenizer_files() else (named or ["tokenizer.model"])[0]
        copy_file(source, out_dir / name)
