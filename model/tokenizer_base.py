"""The tokenizer interface every tokenizer implements (see `model.tokenizer` for what each method promises)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

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
    chat_template: str | ChatTemplate  # a built-in format name, or the checkpoint's own Jinja template
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
