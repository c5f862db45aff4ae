"""Meta's LLaMA-3 ``tokenizer.model`` (tiktoken ranks) on ``tiktoken``, and GPT-2's byte <-> unicode map.

A tiktoken file stores only the ranks; tiktoken merges the adjacent pair whose concatenation has the lowest
rank and returns ranks as ids.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from model.tokenizer_base import Tokenizer

# LLaMA-3's pre-tokenizer (the cl100k pattern).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
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

    def __init__(self, name: str, pattern: str, ranks: dict[bytes, int], special_tokens: dict[str, int],
                 bos_id: int | None, eos_id: int, stop_ids: frozenset[int], chat_template: str):  # fmt: skip
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens
        )
        self.special_tokens = dict(special_tokens)
        self.ranks, self.pattern = ranks, pattern  # kept to write the vocabulary as a tokenizer.json
        self.vocab_size = self.encoding.n_vocab
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, None
        self.stop_ids = stop_ids
        self.chat_template = chat_template
        self._special_ids = frozenset(special_tokens.values())

    def _encode(self, text: str, special: bool) -> list[int]:
        if special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode(text, allowed_special=set(), disallowed_special=())

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        return self.encoding.decode_bytes(ids).decode("utf-8", errors="replace")


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken ranks file ("<base64 token bytes> <rank>" lines) read by tiktoken's own loader."""
    # tiktoken caches every file it reads under its path; the hash makes it reread a file that changed.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        ranks = load_tiktoken_bpe(str(path), expected_hash=digest)
    except ValueError as e:
        raise ValueError(f"{path}: not a tiktoken ranks file ({e})") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not the distinct integers 0..{len(ranks) - 1}")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError(f"{path}: the ranks lack some of the 256 single bytes")
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
    return TiktokenTokenizer(path.name, LLAMA3_PATTERN, ranks, specials, specials["<|begin_of_text|>"], eos, stops,
                             "llama3")  # fmt: skip


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's reversible map from printable unicode characters back to bytes.

    Printable latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 onwards, in order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    decoder = {chr(b): b for b in printable}
    shifted = [b for b in range(256) if b not in set(printable)]
    decoder.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return decoder
