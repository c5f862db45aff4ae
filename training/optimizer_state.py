"""The optimizer's state as a checkpoint holds it: tensors keyed by parameter name, the same for one process and
for many, so that a checkpoint resumes on any number of ranks (DCP reshards the tensors).

`optimizer_tensors` flattens `optimizer.state` into ``<param name>/<key>[/<subkey>]`` -> tensor (plain, or a
DTensor under FSDP) and a plain remainder for trainer.pt: group options (projectors as their `spec()`),
per-parameter step counts, and each tensor's layout over ranks: "shard0" (placed as its parameter: its rows
follow the parameter's rows) or "replicate" (whole on every rank). A DTensor's layout is read from its
placements. A plain tensor's layout is the one the sharded run gives it: projector state as the projector
declares it (`state_specs`: "rows" -> "shard0"); moments as their parameter when the group has no projector;
a projected gradient R keeps G's rows only when the projection never contracts over them, i.e. when no state
tensor is declared "rows" (a rows-placed basis is what a left projection u^T G needs) and R has G's row count;
otherwise R is a sum over ranks, replicated (optim/sharded.py). A wrong layout could only cost memory: DTensor
redistributes mismatched operands, the values stay the same.

`optimizer_template` allocates every saved tensor, as the current run places it (plain in one process), with
the saved size and dtype (DCP's metadata); DCP fills it; `restore_optimizer` puts it into `optimizer.state`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.tensor import DTensor
from torch.distributed.tensor import empty as dtensor_empty

from optim.projector import ROWS, build_projector
from optim.sharded import replicated
from training.dcp_reader import CheckpointError

ROWS_LAYOUT, REPLICATED_LAYOUT = "shard0", "replicate"


def optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The optimizer's tensors keyed `<param name>/<key>[/<subkey>]` and the rest of its state (plain)."""
    names = {p: name for name, p in model.named_parameters()}
    tensors, layout, steps = {}, {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            flat = {}
            for key, value in state.items():
                if isinstance(value, dict):
                    flat.update({f"{key}/{sub}": v for sub, v in value.items()})
                else:
                    flat[key] = value
            for key, value in flat.items():
                name = f"{names[p]}/{key}"
                if isinstance(value, torch.Tensor):
                    tensors[name], layout[name] = value, _layout(p, key, value, group["projector"])
                else:
                    steps[name] = value
    groups = [{k: (v.spec() if k == "projector" and v is not None else v) for k, v in g.items() if k != "params"}
              for g in optimizer.param_groups]
    members = [[names[p] for p in g["params"]] for g in optimizer.param_groups]
    return tensors, {"layout": layout, "scalars": steps, "param_groups": groups, "group_params": members}


def _layout(p: torch.Tensor, key: str, value: torch.Tensor, projector) -> str:
    if isinstance(value, DTensor):
        return ROWS_LAYOUT if value.placements == p.placements else REPLICATED_LAYOUT
    if projector is None:
        return ROWS_LAYOUT
    specs = projector.state_specs(tuple(p.shape))
    if key.startswith("projection/"):
        return ROWS_LAYOUT if specs[key.split("/", 1)[1]].placement == ROWS else REPLICATED_LAYOUT
    contracts_rows = any(spec.placement == ROWS for spec in specs.values())
    keeps_rows = not contracts_rows and value.dim() == p.dim() and value.shape[0] == p.shape[0]
    return ROWS_LAYOUT if keeps_rows else REPLICATED_LAYOUT


def optimizer_template(model: nn.Module, meta: dict, saved: dict, where: Path) -> dict[str, torch.Tensor]:
    """An empty tensor for every optimizer tensor the checkpoint lists (`meta`: trainer.pt's "optimizer";
    `saved`: DCP's state_dict_metadata), placed as this run's parameter (a DTensor under FSDP) wants it."""
    params = dict(model.named_parameters())
    template = {}
    for key, placement in meta["layout"].items():
        name = key.split("/", 1)[0]
        if name not in params:
            raise CheckpointError(f"{where}: optimizer state for {name}, which this model does not have")
        info = saved.get(f"optim.{key}")
        if not isinstance(info, TensorStorageMetadata):
            raise CheckpointError(f"{where / 'shards'}: holds no tensor optim.{key}, which trainer.pt lists")
        param, dtype = params[name], info.properties.dtype
        if isinstance(param, DTensor):
            placements = param.placements if placement == ROWS_LAYOUT else replicated(param.device_mesh.ndim)
            template[key] = dtensor_empty(*info.size, dtype=dtype, device_mesh=param.device_mesh, placements=placements)
        else:
            template[key] = torch.empty(*info.size, dtype=dtype, device=param.device)
    return template


def restore_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict, meta: dict,
                      where: Path) -> None:
    """Replace `optimizer`'s state by the loaded `tensors` and trainer.pt's remainder `meta`."""
    if len(meta["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"{where / 'trainer.pt'}: does not fit this optimizer: {len(meta['param_groups'])} "
                              f"groups, this run has {len(optimizer.param_groups)} (saved for another method or model?)")
    names = {p: name for name, p in model.named_parameters()}
    mine = [[names[p] for p in g["params"]] for g in optimizer.param_groups]
    if meta.get("group_params", mine) != mine:
        raise CheckpointError(f"{where / 'trainer.pt'}: does not fit this optimizer: its groups hold other "
                              "parameters (saved for another method or model?)")
    params = dict(model.named_parameters())
    optimizer.state.clear()
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        name, rest = key.split("/", 1)
        if name not in params:
            raise CheckpointError(f"{where}: optimizer state for {name}, which this model does not have")
        state = optimizer.state[params[name]]
        if "/" in rest:
            outer, inner = rest.split("/", 1)
            state.setdefault(outer, {})[inner] = value
        else:
            state[rest] = value
    for group, saved_group in zip(optimizer.param_groups, meta["param_groups"]):
        spec = saved_group.get("projector")
        group.update({**saved_group, "projector": build_projector(**spec) if spec else None})
