"""Tokenizers rebuilt from GGUF metadata (``tokenizer.ggml.*``).

``gpt2`` vocabularies become a tiktoken encoding: token strings are GPT-2 byte-level unicode, mapped back
to bytes; normal tokens are mergeable with rank = id (checked against the merges), the rest (control,
user-defined, unknown, unused) are special tokens. The ``tokenizer.ggml.pre`` value picks the
pre-tokenizer regex. ``llama`` vocabularies (SentencePiece pieces + scores) become a SentencePiece model.
"""
from __future__ import annotations

import struct
from pathlib import Path

import gguf
import sentencepiece as spm

from model.chat import ChatTemplate, builtin_name
from model.tokenizer_base import END_OF_TURN, Tokenizer
from model.tokenizer_spm import SentencePieceTokenizer
from model.tokenizer_bpe import (
    DIGITS_THEN_GPT2_PATTERN,
    GPT2_PATTERN,
    LLAMA3_PATTERN,
    TiktokenTokenizer,
    gpt2_byte_decoder,
    gpt2_token_bytes,
)

PRE_TOKENIZER_PATTERNS = {
    "gpt-2": GPT2_PATTERN,
    "gpt2": GPT2_PATTERN,
    "smollm": DIGITS_THEN_GPT2_PATTERN,
    "starcoder": DIGITS_THEN_GPT2_PATTERN,
    "refact": DIGITS_THEN_GPT2_PATTERN,
    "codeshell": DIGITS_THEN_GPT2_PATTERN,
    "llama-bpe": LLAMA3_PATTERN,
    "llama3": LLAMA3_PATTERN,
}
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def read_gguf_metadata(path: Path) -> dict:
    """The ``tokenizer.*`` key/values of a GGUF file (strings, numbers, bools and lists of them)."""
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the gguf package raises ValueError/struct.error/... on corrupt files
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from None
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def gguf_tokenizer(path: Path, metadata: dict | None = None) -> Tokenizer:
    """Tokenizer of a GGUF file; ``metadata`` (its key -> value fields, if already read) saves re-reading."""
    meta = read_gguf_metadata(path) if metadata is None else metadata
    kind = meta.get("tokenizer.ggml.model")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.eos_token_id"):
        if key not in meta:
            raise ValueError(f"{path}: GGUF metadata has no {key}")
    if kind == "gpt2":
        tok: Tokenizer = _gpt2_tokenizer(meta, path)
    elif kind == "llama":
        tok = _sentencepiece_tokenizer(meta, path)
    else:
        raise ValueError(f"{path}: unsupported tokenizer.ggml.model {kind!r} (supported: gpt2, llama)")
    tok.chat_template = _chat_template(meta, kind)
    return tok


def _chat_template(meta: dict, kind: str) -> str | ChatTemplate:
    """The GGUF's own Jinja template (with its special-token strings), else a built-in format for the vocab."""
    jinja = meta.get("tokenizer.chat_template")
    if not jinja:
        return "chatml" if kind == "gpt2" else "llama2"
    tokens = meta["tokenizer.ggml.tokens"]
    names = {}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and 0 <= int(i) < len(tokens):
            names[name] = tokens[int(i)]
    return builtin_name(jinja) or ChatTemplate(jinja, names)


def _token_types(meta: dict, n: int) -> list[int]:
    return list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * n)


def _special_ids(meta: dict, tokens: list[str]) -> tuple[int | None, int, int | None]:
    def get(key: str) -> int | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and not 0 <= int(i) < len(tokens):
            raise ValueError(f"tokenizer.ggml.{key}_token_id {i} is outside the vocabulary of {len(tokens)}")
        return None if i is None else int(i)

    return get("bos"), get("eos"), get("padding")


def _added_bos(meta: dict, bos: int | None, default: bool) -> int | None:
    """The BOS id the model expects in front of a text; None when ``add_bos_token`` is false."""
    return bos if meta.get("tokenizer.ggml.add_bos_token", default) else None


def _stop_ids(tokens: list[str], types: list[int], eos: int) -> frozenset[int]:
    ends = {i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == CONTROL and t in END_OF_TURN}
    return frozenset(ends | {eos})


