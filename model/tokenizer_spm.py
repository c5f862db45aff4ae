"""SentencePiece tokenizers (LLaMA-2, Mistral v1) behind the `Tokenizer` interface."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import sentencepiece as spm

from model.tokenizer_base import Tokenizer

if TYPE_CHECKING:
    from model.chat import ChatTemplate


class SentencePieceTokenizer(Tokenizer):
    """LLaMA-2 / Mistral v1 SentencePiece model (bos 1, eos 2, no pad: SentencePiece's pad -1 becomes None)."""

    def __init__(self, processor: spm.SentencePieceProcessor, chat_template: str | ChatTemplate = "llama2"):
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
