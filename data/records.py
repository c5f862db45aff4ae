"""Read fine-tuning data files into a list of plain-dict records.

Record kinds (every record of one file has the same kind):

- ``instruction``: Alpaca / LLM-Adapters, ``{"instruction", "input" (optional), "output"}``; LLM-Adapters
  files may also carry ``answer``; our commonsense builder adds ``task`` and ``doc_id``.
- ``text``: ``{"text"}``; LMFlow ``{"type": "text_only", "instances": [...]}`` and plain ``.txt`` files.
- ``text2text``: ``{"input", "output"}``; LMFlow ``{"type": "text2text", "instances": [...]}``.
- ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``: an optional
  system message first, then user and assistant turns alternating, at least one assistant turn. ShareGPT's
  ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}`` is read as the same.
  Other keys inside a message (``name``, ``weight``, ...) are ignored.

File formats: ``.json`` (a list of records, or an LMFlow object), ``.jsonl`` (one record per line; blank
lines are skipped), ``.txt`` (one ``text`` record per paragraph; paragraphs are separated by one or more
blank lines, so a file without blank lines is one document), ``.parquet`` and HF ``datasets`` ``.arrow``
files (one record per row; a null column value counts as absent), or a folder of ``.parquet`` / ``.arrow``
shards (``datasets.save_to_disk``).

Malformed records and empty files raise `common.io.RecordError` (a ``ValueError``) naming the file and
the line (JSON / JSONL) and record index. Unknown extra fields are accepted but dropped, with one warning
per file that lists them.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from common.io import RecordError, read_json, read_records, read_text
from data.arrow import read_table

# kind -> (required string fields, optional fields kept in the record)
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "instruction": (("instruction", "output"), ("input", "answer", "task", "doc_id")),
    "text": (("text",), ()),
    "text2text": (("input", "output"), ()),
    "chat": (("messages",), ()),
}
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
LMFLOW_TYPES = {"text_only": "text", "text2text": "text2text"}


def record_kind(record: dict) -> str:
    """Which kind a record is, decided by its fields (see the module docstring)."""
    if "messages" in record or "conversations" in record:
        return "chat"
    if "instruction" in record:
        return "instruction"
    if "text" in record:
        return "text"
    if "input" in record and "output" in record:
        return "text2text"
    raise ValueError(
        f"fields {sorted(record)} match no record kind (instruction/output, text, input/output, messages "
        "or conversations)"
    )


def sharegpt_messages(conversations: object) -> list[dict]:
    """ShareGPT turns ``{"from", "value"}`` as ``{"role", "content"}`` messages (other keys dropped)."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' must be a non-empty list")
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"conversation turn {i} must be an object with 'from' and 'value'")
        if turn["from"] not in SHAREGPT_ROLES:
            raise ValueError(f"conversation turn {i} is from {turn['from']!r}; expected one of {list(SHAREGPT_ROLES)}")
        messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
    return messages


def _check_messages(messages: object) -> list[dict]:
    """The conversation's messages with only 'role' and 'content', checked for roles and turn order."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} must be an object with 'role' and 'content'")
        if message["role"] not in ROLES:
            raise ValueError(f"message {i} has role {message['role']!r}; expected one of {ROLES}")
        if not isinstance(message["content"], str):
            raise ValueError(f"message {i} content must be a string")
    first = 1 if messages[0]["role"] == "system" else 0
    for i in range(first, len(messages)):
        expected = ("user", "assistant")[(i - first) % 2]
        if messages[i]["role"] != expected:
            raise ValueError(f"message {i} has role {messages[i]['role']!r}, expected {expected!r} "
                             "(an optional system message first, then alternating user/assistant)")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("conversation has no assistant message to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def normalize_record(raw: object, kind: str) -> tuple[dict, list[str]]:
    """Validated copy of one raw record of ``kind`` and the names of its unknown fields."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object, got {type(raw).__name__}")
    if record_kind(raw) != kind:
        raise ValueError(f"record is of kind {record_kind(raw)!r} but the file holds {kind!r} records")
    if kind == "chat" and "messages" not in raw:  # ShareGPT
        raw = {"messages": sharegpt_messages(raw["conversations"]),
               **{k: v for k, v in raw.items() if k != "conversations"}}
    required, optional = KINDS[kind]
    missing = [f for f in required if f not in raw]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    record = {}
    for field in required + optional:
        if field not in raw:
            continue
        value = raw[field]
        if field == "messages":
            value = _check_messages(value)
        elif field == "doc_id":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"field 'doc_id' must be a non-negative integer, got {value!r}")
        elif not isinstance(value, str):
            raise ValueError(f"field {field!r} must be a string, got {type(value).__name__}")
        record[field] = value
    if kind == "instruction":
        record.setdefault("input", "")
    unknown = sorted(set(raw) - set(required) - set(optional))
    return record, unknown


