"""One checkpoint format for one process and many: a checkpoint resumes on another number of processes, sharded
or not (DCP reshards), with the losses of an uninterrupted run; one exporter gives the same files from the same
weights whichever number of processes wrote them; a checkpoint of an earlier version (model.pt) still resumes
in one process and exports, and refuses --fsdp with one line."""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import torch

import train
from common.errors import Stopped, UserError
from helpers import final_weights, interrupt_after, run, two_processes
from training.checkpoint import read_optimizer, read_trainer_state, rng_state
from training.export import export_checkpoint

WORKER = Path(__file__).with_name("fsdp_worker.py")
OWLORE = ("--method", "owlore", "--max-steps", "4", "--eps", "1e-6")  # eps: see tests/test_fsdp.py


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def interrupted(tiny_dir, data_file, out: Path, monkeypatch, *extra: str) -> None:
    """The OwLore run stopped by a signal after step 2 (its checkpoint step-000002)."""
    interrupt_after(2, monkeypatch)
    with pytest.raises(Stopped):
        run(tiny_dir, data_file, out, *OWLORE, *extra)
    monkeypatch.undo()


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [([], ["--fsdp"]), (["--fsdp"], [])])
def test_a_checkpoint_resumes_with_and_without_fsdp_in_one_process(tiny_dir, data_file, tmp_path, monkeypatch,
                                                                   first, then):
    """Plain -> --fsdp (a group of one: DTensors) and back, with the losses of an uninterrupted run."""
    straight = run(tiny_dir, data_file, tmp_path / "straight", *OWLORE)
    interrupted(tiny_dir, data_file, tmp_path / "split", monkeypatch, *first)
    train.main(["--resume", str(tmp_path / "split"), *then, "--allow-changes"])
    assert losses(tmp_path / "split") == pytest.approx([r["loss"] for r in straight], rel=1e-5)
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


def write_legacy_checkpoint(run_dir: Path, step: int, model, optimizer, trainer_state: dict, keep: int = 2) -> Path:
    """What earlier versions wrote: model.pt, optimizer.pt (state keyed by position) and trainer.pt."""
    folder = run_dir / f"step-{step:06d}"
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save({**trainer_state, "rng": rng_state()}, folder / "trainer.pt")
    return folder


@pytest.mark.slow
def test_an_earlier_versions_checkpoint_resumes_in_one_process_exports_and_refuses_fsdp(tiny_dir, data_file, tmp_path,
                                                                                       monkeypatch):
    run(tiny_dir, data_file, tmp_path / "straight", *OWLORE)
    monkeypatch.setattr(train, "save_checkpoint", write_legacy_checkpoint)
    interrupted(tiny_dir, data_file, tmp_path / "old", monkeypatch)
    old = tmp_path / "old" / "step-000002"
    assert (old / "model.pt").is_file() and not (old / "shards").exists()
    with pytest.raises(UserError, match=r"^--resume .*step-000002: a checkpoint of an earlier version \(model.pt\) "
                                        r"resumes in one process without --fsdp only; its next checkpoint resumes anywhere$"):
        train.main(["--resume", str(tmp_path / "old"), "--fsdp", "--allow-changes"])
    export_checkpoint(old, "hf", tmp_path / "old-hf")  # the weights of step 2, by the one exporter
    train.main(["--resume", str(tmp_path / "old")])  # steps 3-4; step 4's checkpoint in the current format
    assert losses(tmp_path / "old") == losses(tmp_path / "straight")  # bit for bit
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "old")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "old-hf").iterdir())[0] == "config.json"


def same_files(a: Path, b: Path) -> None:
    """Byte for byte; a torch.save file (Meta's .pth) by its tensors, as its zip records the temporary file name
    it was written under (common/io.py's atomic write)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and names
    _, mismatch, errors = filecmp.cmpfiles(a, b, [n for n in names if not n.endswith(".pth")], shallow=False)
    assert not mismatch and not errors, mismatch
    for name in (n for n in names if n.endswith(".pth")):
        x, y = (torch.load(folder / name, weights_only=True) for folder in (a, b))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


@pytest.mark.slow
@pytest.mark.distributed
def test_one_process_and_two_rank_checkpoints_resume_across_and_export_the_same_files(tiny_dir, data_file, tmp_path,
                                                                                     monkeypatch):
    """1 process (plain) -> 2 ranks --fsdp and 2 ranks --fsdp -> 1 process (plain): the losses of the
    uninterrupted runs (1-process and 2-rank, equal to fp32 rounding); and the same weights saved by 1 process
    and by 2 ranks (a learning rate too small to move an fp32 weight) export to byte-identical files."""
    fsdp = lambda out, *extra: ["--model", str(tiny_dir), "--data", str(data_file), "--out", str(tmp_path / out),  # noqa: E731
                                "--seq-len", "64", "--no-pack", "--batch-size", "8", "--lr", "3e-3", "--seed", "1",
                                "--rank", "8", "--update-proj-gap", "2", "--gamma", "2", "--period", "2",
                                "--calib-windows", "2", "--calib-seq-len", "16", "--M", "3", "--save-format", "none",
                                "--no-memory-report", *OWLORE, "--fsdp", *extra]
    straight = run(tiny_dir, data_file, tmp_path / "straight-1", *OWLORE)
    interrupted(tiny_dir, data_file, tmp_path / "from-1", monkeypatch)
    run(tiny_dir, data_file, tmp_path / "still-1", *OWLORE, "--lr", "1e-30", "--max-steps", "1")
    runs = [fsdp("from-2"),  # interrupted after its step 2 (the worker counts steps over the launch)
            fsdp("straight-2"), ["--resume", str(tmp_path / "from-1"), "--fsdp", "--allow-changes"],
            fsdp("still-2", "--lr", "1e-30", "--max-steps", "1")]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    done = two_processes(WORKER, "interrupt", "2", tmp_path / "runs.json")
    assert done.returncode == 0, done.stderr[-4000:]
    assert [p.name for p in (tmp_path / "from-2").glob("step-*")] == ["step-000002"]
    train.main(["--resume", str(tmp_path / "from-2"), "--allow-changes"])  # without --fsdp: plain tensors
    one, two = [r["loss"] for r in straight], losses(tmp_path / "straight-2")
    assert two == pytest.approx(one, rel=1e-5)
    for crossed in ("from-1", "from-2"):
        assert losses(tmp_path / crossed) == pytest.approx(one, rel=1e-5), crossed
        assert read_trainer_state(tmp_path / crossed / "step-000004")["step"] == 4
    assert read_optimizer(tmp_path / "from-2" / "step-000004")[0].keys() == \
        read_optimizer(tmp_path / "straight-1" / "step-000004")[0].keys()

    ckpt1, ckpt2 = tmp_path / "still-1" / "step-000001", tmp_path / "still-2" / "step-000001"
    assert (ckpt2 / "shards" / "__1_0.distcp").is_file() and not (ckpt1 / "shards" / "__1_0.distcp").exists()
    w1, w2 = final_weights(tmp_path / "still-1"), final_weights(tmp_path / "still-2")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the same weights, saved by 1 process and by 2
    for fmt in ("hf", "meta"):
        same_files(export_checkpoint(ckpt1, fmt, tmp_path / f"1-{fmt}"), export_checkpoint(ckpt2, fmt, tmp_path / f"2-{fmt}"))
