"""Checkpoints of earlier versions, read only: ``step-NNNNNN/{model.pt, optimizer.pt, trainer.pt}``, written by
one process (torch.save of the state dicts; everything loads with ``weights_only=True``).

They resume in one process without --fsdp, as they always did (the run's next checkpoint is in the current
format, training/checkpoint.py), and export; they do not resume on several ranks or under --fsdp, since
optimizer.pt keys the state by parameter position, not by name.
"""
from __future__ import annotations

from pathlib import Path

import torch

from training.checkpoint import CheckpointError, read_file, read_trainer_state, set_rng_state

FILES = ("model.pt", "optimizer.pt", "trainer.pt")


def load_legacy_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore a plain (one-process) model and optimizer in place; the trainer state (RNG already restored)."""
    for name in FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing; the checkpoint is incomplete")
    device = next(model.parameters()).device
    trainer_state = read_trainer_state(path)
    weights = read_file(path / "model.pt", map_location=device)
    optim_state = read_file(path / "optimizer.pt", map_location=device)
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


def read_legacy_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.pt of an earlier version's checkpoint (memory-mapped, on the CPU)."""
    return read_file(path / "model.pt", map_location="cpu", mmap=True)