def normalize_records(raws: list, source: str, lines: list[int] | None = None) -> list[dict]:
    """Validate a list of raw records of one kind; errors name ``source``, the line (if known) and record."""
    if not raws:
        raise RecordError(source, "no records")
    records, unknown = [], {}
    kind = None
    for i, raw in enumerate(raws):
        try:
            if kind is None:
                if not isinstance(raw, dict):
                    raise ValueError(f"expected an object, got {type(raw).__name__}")
                kind = record_kind(raw)
            record, extra = normalize_record(raw, kind)
        except ValueError as err:
            raise RecordError(source, str(err), line=lines[i] if lines else None, record=i) from None
        for field in extra:
            unknown.setdefault(field, i)
        records.append(record)
    if unknown:
        listed = ", ".join(f"{f!r} (first in record {i})" for f, i in unknown.items())
        warnings.warn(f"{source}: ignoring unknown field(s) {listed}", stacklevel=3)
    return records


def _read_lmflow(obj: dict, source: str) -> list[dict]:
    if obj.get("type") not in LMFLOW_TYPES:
        raise RecordError(source, f"LMFlow type {obj.get('type')!r} is not supported; use one of {list(LMFLOW_TYPES)}")
    instances = obj.get("instances")
    if not isinstance(instances, list):
        raise RecordError(source, "LMFlow 'instances' must be a list")
    records = normalize_records(instances, source)
    kind = record_kind(records[0])
    if kind != LMFLOW_TYPES[obj["type"]]:
        raise RecordError(source, f"LMFlow type {obj['type']!r} holds {kind!r} instances")
    return records


def read_json_records(path: Path) -> list[dict]:
    """A JSON list of records, a JSONL file of records, or an LMFlow ``{"type", "instances"}`` object."""
    if path.suffix.lower() == ".json" and _first_byte(path) == b"{":
        obj = read_json(path)
        if isinstance(obj, dict) and "instances" in obj:
            return _read_lmflow(obj, str(path))
        raise RecordError(path, "expected a JSON list of records or an LMFlow object with 'instances'")
    records = read_records(path)
    return normalize_records([raw for _, raw in records], str(path), [line for line, _ in records])


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4096).lstrip()[:1]


def read_paragraphs(path: Path) -> list[dict]:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", read_text(path))]
    return normalize_records([{"text": p} for p in paragraphs if p], str(path))


def read_table_records(path: Path) -> list[dict]:
    """Rows of a Parquet / arrow file or a folder of their shards; null values are absent fields."""
    rows = read_table(path)
    return normalize_records([{k: v for k, v in row.items() if v is not None} for row in rows], str(path))


READERS = {".json": read_json_records, ".jsonl": read_json_records, ".txt": read_paragraphs,
           ".parquet": read_table_records, ".arrow": read_table_records}


def load_records(path: str | Path) -> list[dict]:
    """Records of a ``.json``, ``.jsonl``, ``.txt``, ``.parquet`` or ``.arrow`` file, or a folder of shards.

    The format comes from the extension, the record kind from the content.
    """
    path = Path(path)
    if path.is_dir():
        return read_table_records(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise RecordError(path, f"unknown data file extension {path.suffix!r}; expected one of {list(READERS)} "
                                "or a folder of .parquet / .arrow shards")
    if path.stat().st_size == 0:
        raise RecordError(path, "empty file")
    return reader(path)
