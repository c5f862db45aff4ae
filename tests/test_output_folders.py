"""One writer per folder and no mixed sets of files: an export never writes beside files of another export
(`--overwrite` clears them first) nor over the folder it reads from; a loader refuses shard files that do not
fit together, naming them; a second writer of a locked folder gets one line with the holder's pid, also
after the holder was killed (the OS drops the lock)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from common import cli
from common.errors import UserError
from common.lock import LOCK_FILE, FolderLock
from model import Transformer, get_config, load_model, save_model
from model.hf_format import read_hf_dir
from model.meta_format import read_meta_dir
from helpers import ROOT, run
from training import export
from training.checkpoint import checkpoints, read_weights


@pytest.fixture(scope="module")
def trained(tiny_dir, data_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run(tiny_dir, data_file, out, "--method", "full", "--max-steps", "1")
    return out


def trained_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_weights(checkpoints(run_dir)[-1])


def one_line(main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.run(main, argv)
    message = str(stop.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_export_beside_a_stale_sharded_export_is_refused_and_overwrite_replaces_it(trained, tmp_path):
    """The issue's case: a stale index and its shards in --out made our own loader return the old weights."""
    out = tmp_path / "hf"
    torch.manual_seed(5)
    save_model(Transformer(get_config("tiny", n_layers=4, vocab_size=32000, max_seq_len=256)), out, format="hf",
               max_shard_bytes=500_000)
    stale = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in stale and len(stale) > 5
    message = one_line(export.main, [str(trained), "--format", "hf", "--out", str(out)])
    assert message == (f"error: --out {out}: already holds files ({', '.join(stale[:5])} and {len(stale) - 5} more); "
                       "pass --overwrite to replace them, or choose another --out")
    assert sorted(p.name for p in out.iterdir()) == stale  # untouched

    export.main([str(trained), "--format", "hf", "--out", str(out), "--overwrite"])
    listed = set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert {p.name for p in out.glob("*.safetensors")} == listed and not (out / LOCK_FILE).exists()  # no stale shard
    _, state = read_hf_dir(out)
    expected = trained_weights(trained)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_export_over_what_it_reads_is_refused_even_with_overwrite(trained, tiny_dir, tmp_path):
    assert one_line(export.main, [str(trained), "--format", "meta", "--out", str(tiny_dir), "--overwrite"]) == (
        f"error: --out {tiny_dir}: holds {tiny_dir}, which this command reads; choose another --out")
    checkpoint = checkpoints(trained)[-1]
    assert one_line(export.main, [str(checkpoint), "--format", "hf", "--out", str(trained), "--overwrite"]) == (
        f"error: --out {trained}: holds {checkpoint}, which this command reads; choose another --out")
    assert checkpoint.is_dir() and (tiny_dir / "params.json").is_file()
    (tmp_path / "file").write_text("x")
    assert one_line(export.main, [str(trained), "--format", "hf", "--out", str(tmp_path / "file")]) == (
        f"error: --out {tmp_path / 'file'}: is a file, not a folder")