def _gpt2_tokenizer(meta: dict, path: Path) -> TiktokenTokenizer:
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types = _token_types(meta, len(tokens))
    if len(types) != len(tokens):
        raise ValueError(f"{path}: {len(types)} token types for {len(tokens)} tokens")
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZER_PATTERNS:
        raise ValueError(f"{path}: unsupported pre-tokenizer {pre!r} (supported: {', '.join(PRE_TOKENIZER_PATTERNS)})")
    decoder = gpt2_byte_decoder()
    ranks, specials = {}, {}
    for i, (token, ty) in enumerate(zip(tokens, types)):
        if ty == NORMAL:
            ranks[gpt2_token_bytes(token, decoder)] = i
        else:
            specials[token] = i
    if len(ranks) + len(specials) != len(tokens):
        raise ValueError(f"{path}: the vocabulary has duplicate tokens")
    _check_merge_order(list(meta.get("tokenizer.ggml.merges", [])), tokens, path)
    bos, eos, pad = _special_ids(meta, tokens)
    bos = _added_bos(meta, bos, default=False)
    stops = _stop_ids(tokens, types, eos)
    return TiktokenTokenizer(path.stem, PRE_TOKENIZER_PATTERNS[pre], ranks, specials, bos, eos, pad, stops, "chatml")


def _check_merge_order(merges: list[str], tokens: list[str], path: Path) -> None:
    """tiktoken ranks are ids, so each merge must produce a token whose id grows with the merge's priority."""
    if not merges:
        raise ValueError(f"{path}: GGUF metadata has no tokenizer.ggml.merges")
    index = {t: i for i, t in enumerate(tokens)}
    last = -1
    for n, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        ids = index.get(left), index.get(right), index.get(left + right)
        if None in ids:
            raise ValueError(f"{path}: merge {n} {merge!r} names a token that is not in the vocabulary")
        if not ids[2] > max(last, ids[0], ids[1]):
            raise ValueError(f"{path}: merge {n} {merge!r} is out of id order; rank = id does not hold")
        last = ids[2]


# --- SentencePiece ("llama") vocabularies: written back as a SentencePiece model protobuf. ---


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 values are encoded as 64-bit two's complement
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _pb_int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _pb_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _pb_float(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def sentencepiece_model_proto(
    tokens: list[str],
    scores: list[float],
    types: list[int],
    special: dict[str, int | None],
    add_dummy_prefix: bool,
) -> bytes:
    """Serialise a BPE SentencePiece ``ModelProto`` (field numbers from sentencepiece_model.proto)."""
    pieces = b"".join(
        _pb_bytes(1, _pb_bytes(1, t.encode()) + _pb_float(2, s) + _pb_int(3, ty))
        for t, s, ty in zip(tokens, scores, types)
    )
    trainer = _pb_int(3, 2) + _pb_int(4, len(tokens)) + _pb_int(35, int(BYTE in types))  # BPE, byte fallback
    for field, name in ((40, "unk"), (41, "bos"), (42, "eos"), (43, "pad")):
        i = special[name]
        trainer += _pb_int(field, -1 if i is None else i)
        if i is not None:
            trainer += _pb_bytes(field + 5, tokens[i].encode())  # unk_piece=45 ... pad_piece=48
    normalizer = _pb_bytes(1, b"identity") + _pb_int(3, int(add_dummy_prefix)) + _pb_int(4, 0) + _pb_int(5, 1)
    return pieces + _pb_bytes(2, trainer) + _pb_bytes(3, normalizer)


def _sentencepiece_tokenizer(meta: dict, path: Path) -> SentencePieceTokenizer:
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types = _token_types(meta, len(tokens))
    scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    if not len(types) == len(scores) == len(tokens):
        raise ValueError(f"{path}: {len(tokens)} tokens but {len(scores)} scores and {len(types)} types")
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    if unk is None and UNKNOWN in types:
        unk = types.index(UNKNOWN)
    bos, eos, pad = _special_ids(meta, tokens)
    proto = sentencepiece_model_proto(
        tokens,
        scores,
        types,
        {"unk": unk, "bos": bos, "eos": eos, "pad": pad},
        bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
    )
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto)
    except RuntimeError as e:
        raise ValueError(f"{path}: the GGUF SentencePiece vocabulary is inconsistent: {e}") from None
    tok = SentencePieceTokenizer(processor)
    tok.bos_id, tok.eos_id, tok.pad_id = _added_bos(meta, bos, default=True), eos, pad
    tok.stop_ids = _stop_ids(tokens, types, eos)
    return tok
