"""Training checkpoints and the run folder that holds them.

A checkpoint is written to a staging folder and renamed into place, so a crash never leaves a
half-written one; older ones are removed (renamed away first, then deleted) only after the new one is
complete, keeping the newest `keep`. A write that fails (a full disk) removes its staging folder.

Layout of ``<run>/step-000123/``: ``model.pt`` (weights), ``optimizer.pt``, ``trainer.pt`` (step,
scheduler, sampler, data position, RNG states, arguments). Everything loads with ``weights_only=True``.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import torch

from common.errors import UserError

STEP_DIR = re.compile(r"^step-(\d{6,})$")
EXPORTS = ("final-meta", "final-hf", "final-peft")
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", *EXPORTS, "sampling_counts.png",
               "training_curves.png", "tensorboard")
CHECKPOINT_FILES = ("model.pt", "optimizer.pt", "trainer.pt")


class CheckpointError(UserError):
    """A checkpoint that cannot be written, read or applied; the message names the file."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, keep: int = 2) -> Path:
    """Write ``run_dir/step-NNNNNN`` atomically, then delete all but the newest `keep` checkpoints."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:06d}"
    staging = run_dir / f".tmp-step-{step:06d}"
    for leftover in run_dir.glob(".tmp-step-*"):  # a write killed before its rename
        shutil.rmtree(leftover)
    staging.mkdir()
    try:
        torch.save(model.state_dict(), staging / "model.pt")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save({**trainer_state, "rng": rng_state()}, staging / "trainer.pt")
        make_durable(staging)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(staging, ignore_errors=True)
        free = shutil.disk_usage(run_dir).free
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{staging}: writing the step-{step} checkpoint failed ({cause}); removed the "
                              f"partial folder; {free / 2**30:.2f} GiB free on that disk") from err
    return publish(staging, final, keep)


def make_durable(staging: Path) -> None:
    """fsync every file below `staging`, so the rename that publishes it publishes complete bytes."""
    for file in [f for f in staging.rglob("*") if f.is_file()]:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def publish(staging: Path, final: Path, keep: int) -> Path:
    """Rename the complete, durable `staging` folder to `final`; then delete all but the newest `keep`
    checkpoints of its run folder."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    run_dir = final.parent
    for older in checkpoints(run_dir)[:-keep]:
        doomed = older.with_name(f".old-{older.name}")
        os.replace(older, doomed)  # never a half-deleted folder that looks like a checkpoint
        shutil.rmtree(doomed)
    for leftover in run_dir.glob(".old-step-*"):
        shutil.rmtree(leftover)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in a run directory, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def run_outputs(run_dir: Path) -> list[str]:
    """Names of the training-run outputs in `run_dir` (checkpoints, metrics, config, exports)."""
    found = [p.name for p in checkpoints(run_dir)]
    return found + [name for name in RUN_OUTPUTS if (run_dir / name).exists()]


def clear_run(run_dir: Path) -> None:
    """Remove a run's outputs (an outlier-score cache, valid for the weights, stays)."""
    for name in run_outputs(run_dir) + [p.name for p in run_dir.glob(".tmp-step-*")]:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest complete one inside a run folder; symbolic links resolved, so
    the run folder is the checkpoint's real parent (not the link's)."""
    path = Path(path).resolve()
    if (path / "trainer.pt").is_file():
        return path
    found = checkpoints(path)
    if not found:
        raise CheckpointError(f"--resume {path}: no checkpoint (step-NNNNNN folder with trainer.pt) found there")
    return found[-1]


def read_file(file: Path, **kwargs):
    """A checkpoint file, loaded with weights_only=True; missing or unreadable: CheckpointError naming it."""
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; the checkpoint is incomplete")
    try:
        return torch.load(file, weights_only=True, **kwargs)
    except Exception as err:  # truncated, empty or not a torch file: torch raises many types
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{file}: cannot be read ({cause}); resume from an earlier checkpoint") from None


def read_trainer_state(path: Path) -> dict:
    """trainer.pt of a checkpoint folder (step, scheduler, sampler, loader, RNG, arguments)."""
    return read_file(path / "trainer.pt")


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place and return the trainer state (RNG already restored)."""
    for name in CHECKPOINT_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing; the checkpoint is incomplete")
    device = next(model.parameters()).device
    trainer_state = read_trainer_state(path)
    weights, optim_state = read_file(path / "model.pt", map_location=device), read_file(path / "optimizer.pt", map_location=device)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path / 'model.pt'}: does not fit this model ({str(err).splitlines()[0]})") from None
    try:
        optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{path / 'optimizer.pt'}: does not fit this optimizer (saved for another method or "
                              f"model?): {err}") from None
    set_rng_state(trainer_state["rng"])
    return trainer_state
