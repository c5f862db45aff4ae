"""Chaos: a run checkpointing every step is killed with SIGKILL at random moments (in a step, in the middle
of writing a checkpoint or a metrics line) and resumed with `--resume RUN` alone, several times; its final
weights, optimizer state and metrics equal those of a run that was never interrupted."""
from __future__ import annotations

import pytest
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from helpers import ROOT
from training.checkpoint import checkpoints, read_optimizer, read_weights

pytestmark = pytest.mark.slow

STEPS = 8


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.is_file() else 0


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tiny_dir, data_file, tmp_path):
    common = ["--model", str(tiny_dir), "--data", str(data_file), "--seq-len", "64", "--no-pack", "--batch-size", "8",
              "--lr", "3e-3", "--save-format", "none", "--seed", "1", "--method", "owlore", "--rank", "8",
              "--update-proj-gap", "2", "--gamma", "2", "--period", "3", "--calib-windows", "2",
              "--calib-seq-len", "16", "--M", "3", "--max-steps", str(STEPS), "--save-every", "1", "--no-memory-report"]
    straight, chaos = tmp_path / "straight", tmp_path / "chaos"
    finish(start(*common, "--out", str(straight)))

    rng = random.Random(0)
    proc, kills = start(*common, "--out", str(chaos)), 0
    for target in sorted(rng.sample(range(1, STEPS - 1), 3)):
        deadline = time.monotonic() + 300
        while (not checkpoints(chaos) or lines(chaos / "metrics.jsonl") < target) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))  # somewhere in the next step or checkpoint write
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            kills += 1
        proc = start("--resume", str(chaos))
    finish(proc)
    assert kills >= 2

    a, b = checkpoints(straight)[-1], checkpoints(chaos)[-1]
    assert a.name == b.name == f"step-{STEPS:06d}"
    for read in (read_weights, read_optimizer):
        x, y = read(a), read(b)
        flat_x, flat_y = _flatten(x), _flatten(y)
        assert flat_x.keys() == flat_y.keys()
        for key in flat_x:
            assert torch.equal(flat_x[key], flat_y[key]) if torch.is_tensor(flat_x[key]) else flat_x[key] == flat_y[key], key
    logged = [json.loads(line) for line in (chaos / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == list(range(1, STEPS + 1))
    assert [m["loss"] for m in logged] == [m["loss"] for m in reference]
    assert not [p for p in chaos.iterdir() if p.name.startswith(".")]


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flatten(value, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _flatten(value, f"{prefix}/{i}").items()}
    return {prefix: obj}
