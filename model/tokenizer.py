"""Tokenizers: one interface over SentencePiece (LLaMA-2, Mistral v1), LLaMA-3 tiktoken and GGUF vocabularies.

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
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import sentencepiece as spm

if TYPE_CHECKING:
    from model.chat import ChatTemplate

# Control tokens that end a turn in the chat formats we know; generation stops on them as on eos.
END_OF_TURN = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "</s>"}


class Tokenizer(ABC):
    """Shared behaviour; subclasses implement ``_encode(text, special)`` and ``_decode(ids, skip_special)``."""

    bos_id: int | None
    eos_id: int
    pad_id: int | None
    stop_ids: frozenset[int]
    vocab_size: int
    chat_template: str | ChatTemplate
    special_tokens: dict[str, int]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self._wrap(self._encode(_check_text(text), special=False), bos, eos)

    def encode_special(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self._wrap(self._encode(_check_text(text), special=True), bos, eos)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return self._decode(ids, skip_special)

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        head = [self.bos_id] if bos and self.bos_id is not None else []
        return head + ids + ([self.eos_id] if eos else [])

    @abstractmethod
    def _encode(self, text: str, special: bool) -> list[int]: ...

    @abstractmethod
    def _decode(self, ids: list[int], skip_special: bool) -> str: ...


def _check_text(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"encode expects str, got {type(text).__name__}")
    return text


class SentencePieceTokenizer(Tokenizer):
    """LLaMA-2 / Mistral v1 SentencePiece model (bos 1, eos 2, no pad: SentencePiece's pad -1 becomes None)."""

    def __init__(self, processor: spm.SentencePieceProcessor, chat_template: str = "llama2"):
        self.sp = processor
        self.vocab_size = processor.vocab_size()
        self.bos_id = _optional_id(processor.bos_id())
        self.eos_id = processor.eos_id()
        if self.eos_id < 0:
            raise ValueError("SentencePiece model has no eos token")
        self.pad_id = _optional_id(processor.pad_id())
        self.stop_ids = frozenset({self.eos_id})
        self.chat_template = chat_template
        # Control pieces (<s>, </s>, ...) and <unk>: the pieces tokenizer.json files list as special tokens.
        self.special_tokens = {
            processor.id_to_piece(i): i
            for i in range(self.vocab_size)
            if processor.is_control(i) or processor.is_unknown(i)
        }
        # Longest first, so that e.g. "</s>" is not split as "<" + ... when a shorter special is a prefix.
        names = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    def _encode(self, text: str, special: bool) -> list[int]:
        if not special or self._special_re is None:
            return self.sp.encode(text)
        ids: list[int] = []
        # Text between special tokens is encoded piece by piece, each with SentencePiece's dummy prefix,
        # exactly as Meta and mistral-common encode a dialog turn by turn.
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        if skip_special:
            return self.sp.decode(ids)
        out, run = [], []
        for i in ids:
            if self.sp.is_control(i):
                out += [self.sp.decode(run), self.sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(out + [self.sp.decode(run)])


def _optional_id(i: int) -> int | None:
    return None if i < 0 else i


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
        from model.tokenizer_hf import load_hf_tokenizer

        tok = load_hf_tokenizer(path)
    elif path.suffix == ".gguf":
        tok = tokenizer_from_gguf(path)
    elif _is_tiktoken_ranks(path):
        from model.tokenizer_bpe import llama3_tokenizer

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


def tokenizer_from_gguf(path: str | Path, metadata: dict | None = None) -> Tokenizer:
    """The tokenizer embedded in a GGUF file's metadata (``gpt2`` byte-level BPE or ``llama`` SentencePiece).

    ``metadata``: the file's fields as ``{key: field.contents()}`` when the caller has already read them.
    """
    from model.tokenizer_gguf import gguf_tokenizer

    return gguf_tokenizer(Path(path), metadata)
