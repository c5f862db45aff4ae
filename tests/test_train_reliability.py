"""Nothing a run has made is lost or silently mixed with another run: a used --out, a diverging update, a
full disk, a kill -9 in the middle of a step, a non-finite loss on one rank; and what a resumed run may
change. The shared tiny model and data (conftest.py)."""
from __future__ import annotations

import errno
import json
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import train
from torch._subclasses.fake_tensor import is_fake

from optim import GaLoreAdamW
import training.checkpoint
import training.step
from common.errors import UserError
from helpers import ROOT, final_weights, run, two_processes
from training.checkpoint import CheckpointError, checkpoints, read_weights

pytestmark = pytest.mark.slow

FULL = ("--method", "full", "--save-every", "1")


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_run_into_a_used_out_is_refused_and_overwrite_replaces_it(tiny_dir, data_file, tmp_path):
    run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "4")
    before = (tmp_path / "metrics.jsonl").read_bytes(), final_weights(tmp_path)
    with pytest.raises(UserError, match=rf"--out {tmp_path}: already holds a run \(step-000003, step-000004, "
                                        r"config.yaml, metrics.jsonl.*\); continue it with --resume .*--overwrite"):
        run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "3")
    assert (tmp_path / "metrics.jsonl").read_bytes() == before[0]  # the old run is untouched
    assert all(torch.equal(before[1][k], v) for k, v in final_weights(tmp_path).items())

    run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "3", "--overwrite")
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000002", "step-000003"]
    assert steps_logged(tmp_path) == [1, 2, 3]


def test_resuming_an_older_checkpoint_into_its_own_run_is_refused(tiny_dir, data_file, tmp_path):
    """Its newer checkpoints would survive beside the new branch and win the next --resume."""
    run(tiny_dir, data_file, tmp_path / "a", *FULL, "--max-steps", "3", "--keep-checkpoints", "3")
    with pytest.raises(UserError, match=r"holds newer checkpoints \(step-000002, step-000003\); resume the newest"):
        train.main(["--resume", str(tmp_path / "a" / "step-000001")])
    train.main(["--resume", str(tmp_path / "a" / "step-000001"), "--out", str(tmp_path / "b")])  # a branch
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["step-000002", "step-000003"]
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_weights_are_never_saved_and_the_message_is_true(tiny_dir, data_file, tmp_path, monkeypatch):
    """An update that blows up a weight at step 3: step 2 stays the newest checkpoint, nothing is exported."""
    real_step, calls = GaLoreAdamW.step, []

    def exploding_step(self, *a, **k):
        result = real_step(self, *a, **k)
        if is_fake(self.param_groups[0]["params"][0]):  # train.py's memory simulation, before the real steps
            return result
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].mul_(float("inf"))
        return result

    monkeypatch.setattr(GaLoreAdamW, "step", exploding_step)
    with pytest.raises(UserError, match="step 3: weight .* is not finite") as err:
        run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "5", "--keep-checkpoints", "1")
    assert f"the newest checkpoint {tmp_path / 'step-000002'} is untouched" in str(err.value)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000002"]
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path).values())


def test_a_non_finite_model_is_not_exported(tiny_dir, data_file, tmp_path, monkeypatch):
    real_step = GaLoreAdamW.step

    def exploding_step(self, *a, **k):
        real_step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))

    monkeypatch.setattr(GaLoreAdamW, "step", exploding_step)
    with pytest.raises(UserError, match="step 1: weight .* is not finite.*holds no checkpoint"):
        run(tiny_dir, data_file, tmp_path, "--method", "full", "--max-steps", "1", "--save-format", "hf")
    assert not (tmp_path / "final-hf").exists() and not checkpoints(tmp_path)


def test_a_huge_learning_rate_stops_without_saving_a_non_finite_checkpoint(tiny_dir, data_file, tmp_path):
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(UserError, match="step .*: (loss|gradient norm|weight).*stopped without saving"):
        run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "8", "--lr", "1e30", "--warmup", "2")
    for ckpt in checkpoints(tmp_path):
        assert all(torch.isfinite(v).all() for v in read_weights(ckpt).values())
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # the loop's handlers left with the error


def test_a_non_finite_gradient_stops_before_the_update(tiny_dir, data_file, tmp_path, monkeypatch):
    real = training.step.next_token_loss_sum
    calls = []

    def poisoned_gradient(model, *a):
        if is_fake(model.norm.weight):  # train.py's memory simulation, before the real steps
            return real(model, *a)
        calls.append(1)
        if len(calls) == 2:  # a finite loss whose gradient is infinite
            model.norm.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
        return real(model, *a)

    monkeypatch.setattr(training.step, "next_token_loss_sum", poisoned_gradient)
    with pytest.raises(UserError, match="step 2: gradient norm is inf; stopped without saving"):
        run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "3")
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000001"]


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--M", "inf"), ("--max-grad-norm", "nan"),
                                          ("--weight-decay", "-inf"), ("--eps", "nan")])
