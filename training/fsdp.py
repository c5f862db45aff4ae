"""Training over several ranks with torch FSDP2 (`fully_shard`) over every decoder block and the root.

`--fsdp`: fully sharded over a 1-D mesh of every rank. Plain data parallelism (torchrun without `--fsdp`):
the same FSDP2 over a 2-D HSDP mesh (ranks x 1), replicate x shard, i.e. nothing sharded: every rank holds
every parameter whole, and FSDP2 all-reduces each block's gradients as soon as its backward is done (one
all-reduce per block, overlapping the backward of the blocks below). torch's DDP cannot serve here: its
reducer fixes the set of parameters with gradients at construction, and layer sampling changes that set
every period (find_unused_parameters would search the graph every step, and still reduce frozen blocks).

Under `--fsdp` each rank keeps a row shard (dim 0, `Shard(0)`) of every parameter, gradient and moment; a block's full
weights exist only between its all-gather and its reshard in forward and backward. Parameters stay in the
training dtype (`--dtype`); gradients are reduce-scattered in `--reduce-dtype` (default: the training dtype).
The reduction is a sum, not FSDP's default mean: the loss is already divided by the global number of target
tokens (train.py), so summing gives the gradient of the global batch, as plain data parallelism does.

Layer sampling needs nothing special: a block whose parameters have requires_grad False produces no
gradient, so FSDP allocates none and skips its reduce-scatter; FSDP copies requires_grad from the sharded
to the unsharded parameter at every all-gather, so switching blocks every period takes effect at once.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def shard_model(model: nn.Module, groups: list[dict], device: torch.device, world_size: int,
                reduce_dtype: torch.dtype | None = None, mesh: DeviceMesh | None = None,
                replicate: bool = False, from_rank0: bool = False) -> list[dict]:
    """Shard `model` (a Transformer with `.layers`) in place over a 1-D mesh of `world_size` ranks on
    `device`'s type (`replicate`: over the 2-D mesh `world_size` x 1, whole on every rank); every block is
    its own FSDP unit (one all-gather / reduce-scatter or all-reduce each), the root holds the embeddings,
    final norm and head. Parameters move to `device`. FSDP replaces every parameter by a DTensor: returns
    the optimizer `groups` with each parameter replaced by its successor. `mesh`: one made beforehand.
    `from_rank0`: only rank 0's model holds weights (the others are on the meta device); the model is sharded
    on the meta device, and torch's `set_model_state_dict` broadcasts rank 0's tensors one at a time, each
    rank keeping its part, so no rank but 0 ever holds a whole tensor in host memory."""
    names = {p: name for name, p in model.named_parameters()}
    mesh = mesh or data_parallel_mesh(device.type, world_size, replicate)
    full = None
    if from_rank0:
        full = model.state_dict() if dist.get_rank() == 0 else {}  # (keeps rank 0's tensors alive)
        model.to("meta")  # (new parameter objects: a tie must be made again)
        if hasattr(model, "tie_weights"):
            model.tie_weights()
    policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=reduce_dtype)
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum over ranks (see the module docstring)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    if from_rank0:
        model.to_empty(device=device)
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    if hasattr(model, "rebuild_buffers"):
        model.rebuild_buffers(device)
    sharded = dict(model.named_parameters())
    return [{**group, "params": [sharded[names[p]] for p in group["params"]]} for group in groups]


def data_parallel_mesh(device_type: str, world_size: int, replicate: bool = False) -> DeviceMesh:
    """The mesh `shard_model` uses: (world_size,) to shard, (world_size, 1) (replicate, shard) to replicate."""
    if replicate:
        return init_device_mesh(device_type, (world_size, 1), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device_type, (world_size,))


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip (False) or do (True) the reduce-scatter after backward: gradient accumulation reduces only once,
    after the last micro-batch. A no-op for an unsharded model."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every rank for a DTensor (a collective: every rank must call it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t
