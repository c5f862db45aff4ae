"""Training checkpoints and the run folder that holds them: one format for one process and for many.

Layout of ``<run>/step-000123/``: ``shards/`` (torch.distributed.checkpoint, DCP: ``model.<name>`` the weights,
``optim.<name>/<key>`` the optimizer's tensors, training/optimizer_state.py) and ``trainer.pt`` (step,
scheduler, sampler, data position, RNG states, arguments, and the optimizer's non-tensor state). One process
writes DCP without a process group; under torchrun or --fsdp every rank writes its own shards. DCP reshards
on load, so a checkpoint written by any number of processes, sharded or not, resumes on any other number, and
`read_weights` reads any of them whole into one process. Nothing is unpickled: trainer.pt loads with
``weights_only=True``, ``shards/.metadata`` through training/dcp_reader.py. (Checkpoints of earlier versions,
``model.pt`` + ``optimizer.pt``: training/legacy_checkpoint.py.)

A checkpoint is written to a staging folder and renamed into place, so a crash never leaves a
half-written one; older ones are removed (renamed away first, then deleted) only after the new one is
complete, keeping the newest `keep`. A write that fails (a full disk) removes its staging folder.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from training.dcp_reader import CheckpointError, failure, load_tensors, read_metadata
from training.optimizer_state import optimizer_template, optimizer_tensors, restore_optimizer

STEP_DIR = re.compile(r"^step-(\d{6,})$")
EXPORTS = ("final-meta", "final-hf", "final-peft")
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", *EXPORTS, "sampling_counts.png",
               "training_curves.png", "tensorboard")
METADATA = Path("shards") / ".metadata"
__all__ = ["CheckpointError"]  # (defined beside the DCP reader, which raises it too)


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


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, keep: int = 2) -> Path:
    """Write ``run_dir/step-NNNNNN`` atomically, then delete all but the newest `keep` checkpoints. With a
    process group every rank calls this (each writes its shards; rank 0 the rest)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    group = dist.is_initialized()
    main = not group or dist.get_rank() == 0
    final, staging = run_dir / f"step-{step:06d}", run_dir / f".tmp-step-{step:06d}"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for leftover in run_dir.glob(".tmp-step-*"):  # a write killed before its rename
            shutil.rmtree(leftover)
        staging.mkdir()
    if group:
        dist.barrier()
    try:
        tensors, optim_meta = optimizer_tensors(model, optimizer)
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.save({"model": get_model_state_dict(model), "optim": tensors}, checkpoint_id=staging / "shards",
                     no_dist=not group)
        if group:
            dist.barrier()
        if main:
            torch.save({**trainer_state, "rng": rng_state(), "optimizer": optim_meta}, staging / "trainer.pt")
            make_durable(staging)
    except (OSError, RuntimeError, CheckpointException) as err:  # torch.save: a full disk is a RuntimeError
        shutil.rmtree(staging, ignore_errors=True)
        free = shutil.disk_usage(run_dir).free
        cause = failure(err)
        raise CheckpointError(f"{staging}: writing the step-{step} checkpoint failed ({cause}); removed the "
                              f"partial folder; {free / 2**30:.2f} GiB free on that disk") from err
    if main:
        publish(staging, final, keep)
    if group:
        dist.barrier()
    return final


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
    """trainer.pt of a checkpoint folder (step, scheduler, sampler, loader, RNG, arguments, optimizer layout)."""
    return read_file(path / "trainer.pt")


def is_legacy(path: Path) -> bool:
    """A checkpoint of an earlier version: model.pt and optimizer.pt beside trainer.pt, no shards/."""
    return not (path / "shards").is_dir() and (path / "model.pt").is_file()


def saved_tensors(path: Path) -> dict[str, TensorStorageMetadata]:
    """Name -> size and dtype of every tensor in a checkpoint's shards/ (``model.<name>``, ``optim.<key>``)."""
    saved = read_metadata(path / METADATA).state_dict_metadata  # never plain pickle
    return {k: v for k, v in saved.items() if isinstance(v, TensorStorageMetadata)}


def check_fits(path: Path, saved: dict, shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """Every tensor of a model (name -> shape) is in the checkpoint with its shape, and no other."""
    for name, shape in shapes.items():
        found = saved.get(f"model.{name}")
        if found is None or tuple(found.size) != shape:
            got = "missing" if found is None else f"of shape {tuple(found.size)}"
            raise CheckpointError(f"{path / 'shards'}: does not fit {what}: tensor {name} is {got}, expected {shape}")
    extra = sorted(k[6:] for k in saved if k.startswith("model.") and k[6:] not in shapes)
    if extra:
        raise CheckpointError(f"{path / 'shards'}: does not fit {what}: it also holds {', '.join(extra[:3])}"
                              f"{' ...' if len(extra) > 3 else ''}")


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place from a checkpoint written by any number of processes (with a
    process group: every rank calls this) and return the trainer state (RNG already restored)."""
    if not (path / METADATA).is_file():
        raise CheckpointError(f"{path / METADATA}: missing; the checkpoint is incomplete")
    trainer_state = read_trainer_state(path)
    meta = trainer_state.pop("optimizer", None)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / 'trainer.pt'}: has no optimizer state; the checkpoint is incomplete")
    saved = saved_tensors(path)
    model_state = get_model_state_dict(model)  # the model's own tensors (shards under FSDP), filled in place
    check_fits(path, saved, {name: tuple(t.shape) for name, t in model_state.items()}, "this model")
    optim = optimizer_template(model, meta, saved, path)
    load_tensors(path / "shards", {"model": model_state, "optim": optim})
    set_model_state_dict(model, model_state)
    restore_optimizer(model, optimizer, optim, meta, path)
    set_rng_state(trainer_state["rng"])
    return trainer_state


def read_weights(path: Path, names: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None,
                 ) -> dict[str, torch.Tensor]:  # fmt: skip
    """The model tensors of a checkpoint, whole, in this process (on the CPU, in their saved dtype); `names`:
    only those (name -> expected shape and dtype to read them in), else all."""
    saved = saved_tensors(path)
    if names is None:
        names = {k[6:]: (tuple(v.size), v.properties.dtype) for k, v in saved.items() if k.startswith("model.")}
    state = {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in names.items()}
    load_tensors(path / "shards", {"model": state})
    return state


def read_optimizer(path: Path) -> tuple[dict[str, dict], list[dict]]:
    """The optimizer state of a checkpoint, whole, in this process: parameter name -> its state as the
    optimizer keeps it ({"step": 3, "exp_avg": ..., "projection": {"vh": ...}}), and the group options."""
    meta = read_trainer_state(path).get("optimizer")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / 'trainer.pt'}: has no optimizer state; the checkpoint is incomplete")
    saved = saved_tensors(path)
    tensors = {key: torch.empty(tuple(saved[f"optim.{key}"].size), dtype=saved[f"optim.{key}"].properties.dtype)
               for key in meta["layout"]}
    load_tensors(path / "shards", {"optim": tensors})
    state: dict[str, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        name, *rest = key.split("/")
        target = state.setdefault(name, {})
        for part in rest[:-1]:
            target = target.setdefault(part, {})
        target[rest[-1]] = value
    return state, meta["param_groups"]
