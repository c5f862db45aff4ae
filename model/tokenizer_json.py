"""Our tokenizers written as Hugging Face ``tokenizer.json`` + ``tokenizer_config.json`` (for ``AutoTokenizer``).

A `tokenizers` tokenizer (a tokenizer.json folder, a GGUF "gpt2" vocabulary) is written as it is.
SentencePiece BPE (LLaMA-2, Mistral v1, GGUF "llama" vocabularies) becomes a ``tokenizers`` BPE with
byte fallback: the dummy-prefix "▁" is prepended to each stretch of text between special tokens and spaces
become "▁" (SentencePiece's own normalisation, applied piece by piece as ``encode_special`` does); merges
are the vocabulary's pieces that split into two pieces, highest SentencePiece score first.

LLaMA-3's tiktoken vocabulary becomes a byte-level BPE: the pre-tokenizer regex, then
GPT-2's byte-to-unicode map; a piece found whole in the vocabulary is taken as is (``ignore_merges``, as
tiktoken does), otherwise the merges are every split of a token into two tokens, lowest rank first.

Special tokens are added tokens matched on the raw text, at their own ids; the BOS the model expects is
added by the post-processor, so ``tokenizer(text)`` gives ``encode_special(text, bos=True)``.
"""
from __future__ import annotations

import base64
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from model.chat import template_source
from common.io import atomic_write, copy_file, write_json
from model.tokenizer_base import Tokenizer
from model.tokenizer_bpe import TiktokenTokenizer, gpt2_byte_decoder
from model.tokenizer_hf import HFTokenizer
from model.tokenizer_spm import SentencePieceTokenizer

# What an HF tokenizer folder may hold besides config.json; copied as they are when the source was one.
HF_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "tokenizer.model", "generation_config.json",
)  # fmt: skip


def to_tokenizers(tok: Tokenizer) -> tokenizers.Tokenizer:
    """The ``tokenizers`` equivalent of a tokenizer (a `tokenizers` one is itself)."""
    if isinstance(tok, HFTokenizer):
        return tok.tk
    if isinstance(tok, SentencePieceTokenizer):
        out = _sentencepiece(tok)
    elif isinstance(tok, TiktokenTokenizer):
        out = _byte_level(tok)
    else:
        raise TypeError(f"cannot convert a {type(tok).__name__} to tokenizer.json")
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    out.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in specials])
    wrong = [(t, i) for t, i in specials if out.token_to_id(t) != i]
    if wrong:
        raise ValueError(f"special token {wrong[0][0]!r} did not keep its id {wrong[0][1]}")
    if tok.bos_id is not None:
        bos = _piece(tok, tok.bos_id)
        out.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_id)]
        )
    return out


def _piece(tok: Tokenizer, i: int) -> str:
    by_id = {v: k for k, v in tok.special_tokens.items()}
    if i in by_id:
        return by_id[i]
    if isinstance(tok, SentencePieceTokenizer):
        return tok.sp.id_to_piece(i)
    if isinstance(tok, HFTokenizer):
        return tok.tk.id_to_token(i)
    raise ValueError(f"token id {i} is not a special token")


def _sentencepiece(tok: SentencePieceTokenizer) -> tokenizers.Tokenizer:
    sp = tok.sp
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    mergeable = {sp.id_to_piece(i) for i in range(sp.vocab_size()) if not (sp.is_control(i) or sp.is_unknown(i)
                                                                           or sp.is_byte(i) or sp.is_unused(i))}  # fmt: skip
    merges = []
    for piece in mergeable:
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in mergeable and right in mergeable:
                merges.append((-sp.get_score(vocab[piece]), vocab[piece], vocab[left], vocab[right], left, right))
    merges.sort()
    unk = next((sp.id_to_piece(i) for i in range(sp.vocab_size()) if sp.is_unknown(i)), None)
    byte_fallback = any(sp.is_byte(i) for i in range(sp.vocab_size()))
    out = tokenizers.Tokenizer(
        models.BPE(vocab, [m[-2:] for m in merges], unk_token=unk, fuse_unk=True, byte_fallback=byte_fallback)
    )
    dummy_prefix = sp.id_to_piece(sp.encode("a")[0]).startswith("▁")
    out.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("▁")] if dummy_prefix else []) + [normalizers.Replace(" ", "▁")]
    )
    out.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if dummy_prefix else [])
    )
    return out


