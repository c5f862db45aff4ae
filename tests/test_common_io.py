"""common.io: the atomic write leaves no temporary file, honours the umask; the reader names file and line."""
import errno
import json
import os
import stat

import pytest

from common.io import RecordError, atomic_write, read_json, read_objects, read_records, write_json, write_jsonl


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"v": 1})

    def fail(tmp):
        tmp.write_text("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_failed_rename_removes_the_temporary(tmp_path):
    target = tmp_path / "folder"
    target.mkdir()
    (target / "keep").write_text("x")  # os.replace cannot put a file over a non-empty folder
    with pytest.raises(OSError):
        atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "rows.jsonl").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_writers_pass_a_path_ending_in_the_target_name(tmp_path):
    seen = []
    atomic_write(tmp_path / "plot.png", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"png")))
    assert seen[0].startswith(".") and seen[0].endswith(".plot.png")  # format-by-extension writers work
    assert (tmp_path / "plot.png").read_bytes() == b"png"


def test_records_carry_the_line_they_start_on(tmp_path):
    (tmp_path / "a.json").write_text('[\n  {"x": 1},\n\n  {"x": 2}, 3\n]\n')
    assert read_records(tmp_path / "a.json") == [(2, {"x": 1}), (4, {"x": 2}), (4, 3)]
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n\n{"x": 2}\n')
    assert read_records(tmp_path / "a.jsonl") == [(1, {"x": 1}), (3, {"x": 2})]
    (tmp_path / "empty.json").write_text(" [ ] ")
    assert read_records(tmp_path / "empty.json") == []


@pytest.mark.parametrize("name, text, message", [
    ("bad.json", '[\n {"x": 1},\n {"x": 2\n]', r"bad\.json: line 4: not valid JSON"),
    ("comma.json", '[{"x": 1},\n {"x": 2},\n]', r"comma\.json: line 3: not valid JSON \(Expecting value"),
    ("gap.json", '[{"x": 1}\n {"x": 2}]', r"gap\.json: line 2: not valid JSON \(Expecting ',' delimiter"),
    ("tail.json", '[{"x": 1}]\n[2]', r"tail\.json: line 2: not valid JSON \(Extra data"),
    ("bad.jsonl", '{"x": 1}\n\n{"x": \n', r"bad\.jsonl: line 3: not valid JSON"),
    ("obj.json", '{"x": 1}', r"obj\.json: expected a JSON list of records, got dict"),
    ("latin.jsonl", b'{"x": "caf\xe9"}\n', r"latin\.jsonl: not UTF-8 text"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RecordError, match=message) as caught:
        read_records(path)
    assert str(caught.value).startswith(str(path) + ": ")


def test_objects_only_and_one_value_files(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"x": 1}\n[1]\n')
    with pytest.raises(RecordError, match=r"rows\.jsonl: line 2: expected a JSON object, got list"):
        read_objects(tmp_path / "rows.jsonl")
    (tmp_path / "cfg.json").write_text('{\n "a": [1,\n 2,,]}')
    with pytest.raises(RecordError, match=r"cfg\.json: line 3: not valid JSON"):
        read_json(tmp_path / "cfg.json")
    with pytest.raises(FileNotFoundError, match=r"nope\.json: no such file"):
        read_json(tmp_path / "nope.json")


def test_error_wording_with_line_and_record():
    assert str(RecordError("f.json", "bad", line=3, record=1)) == "f.json: line 3 (record 1): bad"
    assert str(RecordError("f.parquet", "bad", record=1)) == "f.parquet: record 1: bad"
    assert str(RecordError("f.json", "bad")) == "f.json: bad"
    assert isinstance(RecordError("f", "x"), ValueError)


def test_exported_model_files_follow_the_umask(tmp_path):
    from model import Transformer, get_config, save_model

    old = os.umask(0o022)
    try:
        for fmt in ("meta", "hf"):
            save_model(Transformer(get_config("tiny")), tmp_path / fmt, format=fmt)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 4 and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
    assert not [p for p in files if p.name.startswith(".")]


def test_a_utf8_byte_order_mark_is_not_part_of_the_records(tmp_path):
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"x": 1}]).encode())
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"x": 1}\n{"x": 2}\n')
    assert read_records(tmp_path / "a.json") == [(1, {"x": 1})]
    assert read_records(tmp_path / "a.jsonl") == [(1, {"x": 1}), (2, {"x": 2})]


WRITE_LIMITED = """
import resource, sys
import torch
sys.path.insert(0, {root!r})
from common.io import atomic_write
from safetensors.torch import save_file
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # writes past 100 kB fail as on a full disk
writer = sys.argv[2]
try:
    atomic_write(sys.argv[1], lambda tmp: save_file({{"w": torch.zeros(100_000)}}, tmp) if writer == "safetensors"
                 else torch.save({{"w": torch.zeros(100_000)}}, tmp))
except OSError as err:
    print(type(err).__name__, err.errno, err.filename, err.strerror)
"""


@pytest.mark.parametrize("writer", ["safetensors", "torch"])
def test_a_writer_library_failing_on_a_full_disk_is_an_oserror_naming_the_file(tmp_path, writer):
    """safetensors and torch.save report a failed write in their own exception types; a command line turns only
    OSError into one line, so atomic_write reports it as one (the real ENOSPC gives `No space left on device`)."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    target = tmp_path / "model.out"
    done = subprocess.run([sys.executable, "-c", WRITE_LIMITED.format(root=root), str(target), writer],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    kind, code, filename, reason = done.stdout.strip().split(" ", 3)
    assert (kind, filename) == ("OSError", str(target))
    if writer == "safetensors":
        assert (int(code), reason) == (errno.EFBIG, os.strerror(errno.EFBIG))
    else:
        assert reason.startswith("the write failed (") and reason.endswith("MiB free on that disk")
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary
