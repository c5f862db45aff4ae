"""`tokenizers` tokenizers: Hugging Face folders (``tokenizer.json`` + ``tokenizer_config.json``) and the
byte-level BPE vocabularies of GGUF files (built in `model.tokenizer_gguf`).

In a folder, the BOS the model expects is the one ``tokenizers``' post-processor adds (LLaMA-3 adds it there,
LLaMA-2 through ``add_bos_token``, SmolLM2 adds none); eos and pad come from tokenizer_config.json (token
strings), falling back to generation_config.json / config.json ids; generation stops on eos, on every
``eos_token_id`` of generation_config.json and on the end-of-turn tokens of the chat formats we know.
The chat template is tokenizer_config.json's ``chat_template`` (a string, or a list of named templates of
which "default" is used) or ``chat_template.jinja``; without one, a built-in format is guessed from the
vocabulary.
"""
from __future__ import annotations

from pathlib import Path

import tokenizers
from tokenizers import decoders

from common.io import read_json
from model.chat import ChatTemplate, builtin_name
from model.tokenizer_base import END_OF_TURN, Tokenizer
from model.tokenizer_bpe import gpt2_byte_decoder

CONFIG_FILES = ("tokenizer_config.json", "generation_config.json", "config.json", "special_tokens_map.json")


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` with the model's special ids and chat template.

    Every added token marked special is a special token. A byte-level vocabulary that lacks some bytes
    (SmolLM2's lacks eight) refuses text holding them, where `tokenizers` would drop them silently.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, bos_id: int | None, eos_id: int, pad_id: int | None,
                 stop_ids: frozenset[int], chat_template: str | ChatTemplate, source: Path):  # fmt: skip
        self.tk, self.source = tokenizer, source
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_tokens = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        ends = {self.special_tokens[t] for t in END_OF_TURN if t in self.special_tokens}
        self.stop_ids = frozenset({eos_id, *stop_ids, *ends})
        self.chat_template = chat_template
        byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
        self._known_bytes = bytes(b for c, b in gpt2_byte_decoder().items() if tokenizer.token_to_id(c) is not None)
        self._check_bytes = byte_level and len(self._known_bytes) < 256

    def _encode(self, text: str, special: bool) -> list[int]:
        if self._check_bytes:
            unknown = text.encode("utf-8", "surrogatepass").translate(None, delete=self._known_bytes)
            if unknown:
                raise ValueError(f"text contains byte 0x{unknown[0]:02x}, which this vocabulary cannot represent")
        self.tk.encode_special_tokens = not special  # True: special-token strings are encoded as plain text
        return self.tk.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        return self.tk.decode(ids, skip_special_tokens=skip_special)


def _token_text(token: str | dict | None) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


def _chat_template(config: dict, folder: Path, special: set[str]) -> str | ChatTemplate:
    source = config.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    if source is None and (folder / "chat_template.jinja").is_file():
        source = (folder / "chat_template.jinja").read_text()
    if isinstance(source, str) and source:
        tokens = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        return builtin_name(source) or ChatTemplate(source, {k: v for k, v in tokens.items() if v is not None})
    if "<|start_header_id|>" in special:
        return "llama3"
    if "<|im_start|>" in special:
        return "chatml"
    return "llama2"


def read_json_file(path: Path) -> dict:
    """A JSON object file; {} when it does not exist."""
    value = read_json(path) if path.is_file() else {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


def _added_bos(tokenizer: tokenizers.Tokenizer) -> int | None:
    """The single token the post-processor puts in front of a text (an eos after it is ours to add)."""
    with_specials = tokenizer.encode("a", add_special_tokens=True).ids
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    starts = [k for k in range(len(with_specials) - len(plain) + 1) if with_specials[k:k + len(plain)] == plain]
    head = with_specials[: starts[0]] if starts else []
    return head[0] if len(head) == 1 else None


def load_hf_tokenizer(path: Path) -> HFTokenizer:
    """The tokenizer of ``path`` (a tokenizer.json file, or a folder holding one) and the configs beside it."""
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer file {file} does not exist")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises its own Exception type on malformed files
        raise ValueError(f"{file}: not a readable tokenizer.json ({e})") from None
    configs = {name: read_json_file(file.parent / name) for name in CONFIG_FILES}
    config = {**configs["special_tokens_map.json"], **configs["tokenizer_config.json"]}
    generation = configs["generation_config.json"] or configs["config.json"]

    def token_id(key: str) -> int | None:
        token = _token_text(config.get(key))  # older files write an AddedToken as {"content": ..., ...}
        if token is not None and tokenizer.token_to_id(token) is None:
            raise ValueError(f"{file}: {key} {token!r} is not in the vocabulary")
        return None if token is None else tokenizer.token_to_id(token)

    generation_eos = generation.get("eos_token_id")
    generation_eos = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    eos = token_id("eos_token")
    if eos is None and generation_eos:
        eos = generation_eos[0]
    if eos is None:
        raise ValueError(f"{file}: no eos_token in tokenizer_config.json and no eos_token_id in generation_config.json")
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    template = _chat_template(config, file.parent, special)
    return HFTokenizer(tokenizer, _added_bos(tokenizer), eos, token_id("pad_token"), frozenset(generation_eos),
                       template, file)  # fmt: skip
