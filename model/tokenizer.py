"""Tokenizers: one interface over three libraries. `tokenizers` reads tokenizer.json folders and GGUF byte-level
BPE vocabularies, tiktoken Meta's LLaMA-3 ``tokenizer.model``, sentencepiece LLaMA-2 / Mistral v1 ones and GGUF
"llama" vocabularies.

Every tokenizer has ``encode(text, bos=False, eos=False)``, ``encode_special(text, bos=False, eos=False)``,
``decode(ids, skip_special=True)`` and the attributes ``bos_id`` (None when the model adds no BOS, e.g.
SmolLM2), ``eos_id``, ``pad_id`` (None when the model has none), ``stop_ids``, ``vocab_size``,
``chat_template`` (a built-in name or the checkpoint's :class:`model.chat.ChatTemplate`, for
:func:`model.chat.render_chat`) and ``special_tokens`` (text -> id).

Special tokens: ``encode`` treats the text literally, so a string such as ``"<|eot_id|>"`` or ``"</s>"``
inside data becomes ordinary text tokens (no injection from data). ``encode_special`` maps every
special-token string that occurs in the text to its id; rendered chat prompts are encoded with it.
``bos=True`` adds ``bos_id`` only if the tokenizer has one; ``eos=True`` always adds ``eos_id``.
``decode`` drops special tokens unless ``skip_special=False``, then they appear as their text.
"""
from __future__ import annotations

import re
from pathlib import Path

import sentencepiece as spm

from model.tokenizer_base import Tokenizer
from model.tokenizer_bpe import llama3_tokenizer
from model.tokenizer_gguf import tokenizer_from_gguf
from model.tokenizer_hf import load_hf_tokenizer
from model.tokenizer_spm import SentencePieceTokenizer

__all__ = ["SentencePieceTokenizer", "Tokenizer", "load_tokenizer", "tokenizer_from_gguf"]


def _is_tiktoken_ranks(path: Path) -> bool:
    """A tiktoken file is text lines "<base64 bytes> <rank>"; a SentencePiece model is a binary protobuf."""
    with open(path, "rb") as f:
        first = f.readline(1024).split()
    return len(first) == 2 and first[1].isdigit() and re.fullmatch(rb"[A-Za-z0-9+/=]+", first[0]) is not None


def load_tokenizer(path: str | Path, chat_template: str | None = None) -> Tokenizer:
    """Open a tokenizer: HF ``tokenizer.json``, LLaMA-3 tiktoken ranks, SentencePiece model or ``.gguf`` vocab.

    A directory means its ``tokenizer.json`` (with the tokenizer_config.json beside it) if it has one, else
    its ``tokenizer.model``. ``chat_template`` overrides the default template name
    ("llama3" for tiktoken, "llama2" for SentencePiece; pass "mistral" for Mistral models).
    """
    path = Path(path)
    if path.is_dir():
        path = path / ("tokenizer.json" if (path / "tokenizer.json").is_file() else "tokenizer.model")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    if path.suffix == ".json":
        tok = load_hf_tokenizer(path)
    elif path.suffix == ".gguf":
        tok = tokenizer_from_gguf(path)
    elif _is_tiktoken_ranks(path):
        tok = llama3_tokenizer(path)
    else:
        tok = SentencePieceTokenizer(_load_sentencepiece(path))
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.source = getattr(tok, "source", path)  # the file an export copies or converts
    return tok


def _load_sentencepiece(path: Path) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path} is neither a tiktoken ranks file nor a SentencePiece model: {e}") from None
    return processor

