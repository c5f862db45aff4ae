"""Training checkpoints of FSDP runs (`--fsdp` or data parallel): torch.distributed.checkpoint (DCP), each rank
writing its own shards.

Layout of ``<run>/step-000123/`` (published by one rename, as training/checkpoint.py's): ``shards/`` (DCP:
model weights and optimizer tensors, each a DTensor keyed by parameter name) and ``trainer.pt`` (rank 0: step,
scheduler, sampler, data position, RNG, arguments, and the optimizer's non-tensor state: group options,
per-parameter step counts, which tensors each parameter has, and whether each is placed as its parameter,
"shard0", or replicated, "replicate").

Loading reads DCP's metadata for the saved sizes and dtypes, allocates each optimizer tensor placed as saved
on the current mesh, and lets DCP fill it: the world size and the mesh may differ from the ones that saved
(DCP reshards: a data-parallel run resumes under --fsdp and back), and loading equals saving bit for bit on
the same world size.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.tensor import DTensor
from torch.distributed.tensor import empty as dtensor_empty

from optim.projector import build_projector
from optim.sharded import replicated
from training.checkpoint import CheckpointError, make_durable, publish, read_trainer_state, rng_state, set_rng_state
from training.dcp_reader import SafeReader, read_metadata


def optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The optimizer's tensors keyed `<param name>/<key>[/<subkey>]` and the rest of its state (plain)."""
    names = {p: name for name, p in model.named_parameters()}
    tensors, layout, steps = {}, {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            name = names[p]
            flat = {}
            for key, value in state.items():
                if isinstance(value, dict):
                    flat.update({f"{key}/{sub}": v for sub, v in value.items()})
                else:
                    flat[key] = value
            for key, value in flat.items():
                if isinstance(value, DTensor):
                    tensors[f"{name}/{key}"] = value
                    layout[f"{name}/{key}"] = "shard0" if value.placements == p.placements else "replicate"
                elif isinstance(value, torch.Tensor):
                    raise TypeError(f"optimizer state {name}/{key} is not sharded (a plain tensor under --fsdp)")
                else:
                    steps[f"{name}/{key}"] = value
    groups = [{k: (v.spec() if k == "projector" and v is not None else v) for k, v in g.items() if k != "params"}
              for g in optimizer.param_groups]
    return tensors, {"layout": layout, "scalars": steps, "param_groups": groups}


def save_sharded_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            trainer_state: dict, keep: int = 2) -> Path:
    """Every rank calls this; ``run_dir/step-NNNNNN`` appears complete or not at all."""
    rank = dist.get_rank()
    final, staging = run_dir / f"step-{step:06d}", run_dir / f".tmp-step-{step:06d}"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    dist.barrier()
    tensors, optim_meta = optimizer_tensors(model, optimizer)
    dcp.save({"model": get_model_state_dict(model), "optim": tensors}, checkpoint_id=staging / "shards")
    dist.barrier()
    if rank == 0:
        torch.save({**trainer_state, "rng": rng_state(), "optimizer": optim_meta}, staging / "trainer.pt")
        make_durable(staging)
        publish(staging, final, keep)
    dist.barrier()
    return final


def load_sharded_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore a sharded model and its optimizer in place from a DCP checkpoint written with any world size;
    returns the trainer state (RNG already restored)."""
    if not (path / "shards" / ".metadata").is_file() or not (path / "trainer.pt").is_file():
        raise CheckpointError(f"{path}: not a complete --fsdp checkpoint (shards/.metadata and trainer.pt); "
                              "a checkpoint written without --fsdp resumes without --fsdp")
    trainer_state = read_trainer_state(path)
    meta = trainer_state.pop("optimizer", None)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / 'trainer.pt'}: has no optimizer layout; not written by an --fsdp run")
    saved = read_metadata(path / "shards" / ".metadata").state_dict_metadata  # never plain pickle
    params = dict(model.named_parameters())
    template = {}
    for key, placement in meta["layout"].items():
        name = key.split("/", 1)[0]
        if name not in params:
            raise CheckpointError(f"{path}: optimizer state for {name}, which this model does not have")
        info = saved.get(f"optim.{key}")
        if not isinstance(info, TensorStorageMetadata):
            raise CheckpointError(f"{path / 'shards'}: holds no tensor optim.{key}, which trainer.pt lists")
        param = params[name]
        placements = param.placements if placement == "shard0" else replicated(param.device_mesh.ndim)
        template[key] = dtensor_empty(*info.size, dtype=info.properties.dtype, device_mesh=param.device_mesh,
                                      placements=placements)
    model_state = get_model_state_dict(model)
    dcp.load({"model": model_state, "optim": template}, storage_reader=SafeReader(path / "shards"))
    set_model_state_dict(model, model_state)

    optimizer.state.clear()
    for key, value in [*template.items(), *meta["scalars"].items()]:
        name, rest = key.split("/", 1)
        state = optimizer.state[params[name]]
        if "/" in rest:
            outer, inner = rest.split("/", 1)
            state.setdefault(outer, {})[inner] = value
        else:
            state[rest] = value
    if len(meta["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"{path}: has {len(meta['param_groups'])} optimizer groups, this run "
                              f"{len(optimizer.param_groups)}")
    for group, saved_group in zip(optimizer.param_groups, meta["param_groups"]):
        spec = saved_group.get("projector")
        group.update({**saved_group, "projector": build_projector(**spec) if spec else None})
    set_rng_state(trainer_state["rng"])
    return trainer_state
