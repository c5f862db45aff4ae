"""Files: one atomic write, and one reader of JSON / JSONL records with one error wording.

`atomic_write` writes a file so that a crash or a full disk leaves either the old file or the complete
new one, never a partial file and never a stray temporary file; the new file's mode follows the umask
like any file made with `open`. `read_records` reads a ``.json`` file (a list of values, each with the
line it starts on) or a ``.jsonl`` file (one value per non-blank line); every malformed input raises
`RecordError`, whose message is ``<file>: line N: <cause>``; checks of a record's fields add its index,
``<file>: line N (record I): <cause>``, or name only the record where there are no lines (Parquet rows).
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common.errors import UserError


class RecordError(UserError):
    """A data file that cannot be read or holds a malformed record; CLIs print ``error: <message>``."""

    def __init__(self, path: str | Path, cause: str, line: int | None = None, record: int | None = None):
        self.path, self.cause, self.line, self.record = str(path), cause, line, record
        where = [f"line {line}"] if line is not None else []
        if record is not None:
            where.append(f"(record {record})" if where else f"record {record}")
        super().__init__(": ".join([self.path, " ".join(where), cause] if where else [self.path, cause]))


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` for a new file ``tmp`` in `path`'s folder, make it durable, rename it to `path`.

    The temporary file ends in `path`'s name (so writers that pick a format by extension work) and is
    removed if anything fails, the rename included. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # O_EXCL with mode 0o666: a fresh name, and the umask applies as for open()
        tmp = path.with_name(f".{secrets.token_hex(4)}.{path.name}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that replaced the file (safetensors: 0600)
            os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        failed = _write_failure(err, path)
        if failed is not None:
            raise failed from err
        raise
    _fsync_dir(path.parent)


def _write_failure(err: BaseException, path: Path) -> OSError | None:
    """A writer library's report of a failed write (a full disk) as the OSError it is, naming `path`:
    safetensors reports Rust's ``(os error N)``, torch.save its stream writer's position check."""
    if isinstance(err, OSError) or not isinstance(err, Exception):
        return None
    text = str(err)
    code = re.search(r"\(os error (\d+)\)", text)
    if code:
        return OSError(int(code[1]), os.strerror(int(code[1])), str(path))
    if "PytorchStreamWriter" in text or "inline_container" in text:
        free = shutil.disk_usage(path.parent).free
        return OSError(errno.EIO, f"the write failed ({text.splitlines()[0].strip()}); {free / 2**20:.0f} MiB free on "
                                  "that disk", str(path))
    return None


def is_temporary(name: str) -> bool:
    """Whether `name` is an `atomic_write` temporary file (only a killed process leaves one behind)."""
    return re.fullmatch(r"\.[0-9a-f]{8}\..+", name) is not None


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def copy_file(source: str | Path, target: str | Path) -> None:
    """Atomically copy the file `source` to `target`."""
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def write_json(path: str | Path, obj: Any, indent: int = 1, allow_nan: bool = True) -> None:
    """Atomically write `obj` as JSON (UTF-8, non-ASCII kept as is)."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=allow_nan) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Atomically write one JSON value per line."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; FileNotFoundError if missing, `RecordError` if unreadable or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8-sig")  # a UTF-8 byte-order mark is not text
    except UnicodeDecodeError as err:
        raise RecordError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise RecordError(path, f"cannot read ({err.strerror})") from None


def read_json(path: str | Path) -> Any:
    """The one JSON value of a file (e.g. a config or an object of lists)."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(path, f"not valid JSON ({err.msg}, column {err.colno})", line=err.lineno) from None


def read_records(path: str | Path) -> list[tuple[int, Any]]:
    """``(line, value)`` for every record of a JSON or JSONL file, `line` being where the record starts.

    ``.jsonl``: one value per non-blank line. ``.json``: the items of its top-level list (any other
    top-level value is an error; read such files with `read_json`).
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        records = []
        for n, line in enumerate(read_text(path).splitlines(), start=1):
            if line.strip():
                try:
                    records.append((n, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise RecordError(path, f"not valid JSON ({err.msg}, column {err.colno})", line=n) from None
        return records
    text = read_text(path)
    try:
        items = _json_items(text)
    except json.JSONDecodeError as err:
        raise RecordError(path, f"not valid JSON ({err.msg}, column {err.colno})", line=err.lineno) from None
    if items is None:
        raise RecordError(path, f"expected a JSON list of records, got {type(json.loads(text)).__name__}")
    return items


def read_objects(path: str | Path) -> list[dict]:
    """The records of a JSON or JSONL file (see `read_records`), each of which must be a JSON object."""
    rows = []
    for line, value in read_records(path):
        if not isinstance(value, dict):
            raise RecordError(path, f"expected a JSON object, got {type(value).__name__}", line=line)
        rows.append(value)
    return rows


_SPACE = " \t\n\r"


def _json_items(text: str) -> list[tuple[int, Any]] | None:
    """Each item of a top-level JSON list with the line it starts on; None (if valid) for any other value."""
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    if not text.startswith("[", pos):
        json.loads(text)
        return None
    items: list[tuple[int, Any]] = []
    line, counted = 1, 0  # newlines before `counted`, counted incrementally so long files stay linear
    pos = _skip(text, pos + 1)
    if text.startswith("]", pos):
        end = pos + 1
    else:
        while True:
            line += text.count("\n", counted, pos)
            counted = pos
            value, pos = decoder.raw_decode(text, pos)
            items.append((line, value))
            pos = _skip(text, pos)
            if text.startswith(",", pos):
                pos = _skip(text, pos + 1)
                continue
            if text.startswith("]", pos):
                end = pos + 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    if text[end:].strip(_SPACE):
        raise json.JSONDecodeError("Extra data", text, _skip(text, end))
    return items


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos
