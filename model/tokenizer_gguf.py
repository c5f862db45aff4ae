"""Tokenizers rebuilt from GGUF metadata (``tokenizer.ggml.*``), and llama.cpp's pre-tokenizer names.

``gpt2`` vocabularies become a `tokenizers` byte-level BPE from the stored tokens and merges, split first
by the regexes llama.cpp runs for the ``tokenizer.ggml.pre`` name (each regex splits the pieces the one
before left, unmatched stretches staying pieces); tokens that are not "normal" are special tokens.
``llama`` vocabularies (SentencePiece pieces + scores) become a SentencePiece model.
"""
from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from model.chat import ChatTemplate, builtin_name
from model.gguf_reader import read_gguf_file
from model.tokenizer_base import END_OF_TURN, Tokenizer
from model.tokenizer_bpe import LLAMA3_PATTERN
from model.tokenizer_hf import HFTokenizer
from model.tokenizer_spm import SentencePieceTokenizer

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")  # digits one by one
# llama.cpp's pre-tokenizer names -> its split regexes, in order; the first name of a list is written.
PRE_TOKENIZERS = {
    "gpt-2": (GPT2_PATTERN,),
    "gpt2": (GPT2_PATTERN,),
    "smollm": (r"\p{N}", GPT2_PATTERN),
    "starcoder": (r"\p{N}", GPT2_PATTERN),
    "refact": (r"\p{N}", GPT2_PATTERN),
    "codeshell": (r"\p{N}", GPT2_PATTERN),
    "llama-bpe": (LLAMA3_PATTERN,),
    "llama3": (LLAMA3_PATTERN,),
    "qwen2": (QWEN2_PATTERN,),
}
IGNORE_MERGES = {"llama-bpe", "llama3"}  # a piece that is a whole token is taken as is (as tiktoken does)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def read_gguf_metadata(path: Path) -> dict:
    """The ``tokenizer.*`` key/values of a GGUF file (strings, numbers, bools and lists of them)."""
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    fields = read_gguf_file(path).fields
    return {key: field.value for key, field in fields.items() if key.startswith("tokenizer.")}


def tokenizer_from_gguf(path: str | Path, metadata: dict | None = None) -> Tokenizer:
    """The tokenizer embedded in a GGUF file's metadata (``gpt2`` byte-level BPE or ``llama`` SentencePiece).

    ``metadata``: the file's fields as ``{key: value}`` (`model.gguf_reader`) when the caller has already read them.
    """
    path = Path(path)
    meta = read_gguf_metadata(path) if metadata is None else metadata
    kind = meta.get("tokenizer.ggml.model")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.eos_token_id"):
        if key not in meta:
            raise ValueError(f"{path}: GGUF metadata has no {key}")
    if kind == "gpt2":
        return _bpe_tokenizer(meta, path)
    if kind == "llama":
        return _sentencepiece_tokenizer(meta, path)
    raise ValueError(f"{path}: unsupported tokenizer.ggml.model {kind!r} (supported: gpt2, llama)")


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


def _tokens_and_types(meta: dict, path: Path) -> tuple[list[str], list[int]]:
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise ValueError(f"{path}: {len(types)} token types for {len(tokens)} tokens")
    return tokens, types


def _special_ids(meta: dict, tokens: list[str]) -> tuple[int | None, int, int | None]:
    def get(key: str) -> int | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and not 0 <= int(i) < len(tokens):
            raise ValueError(f"tokenizer.ggml.{key}_token_id {i} is outside the vocabulary of {len(tokens)}")
        return None if i is None else int(i)

    return get("bos"), get("eos"), get("padding")


def _stop_ids(tokens: list[str], types: list[int], eos: int) -> frozenset[int]:
    ends = {i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == CONTROL and t in END_OF_TURN}
    return frozenset(ends | {eos})