def test_temporary_files_of_an_interrupted_export_are_removed_by_the_next(trained, tmp_path):
    out = tmp_path / "meta"
    out.mkdir()
    (out / ".0123abcd.consolidated.00.pth").write_bytes(b"half")  # atomic_write's temporary, left by kill -9
    export.main([str(trained), "--format", "meta", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["consolidated.00.pth", "params.json", "tokenizer.model"]


def tiny() -> Transformer:
    torch.manual_seed(0)
    return Transformer(get_config("tiny"))


def test_hf_shards_that_do_not_fit_together_are_named(tmp_path):
    save_model(tiny(), tmp_path, format="hf", max_shard_bytes=40_000)  # model-0000N-of-0000M + index
    save_model(tiny(), tmp_path / "one", format="hf")
    shutil.copy(tmp_path / "one" / "model.safetensors", tmp_path)
    with pytest.raises(UserError, match=r"the shard files do not fit together: model.safetensors.index.json lists "
                                        r"model-00001-of-(\d+).safetensors .. model-\1-of-\1.safetensors \(\d+ files\), but the folder also holds "
                                        r"model.safetensors; remove the stale files"):
        read_hf_dir(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()  # a single-file export beside stale shards
    with pytest.raises(UserError, match=r"without an index, the weights are model.safetensors, but the folder also "
                                        r"holds model-00001-of-"):
        load_model(tmp_path)


def test_meta_shards_that_do_not_fit_together_are_named(tmp_path):
    save_model(tiny(), tmp_path / "two", format="meta", meta_shards=2)
    save_model(tiny(), tmp_path, format="meta")  # one shard, beside a stale consolidated.01.pth of two
    shutil.copy(tmp_path / "two" / "consolidated.01.pth", tmp_path)
    with pytest.raises(UserError, match=r"the shard files do not fit together: consolidated.00.pth and "
                                        r"consolidated.01.pth differ in .* \(\(\d+, \d+\) vs \(\d+, \d+\)\)"):
        read_meta_dir(tmp_path)
    (tmp_path / "consolidated.01.pth").rename(tmp_path / "consolidated.02.pth")
    with pytest.raises(UserError, match=r"consolidated.00.pth, consolidated.02.pth are not numbered "
                                        r"consolidated.00.pth .. consolidated.01.pth"):
        read_meta_dir(tmp_path)


HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from common.lock import FolderLock
    FolderLock(__import__("pathlib").Path(sys.argv[1])).acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def hold(folder: Path) -> subprocess.Popen:
    """Another process that takes `folder`'s lock and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT)), str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_locked_folder_names_its_holder_and_a_killed_holder_blocks_nothing(tmp_path):
    holder = hold(tmp_path / "out")
    try:
        with pytest.raises(UserError, match=rf"^--out {tmp_path / 'out'}: in use by another process "
                                            rf"\(pid {holder.pid}\); wait for it"):
            FolderLock(tmp_path / "out").acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "out" / LOCK_FILE).is_file()  # left by kill -9, with the dead pid; the OS dropped the lock
    with FolderLock(tmp_path / "out") as lock:
        assert (tmp_path / "out" / LOCK_FILE).read_text() == f"{os.getpid()}\n" and lock.fd is not None
    assert not (tmp_path / "out" / LOCK_FILE).exists()
    with FolderLock(tmp_path / "new"):  # a folder the lock made, and nothing written: not left behind
        pass
    assert not (tmp_path / "new").exists()


def test_an_export_into_a_folder_another_process_writes_is_refused(trained, tmp_path):
    holder = hold(tmp_path / "hf")
    try:
        assert one_line(export.main, [str(trained), "--format", "hf", "--out", str(tmp_path / "hf")]) == (
            f"error: --out {tmp_path / 'hf'}: in use by another process (pid {holder.pid}); wait for it to finish "
            "or stop it, or choose another folder")
    finally:
        holder.kill()
        holder.wait()


def test_only_one_of_many_racing_lockers_holds_the_folder(tmp_path):
    """Holders come and go (each removes the lock file on release): two never hold the folder at once."""
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from common.errors import UserError
        from common.lock import FolderLock
        folder, log = Path(sys.argv[1]), Path(sys.argv[2])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                with FolderLock(folder):
                    with open(log, "a") as f: f.write(f"in {{os.getpid()}}\\n")
                    time.sleep(0.002)
                    with open(log, "a") as f: f.write(f"out {{os.getpid()}}\\n")
            except UserError:
                pass
    """)
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "f"), str(log)]) for _ in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    lines = log.read_text().splitlines()
    assert len(lines) > 20
    assert all(a.split()[0] == "in" and b == a.replace("in", "out") for a, b in zip(lines[::2], lines[1::2]))