def test_non_finite_flag_values_are_refused(tiny_dir, data_file, tmp_path, flag, value):
    with pytest.raises(UserError, match=rf"^{flag}: must be a finite number, got {value}$"):
        run(tiny_dir, data_file, tmp_path, f"{flag}={value}")
    assert not tmp_path.joinpath("config.yaml").exists()


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_checkpoints_keeps_the_newest_complete_ones(tiny_dir, data_file, tmp_path, keep):
    run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "5", "--keep-checkpoints", str(keep))
    assert [p.name for p in checkpoints(tmp_path)] == [f"step-{s:06d}" for s in range(6 - keep, 6)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")])
@pytest.mark.parametrize("writer", ["shards", "trainer.pt"])
def test_a_full_disk_during_a_checkpoint_removes_the_staging_folder(tiny_dir, data_file, tmp_path, monkeypatch, failure,
                                                                    writer):
    """The disk fills up half-way through step 2's shard file (DCP wraps the error) or its trainer.pt."""
    from torch.distributed.checkpoint.api import CheckpointException
    module = training.checkpoint.dcp if writer == "shards" else training.checkpoint.torch
    real_save, saves = module.save, []

    def disk_fills_up(obj, *a, **k):
        path = k["checkpoint_id"] / "__0_0.distcp" if writer == "shards" else a[0]
        if writer == "shards" or isinstance(path, (str, Path)) and Path(path).name == "trainer.pt":  # (DCP: streams)
            saves.append(path)
        if len(saves) == 2:
            saves.append(path)
            Path(path).write_bytes(b"\0" * 1000)
            raise CheckpointException("write", {0: (failure, None)}) if writer == "shards" else failure
        return real_save(obj, *a, **k)

    monkeypatch.setattr(module, "save", disk_fills_up)
    with pytest.raises(CheckpointError) as err:
        run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "3")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / '.tmp-step-000002'}: writing the step-2 checkpoint failed")
    assert "GiB free on that disk" in message and "\n" not in message
    assert not (tmp_path / ".tmp-step-000002").exists()
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000001"]


def test_resume_cuts_the_metrics_back_to_the_checkpoint(tiny_dir, data_file, tmp_path):
    """What kill -9 leaves: lines logged after the newest checkpoint, the last one torn."""
    run(tiny_dir, data_file, tmp_path, "--method", "full", "--save-every", "2", "--max-steps", "2")
    log = tmp_path / "metrics.jsonl"
    log.write_text(log.read_text() + json.dumps({"step": 3, "loss": 1.0}) + '\n{"step": 4, "lo')
    train.main(["--resume", str(tmp_path), "--max-steps", "4", "--allow-changes"])
    assert steps_logged(tmp_path) == [1, 2, 3, 4]


def test_config_yaml_records_the_run_and_reproduces_it(tiny_dir, data_file, tmp_path):
    run(tiny_dir, data_file, tmp_path / "a", *FULL, "--max-steps", "2", "--lr", "2e-3")
    values = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert (values["lr"], values["max_steps"], values["method"], values["data"]) == (2e-3, 2, "full", str(data_file))
    train.main(["--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b")])
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_flag_that_changes_the_run_is_refused_on_resume_unless_allowed(tiny_dir, data_file, tmp_path):
    run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "2")
    with pytest.raises(UserError, match=r"^--resume .*: these flags change the run being resumed: "
                                        r"--method full -> lisa, --sampling None -> uniform, --lr 0.003 -> 0.001, --max-steps 2 -> 3; "
                                        r"pass --allow-changes"):
        train.main(["--resume", str(tmp_path), "--method", "lisa", "--lr", "1e-3", "--max-steps", "3"])
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000001", "step-000002"]
    train.main(["--resume", str(tmp_path), "--save-every", "2", "--eval-every", "5"])  # harmless: passes
    train.main(["--resume", str(tmp_path), "--max-steps", "3", "--allow-changes"])
    assert steps_logged(tmp_path) == [1, 2, 3]
    config = (tmp_path / "config.yaml").read_text()
    assert "# resumed from " + str(tmp_path / "step-000002") + " with --allow-changes: max_steps: 2 -> 3" in config
    assert yaml.safe_load(config)["max_steps"] == 3


