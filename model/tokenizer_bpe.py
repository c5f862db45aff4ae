"""Byte-level BPE tokenizers on ``tiktoken``: LLaMA-3 (ranks file) and GPT-2-style vocabularies (from GGUF).

tiktoken merges the adjacent pair whose concatenation has the lowest rank and returns ranks as ids, so a
vocabulary can be used only when rank == id agrees with the merge order (checked in ``tokenizer_gguf``).
"""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

import tiktoken

from model.tokenizer_base import Tokenizer

# LLaMA-3's pre-tokenizer (the cl100k pattern).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# GPT-2's pre-tokenizer.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# SmolLM2 / StarCoder: first every digit is split off alone, then GPT-2's pattern runs on the pieces in
# between. As one pattern: a digit is its own piece, nothing else may cross into a digit, and a
# whitespace run that ends right before a digit stays whole (in the two-pass split it ended its piece).
DIGITS_THEN_GPT2_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"
)

LLAMA3_NUM_SPECIAL = 256
LLAMA3_NAMED_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]


class TiktokenTokenizer(Tokenizer):
    """A tiktoken ``Encoding`` (ranks are ids) plus the model's special ids."""

    def __init__(
        self,
        name: str,
        pattern: str,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        bos_id: int | None,
        eos_id: int,
        pad_id: int | None,
        stop_ids: frozenset[int],
        chat_template: str,
    ):
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens
        )
        self.special_tokens = dict(special_tokens)
        self.ranks, self.pattern = ranks, pattern  # kept to write the vocabulary as a tokenizer.json
        self.vocab_size = self.encoding.n_vocab
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.stop_ids = stop_ids
        self.chat_template = chat_template
        self._special_ids = frozenset(special_tokens.values())
        single = bytes(b for b in range(256) if bytes([b]) in ranks)
        self._known_bytes = single if len(single) < 256 else None  # None: every byte can be encoded

    def _encode(self, text: str, special: bool) -> list[int]:
        if self._known_bytes is not None:
            self._check_bytes(text)
        if special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode(text, allowed_special=set(), disallowed_special=())

    def _check_bytes(self, text: str) -> None:
        unknown = text.encode("utf-8", "surrogatepass").translate(None, delete=self._known_bytes)
        if unknown:
            raise ValueError(f"text contains byte 0x{unknown[0]:02x}, which this vocabulary cannot represent")

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        return self.encoding.decode_bytes(ids).decode("utf-8", errors="replace")


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file: one "<base64 token bytes> <rank>" per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise ValueError(f"{path}:{lineno}: not a '<base64> <rank>' line: {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not the distinct integers 0..{len(ranks) - 1}")
    return ranks


def llama3_tokenizer(path: Path) -> TiktokenTokenizer:
    """LLaMA-3 / 3.1 tokenizer: 128000 ranks + 256 special tokens, stop on end_of_text, eom and eot."""
    ranks = read_tiktoken_ranks(path)
    names = LLAMA3_NAMED_SPECIALS + [
        f"<|reserved_special_token_{2 + i}|>" for i in range(LLAMA3_NUM_SPECIAL - len(LLAMA3_NAMED_SPECIALS))
    ]
    specials = {name: len(ranks) + i for i, name in enumerate(names)}
    eos = specials["<|end_of_text|>"]
    stops = frozenset({eos, specials["<|eom_id|>"], specials["<|eot_id|>"]})
    bos = specials["<|begin_of_text|>"]
    return TiktokenTokenizer(path.name, LLAMA3_PATTERN, ranks, specials, bos, eos, None, stops, "llama3")


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's reversible map from printable unicode characters back to bytes.

    Printable latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 onwards, in order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    decoder = {chr(b): b for b in printable}
    shifted = [b for b in range(256) if b not in set(printable)]
    decoder.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return decoder


def gpt2_token_bytes(token: str, decoder: dict[str, int]) -> bytes:
    try:
        return bytes(decoder[c] for c in token)
    except KeyError as e:
        raise ValueError(f"token {token!r} has character {e.args[0]!r} outside GPT-2's byte alphabet") from None
