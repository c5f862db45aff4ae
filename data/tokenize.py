"""Tokenize one record into ``input_ids`` and ``labels`` with the prompt masked from the loss.

Labels are aligned with the inputs (the loss shifts them: logits at t predict labels[t+1]); masked
positions hold ``IGNORE_INDEX``. The whole rendered text is encoded at once, so the ids are exactly the
model's own encoding (encoding segments separately would differ, e.g. SentencePiece adds a leading ``▁``
to every call); a mask boundary is where the encoding of the text up to it stops agreeing with the whole
encoding, so a token that straddles a boundary belongs to the segment after it.

- ``instruction``: bos + template prompt + output + eos (template "alpaca" or "chat").
- ``text2text``: bos + input + output + eos (LMFlow text2text: no template).
- ``text``: bos + text + eos, all trainable.
- ``chat``: bos + the conversation in the tokenizer's chat template (special-token strings of the rendered
  template become their ids via ``encode_special`` when the tokenizer has it); assistant turns, with their
  closing marker, are trainable. eos is appended only if the last turn holds no stop token. A template
  that already starts with bos (LLaMA-2/3) gets no second one.
"""
from __future__ import annotations

from collections.abc import Callable

from data.records import record_kind
from data.templates import TEMPLATES, chat_segments, instruction_segments

IGNORE_INDEX = -100


def record_segments(record: dict, template: str = "alpaca", chat_template: str | None = None) -> list[tuple[str, bool]]:
    """``(text, trainable)`` segments of any record kind."""
    kind = record_kind(record)
    if kind == "instruction":
        return instruction_segments(record, template, chat_template)
    if kind == "text2text":
        return [(record["input"], False), (record["output"], True)]
    if kind == "text":
        return [(record["text"], True)]
    if chat_template is None:
        raise ValueError("a chat record needs a tokenizer with a chat_template")
    return chat_segments(record["messages"], chat_template)


def tokenize_record(tokenizer, record: dict, mask_prompt: bool = True, template: str = "alpaca") -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one record; labels are ``IGNORE_INDEX`` on the prompt if ``mask_prompt``."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; expected one of {TEMPLATES}")
    chat_template = getattr(tokenizer, "chat_template", None)
    rendered_chat = record_kind(record) == "chat" or (record_kind(record) == "instruction" and template == "chat")
    # A rendered chat holds the template's special-token strings; everything else is encoded literally.
    encode = getattr(tokenizer, "encode_special", tokenizer.encode) if rendered_chat else tokenizer.encode
    ids, trainable = encode_segments(encode, record_segments(record, template, chat_template))
    if tokenizer.bos_id is not None and (not ids or ids[0] != tokenizer.bos_id):
        ids.insert(0, tokenizer.bos_id)
        trainable.insert(0, False)
    if not rendered_chat or not _turn_has_stop(ids, trainable, tokenizer.stop_ids):
        ids.append(tokenizer.eos_id)
        trainable.append(True)
    labels = [t if keep or not mask_prompt else IGNORE_INDEX for t, keep in zip(ids, trainable)]
    return ids, labels


def encode_segments(encode: Callable[[str], list[int]], segments: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """Ids of the concatenated segments, encoded at once, and per id the ``trainable`` flag of its segment."""
    runs = _merge_runs(segments)
    ids = encode("".join(text for text, _ in runs))
    trainable: list[bool] = []
    prefix = ""
    for i, (text, is_response) in enumerate(runs):
        prefix += text
        end = len(ids) if i == len(runs) - 1 else max(len(trainable), _common_prefix(encode(prefix), ids))
        trainable += [is_response] * (end - len(trainable))
    return ids, trainable


def _merge_runs(segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Adjacent segments with the same flag joined, so only real mask boundaries cost an encoding."""
    runs: list[tuple[str, bool]] = []
    for text, trainable in segments:
        if runs and runs[-1][1] == trainable:
            runs[-1] = (runs[-1][0] + text, trainable)
        elif text:
            runs.append((text, trainable))
    return runs


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _turn_has_stop(ids: list[int], trainable: list[bool], stop_ids) -> bool:
    """Whether the final trainable run (the last assistant turn) contains a stop token, e.g. ``<|im_end|>\\n``."""
    end = max((i for i, keep in enumerate(trainable) if keep), default=-1)
    start = end
    while start > 0 and trainable[start - 1]:
        start -= 1
    return end >= 0 and any(t in stop_ids for t in ids[start : end + 1])
