"""--fused and --lean runs stopped by SIGINT and resumed are bit-identical to uninterrupted runs (the fused
hooks must act on the param groups that load_state_dict puts in place, where the scheduler sets lr)."""
from __future__ import annotations

import os
import signal

import pytest
import torch

import train
from common.errors import Stopped
from helpers import final_weights, run
from training.checkpoint import read_optimizer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("flags", [("--fused",), ("--lean",), ("--fused", "--grad-accum", "2")],
                         ids=["fused", "lean", "fused-accum"])
def test_sigint_then_resume_is_bit_identical(tiny_dir, data_file, tmp_path, monkeypatch, flags):
    args = ("--method", "owlore", "--period", "2", "--gamma", "2", "--max-steps", "4", *flags)
    run(tiny_dir, data_file, tmp_path / "straight", *args)
    real, calls = train.accumulate_gradients, []

    def interrupted_after_three_steps(*a):
        result = real(*a)
        calls.append(1)
        if len(calls) == 3:  # mid-period, after the linear schedule has moved lr twice
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(train, "accumulate_gradients", interrupted_after_three_steps)
    with pytest.raises(Stopped):  # (after saving step 3)
        run(tiny_dir, data_file, tmp_path / "split", *args)
    assert [p.name for p in (tmp_path / "split").glob("step-*")] == ["step-000003"]
    monkeypatch.undo()
    run(tiny_dir, data_file, tmp_path / "split", *args, "--resume", str(tmp_path / "split"))
    straight, split = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert all(torch.equal(straight[k], split[k]) for k in straight)


def test_random_projector_and_fp32_moments_train_from_the_command_line(tiny_dir, data_file, tmp_path):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "galore", "--max-steps", "6", "--schedule", "constant",
                  "--projector", "random", "--fp32-moments", "--reproject-moments")
    losses = [m["loss"] for m in metrics]
    assert losses[-1] < losses[0] - 0.3, losses
    _, groups = read_optimizer(next(tmp_path.glob("step-*")))
    assert {g["projector"]["name"] for g in groups if g["projector"]} == {"random"}
