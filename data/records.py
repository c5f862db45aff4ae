"""Read fine-tuning data files into a list of plain-dict records.

Record kinds (every record of one file has the same kind):

- ``instruction``: Alpaca / LLM-Adapters, ``{"instruction", "input" (optional), "output"}``; LLM-Adapters
  files may also carry ``answer``; our commonsense builder adds ``task`` and ``doc_id``.
- ``text``: ``{"text"}``; LMFlow ``{"type": "text_only", "instances": [...]}`` and plain ``.txt`` files.
- ``text2text``: ``{"input", "output"}``; LMFlow ``{"type": "text2text", "instances": [...]}``.
- ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``: an optional
  system message first, then user and assistant turns alternating, at least one assistant turn.

File formats: ``.json`` (a list of records, or an LMFlow object), ``.jsonl`` (one record per line; blank
lines are skipped) and ``.txt`` (one ``text`` record per paragraph; paragraphs are separated by one or more
blank lines, so a file without blank lines is one document).

Malformed records and empty files raise ``ValueError`` naming the file and record index. Unknown extra
fields are accepted but dropped, with one warning per file that lists them.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

# kind -> (required string fields, optional fields kept in the record)
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "instruction": (("instruction", "output"), ("input", "answer", "task", "doc_id")),
    "text": (("text",), ()),
    "text2text": (("input", "output"), ()),
    "chat": (("messages",), ()),
}
ROLES = ("system", "user", "assistant")
LMFLOW_TYPES = {"text_only": "text", "text2text": "text2text"}


def record_kind(record: dict) -> str:
    """Which kind a record is, decided by its fields (see the module docstring)."""
    if "messages" in record:
        return "chat"
    if "instruction" in record:
        return "instruction"
    if "text" in record:
        return "text"
    if "input" in record and "output" in record:
        return "text2text"
    raise ValueError(
        f"fields {sorted(record)} match no record kind (instruction/output, text, input/output or messages)"
    )


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"message {i} must be an object with exactly 'role' and 'content'")
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


def normalize_record(raw: object, kind: str) -> tuple[dict, list[str]]:
    """Validated copy of one raw record of ``kind`` and the names of its unknown fields."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object, got {type(raw).__name__}")
    if record_kind(raw) != kind:
        raise ValueError(f"record is of kind {record_kind(raw)!r} but the file holds {kind!r} records")
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
            _check_messages(value)
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


def normalize_records(raws: list, source: str) -> list[dict]:
    """Validate a list of raw records of one kind; errors name ``source`` and the record index."""
    if not raws:
        raise ValueError(f"{source}: no records")
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
            raise ValueError(f"{source}: record {i}: {err}") from None
        for field in extra:
            unknown.setdefault(field, i)
        records.append(record)
    if unknown:
        listed = ", ".join(f"{f!r} (first in record {i})" for f, i in unknown.items())
        warnings.warn(f"{source}: ignoring unknown field(s) {listed}", stacklevel=3)
    return records


def _read_lmflow(obj: dict, source: str) -> list[dict]:
    if obj.get("type") not in LMFLOW_TYPES:
        raise ValueError(f"{source}: LMFlow type {obj.get('type')!r} is not supported; use one of {list(LMFLOW_TYPES)}")
    instances = obj.get("instances")
    if not isinstance(instances, list):
        raise ValueError(f"{source}: LMFlow 'instances' must be a list")
    records = normalize_records(instances, source)
    kind = record_kind(records[0])
    if kind != LMFLOW_TYPES[obj["type"]]:
        raise ValueError(f"{source}: LMFlow type {obj['type']!r} holds {kind!r} instances")
    return records


def read_json(path: Path) -> list[dict]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if isinstance(obj, dict) and "instances" in obj:
        return _read_lmflow(obj, str(path))
    if not isinstance(obj, list):
        raise ValueError(f"{path}: expected a JSON list of records or an LMFlow object with 'instances'")
    return normalize_records(obj, str(path))


def read_jsonl(path: Path) -> list[dict]:
    raws = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raws.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {line_no} (record {len(raws)}): not valid JSON ({err})") from None
    return normalize_records(raws, str(path))


def read_text(path: Path) -> list[dict]:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))]
    return normalize_records([{"text": p} for p in paragraphs if p], str(path))


READERS = {".json": read_json, ".jsonl": read_jsonl, ".txt": read_text}


def load_records(path: str | Path) -> list[dict]:
    """Records of a ``.json``, ``.jsonl`` or ``.txt`` file (format from the extension, kind from content)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unknown data file extension {path.suffix!r}; expected one of {list(READERS)}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    try:
        return reader(path)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
