"""Training checkpoints: written to a temporary folder and renamed into place, so a crash never leaves
a half-written checkpoint; the previous good one is removed only after the new one is complete.

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

STEP_DIR = re.compile(r"^step-(\d{6,})$")


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
                    trainer_state: dict) -> Path:
    """Write ``run_dir/step-NNNNNN`` atomically and delete older checkpoints once it is complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:06d}"
    staging = run_dir / f".tmp-step-{step:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    torch.save(model.state_dict(), staging / "model.pt")
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    torch.save({**trainer_state, "rng": rng_state()}, staging / "trainer.pt")
    for file in staging.iterdir():  # make the bytes durable before the rename publishes them
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    for older in checkpoints(run_dir)[:-1]:
        shutil.rmtree(older)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in a run directory, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest complete one inside a run folder."""
    path = Path(path)
    if (path / "trainer.pt").is_file():
        return path
    found = checkpoints(path)
    if not found:
        raise FileNotFoundError(f"--resume {path}: no checkpoint (step-NNNNNN folder with trainer.pt) found there")
    return found[-1]


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place and return the trainer state (RNG already restored)."""
    for name in ("model.pt", "optimizer.pt", "trainer.pt"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {name} is missing")
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(path / "model.pt", map_location=device, weights_only=True), strict=True)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    trainer_state = torch.load(path / "trainer.pt", weights_only=True)
    set_rng_state(trainer_state["rng"])
    return trainer_state