def _byte_level(tok: TiktokenTokenizer) -> tokenizers.Tokenizer:
    to_unicode = {b: c for c, b in gpt2_byte_decoder().items()}

    def text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {text(t): i for t, i in tok.ranks.items()}
    vocab.update(tok.special_tokens)  # at their ids, after the ranks
    merges = []
    for token, rank in tok.ranks.items():
        for k in range(1, len(token)):
            left, right = token[:k], token[k:]
            if left in tok.ranks and right in tok.ranks:
                merges.append((rank, tok.ranks[left], tok.ranks[right], text(left), text(right)))
    merges.sort()
    out = tokenizers.Tokenizer(models.BPE(vocab, [m[-2:] for m in merges], ignore_merges=True))
    out.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tok.pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    out.decoder = decoders.ByteLevel()
    return out


def llama3_ranks_file(tok: Tokenizer) -> bytes | None:
    """Meta's tiktoken ``tokenizer.model`` of a LLaMA-3 tokenizer.json (byte-level tokens, ids = ranks, the 256
    specials after them); None for any other vocabulary, which Meta's LLaMA-3 code could not read anyway."""
    tk = getattr(tok, "tk", None)
    if tk is None or "<|begin_of_text|>" not in tok.special_tokens:
        return None
    vocab = tk.get_vocab(with_added_tokens=False)
    n = tok.special_tokens["<|begin_of_text|>"]
    decoder = gpt2_byte_decoder()
    by_id = sorted((i, t) for t, i in vocab.items() if i < n)
    if [i for i, _ in by_id] != list(range(n)) or tok.vocab_size != n + 256:
        return None
    try:
        return b"".join(base64.b64encode(bytes(decoder[c] for c in t)) + b" %d\n" % i for i, t in by_id)
    except KeyError:  # not a byte-level vocabulary
        return None


def tokenizer_config(tok: Tokenizer, max_length: int) -> dict:
    """tokenizer_config.json: the generic fast tokenizer, its special tokens and the Jinja chat template."""
    names = getattr(tok.chat_template, "tokens", {})
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _piece(tok, tok.bos_id) if tok.bos_id is not None else names.get("bos_token"),
        "eos_token": _piece(tok, tok.eos_id),
        "pad_token": _piece(tok, tok.pad_id) if tok.pad_id is not None else None,
        "chat_template": template_source(tok.chat_template),
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "normalized": False, "lstrip": False, "rstrip": False,
                     "single_word": False}
            for t, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
        },
    }  # fmt: skip
    if isinstance(tok, SentencePieceTokenizer):
        config["unk_token"] = next((t for t, i in tok.special_tokens.items() if tok.sp.is_unknown(i)), None)
    return {k: v for k, v in config.items() if v is not None}


def special_ids(tok: Tokenizer) -> dict:
    """bos/eos/pad ids for config.json and generation_config.json; eos lists every stop token, eos first."""
    stops = [tok.eos_id] + sorted(tok.stop_ids - {tok.eos_id})
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": stops[0] if len(stops) == 1 else stops, "pad_token_id": tok.pad_id}
    return {k: v for k, v in ids.items() if v is not None}


def write_hf_tokenizer(tok: Tokenizer, out_dir: Path, max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json + generation_config.json; an HF source folder's own files as they are."""
    source = getattr(tok, "source", None)
    if source is not None and Path(source).name == "tokenizer.json":
        for name in HF_TOKENIZER_FILES:
            if (Path(source).parent / name).is_file():
                copy_file(Path(source).parent / name, out_dir / name)
        if not (out_dir / "generation_config.json").is_file():
            write_json(out_dir / "generation_config.json", {**special_ids(tok), "_from_model_config": False})
        return
    converted = to_tokenizers(tok)
    atomic_write(out_dir / "tokenizer.json", lambda tmp: converted.save(str(tmp)))
    write_json(out_dir / "tokenizer_config.json", tokenizer_config(tok, max_length))
    write_json(out_dir / "generation_config.json", {**special_ids(tok), "_from_model_config": False})
