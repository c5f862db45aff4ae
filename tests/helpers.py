"""Helpers shared by the train.py tests (the fixtures they use are in conftest.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

import train
from training.checkpoint import checkpoints, read_weights

ROOT = Path(__file__).resolve().parents[1]


def two_processes(script: Path, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """`script args` on 2 processes under torchrun (one thread each), output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run(tiny_dir: Path, data_file: Path, out: Path, *extra: str, memory_report: bool = False) -> list[dict]:
    """train.py on the tiny model; its memory report (the simulation, tested in test_memory_composed.py and
    test_bench_memory.py) only when asked, as it costs a few seconds of each run."""
    train.main(["--model", str(tiny_dir), "--data", str(data_file), "--out", str(out), "--seq-len", "64", "--no-pack",
                "--batch-size", "8", "--lr", "3e-3", "--save-format", "none", "--seed", "1", "--rank", "8",
                "--update-proj-gap", "2", "--gamma", "2", "--period", "2", "--calib-windows", "2",
                "--calib-seq-len", "16", "--M", "3", "--memory-report" if memory_report else "--no-memory-report",
                *extra])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return read_weights(checkpoints(out)[-1])


def interrupt_after(steps: int, monkeypatch) -> None:
    """SIGINT during training step `steps`: the loop finishes that step, saves and stops."""
    real, calls = train.accumulate_gradients, []

    def interrupted(*a, **k):
        result = real(*a, **k)
        calls.append(1)
        if len(calls) == steps:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(train, "accumulate_gradients", interrupted)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `build(folder)` fills, built once per test run: pytest-xdist workers share it (the first to
    ask builds it under a file lock, the others wait and read it), instead of each building its own copy."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, above the workers'
    out = root / f"shared-{name}"
    with FileLock(f"{out}.lock"):
        if not (out / ".built").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            (out / ".built").touch()
    return out