def test_resume_with_another_method_names_the_file(tiny_dir, data_file, tmp_path):
    run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "1")
    with pytest.raises(CheckpointError, match=r"trainer.pt: does not fit this optimizer"):
        train.main(["--resume", str(tmp_path), "--method", "galore", "--allow-changes"])


@pytest.mark.parametrize("name", ["shards/__0_0.distcp", "shards/.metadata", "trainer.pt"])
@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_a_damaged_checkpoint_file_is_named_on_resume(tiny_dir, data_file, tmp_path, name, damage):
    run(tiny_dir, data_file, tmp_path, *FULL, "--max-steps", "1")
    file = tmp_path / "step-000001" / name
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2] if damage == "truncate" else b"")
    named = file.parent if file.suffix == ".distcp" else file  # DCP names no file: its folder
    how = r"refused \(.*\); not a checkpoint this project wrote" if file.name == ".metadata" else \
        r"cannot be read \(.*\); resume from an earlier checkpoint"
    with pytest.raises(CheckpointError, match=rf"^{named}: {how}$"):
        train.main(["--resume", str(tmp_path)])


@pytest.mark.parametrize("text, message", [
    ("save_format: hff\n", r"run.yaml: --save-format: invalid choice: 'hff'"),
    ("gamma: 2.5\n", r"run.yaml: --gamma: expected an integer, got '2.5'"),
    ("lr: .inf\n", r"run.yaml: --lr: must be a finite number, got inf"),
    ("no_pack: 3\n", r"run.yaml: no_pack: expected true or false, got 3"),
    ("gama: 3\n", r"run.yaml: unknown keys gama"),
])
def test_config_file_values_are_parsed_like_flags(tmp_path, data_file, text, message):
    from training.args import parse_args

    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(UserError, match=message):
        parse_args(["--config", str(tmp_path / "run.yaml"), "--data", str(data_file)])


def torchrun_with_rank1_loss(tmp_path: Path, replacement: str, *extra: str) -> subprocess.CompletedProcess:
    """2-process data-parallel `full` training in which rank 1's loss sum of step 2 is `replacement`, a Python
    expression of `real` (the real function) and `a` (its arguments: model, input ids, labels, chunked)."""
    script = tmp_path / "patched_loss.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import train
        from common import cli
        import torch
        import training.step
        from torch._subclasses.fake_tensor import is_fake
        real, calls = training.step.next_token_loss_sum, []
        def loss_sum(*a):
            if is_fake(a[1]):  # train.py's memory simulation, before the real steps
                return real(*a)
            calls.append(1)
            return {replacement} if os.environ["RANK"] == "1" and len(calls) == 2 else real(*a)
        training.step.next_token_loss_sum = loss_sum
        cli.run(train.main)
    """))
    args = ["--seq-len", "64", "--no-pack", "--batch-size", "8", "--save-format", "none", "--method", "full", "--max-steps", "4", "--no-memory-report",
            "--save-every", "1", "--out", str(tmp_path / "ddp"), *extra]
    return two_processes(script, *args, timeout=240)


@pytest.mark.distributed
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tiny_dir, data_file, tmp_path):
    """Rank 1's loss turns NaN at step 2; both ranks must stop with the error, none waits in an all-reduce."""
    done = torchrun_with_rank1_loss(tmp_path, 'real(*a) * float("nan")', "--model", str(tiny_dir), "--data", str(data_file))
    assert done.returncode != 0
    assert done.stderr.count("error: step 2: loss is nan; stopped without saving") == 2, done.stderr[-3000:]
    assert [p.name for p in checkpoints(tmp_path / "ddp")] == ["step-000001"]


@pytest.mark.distributed
@pytest.mark.parametrize("mode", [[], ["--fsdp"]])
def test_a_micro_batch_without_targets_on_one_rank_does_not_stall_the_others(tiny_dir, data_file, tmp_path, mode):
    """Rank 1's micro-batch of step 2 has no target token: it still runs the forward and backward whose
    collectives rank 0 waits in, and the run completes."""
    done = torchrun_with_rank1_loss(tmp_path, "real(a[0], a[1], torch.full_like(a[2], -100), *a[3:])", "--model", str(tiny_dir), "--data", str(data_file), *mode)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in checkpoints(tmp_path / "ddp")] == ["step-000003", "step-000004"]


def test_no_outliers_at_this_M_is_a_one_line_error_naming_M(tiny_dir, data_file, tmp_path):
    with pytest.raises(UserError, match=r"--sampling owlore: policy 'owlore': all block weights are zero; lower --M \(now 1000"):
        run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "1", "--M", "1000")