def bpe_pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    """llama.cpp's pre-tokenizer ``name`` as `tokenizers` splits, then GPT-2's bytes -> unicode map."""
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PRE_TOKENIZERS[name]]
    return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _bpe_tokenizer(meta: dict, path: Path) -> HFTokenizer:
    tokens, types = _tokens_and_types(meta, path)
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{path}: unsupported pre-tokenizer {pre!r} (supported: {', '.join(PRE_TOKENIZERS)})")
    if not meta.get("tokenizer.ggml.merges"):
        raise ValueError(f"{path}: GGUF metadata has no tokenizer.ggml.merges")
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{path}: the vocabulary has duplicate tokens")
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    try:
        tk = tokenizers.Tokenizer(models.BPE(vocab, merges, ignore_merges=pre in IGNORE_MERGES))
    except Exception as e:  # tokenizers raises a bare Exception for a merge of unknown tokens
        raise ValueError(f"{path}: tokenizer.ggml.merges do not fit tokenizer.ggml.tokens ({e})") from None
    tk.pre_tokenizer = bpe_pre_tokenizer(pre)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty != NORMAL])
    bos, eos, pad = _special_ids(meta, tokens)
    if not meta.get("tokenizer.ggml.add_bos_token", False):
        bos = None
    if bos is not None:  # so that the tokenizer.json an export writes adds it too
        tk.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B", special_tokens=[(tokens[bos], bos)]
        )
    return HFTokenizer(tk, bos, eos, pad, _stop_ids(tokens, types, eos), _chat_template(meta, "gpt2"), path)


def pre_tokenizer_name(tk: tokenizers.Tokenizer) -> str | None:
    """The llama.cpp name of a byte-level BPE's pre-tokenizer (tokenizer.json's own forms included:
    ``Digits`` one by one, ``ByteLevel`` with GPT-2's regex); None when llama.cpp has none that splits alike."""
    pre = json.loads(tk.to_str())["pre_tokenizer"] or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not parts or parts[-1].get("type") != "ByteLevel" or parts[-1].get("add_prefix_space"):
        return None
    patterns = []
    for part in parts[:-1]:
        if part["type"] == "Split" and part["behavior"] == "Isolated" and not part["invert"]:
            patterns.append(part["pattern"].get("Regex"))
        elif part["type"] == "Digits" and part["individual_digits"]:
            patterns.append(r"\p{N}")
        else:
            return None
    if parts[-1].get("use_regex", True):
        patterns.append(GPT2_PATTERN)
    return next((name for name, split in PRE_TOKENIZERS.items() if split == tuple(patterns)), None)


def _sentencepiece_tokenizer(meta: dict, path: Path) -> SentencePieceTokenizer:
    tokens, types = _tokens_and_types(meta, path)
    scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    if len(scores) != len(tokens):
        raise ValueError(f"{path}: {len(tokens)} tokens but {len(scores)} scores")
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    if unk is None and UNKNOWN in types:
        unk = types.index(UNKNOWN)
    bos, eos, pad = _special_ids(meta, tokens)
    # GGUF token types are SentencePiece's piece types (NORMAL=1 ... BYTE=6).
    proto = sentencepiece_model_pb2.ModelProto()
    for token, score, ty in zip(tokens, scores, types):
        proto.pieces.add(piece=token, score=score, type=ty)
    trainer = proto.trainer_spec
    trainer.model_type, trainer.vocab_size, trainer.byte_fallback = trainer.BPE, len(tokens), BYTE in types
    for name, i in (("unk", unk), ("bos", bos), ("eos", eos), ("pad", pad)):
        setattr(trainer, f"{name}_id", -1 if i is None else int(i))
        if i is not None:
            setattr(trainer, f"{name}_piece", tokens[int(i)])
    normalizer = proto.normalizer_spec
    normalizer.name, normalizer.remove_extra_whitespaces, normalizer.escape_whitespaces = "identity", False, True
    normalizer.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto.SerializeToString())
    except RuntimeError as e:
        raise ValueError(f"{path}: the GGUF SentencePiece vocabulary is inconsistent: {e}") from None
    tok = SentencePieceTokenizer(processor, _chat_template(meta, "llama"))
    tok.bos_id = bos if meta.get("tokenizer.ggml.add_bos_token", True) else None
    tok.eos_id, tok.pad_id = eos, pad
    tok.stop_ids = _stop_ids(tokens, types, eos)
    return tok
