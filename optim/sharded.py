"""GaLore on row-sharded gradients (FSDP2 DTensors: `Shard(0)` over a 1-D mesh, or HSDP's
`(Replicate(), Shard(0))` over a 2-D one, which plain data parallelism uses with a shard dimension of size 1).

Each rank holds rows G_i of a gradient G (m x n). With the projector's bases u (m x r) and vh (r x n):

  refresh   G is gathered (`full_tensor`, one matrix at a time, only matrices with a gradient, i.e. the active
            blocks', only at refresh steps) and every rank runs the same SVD / seeded draw on the same bits,
            so every rank holds the same bases, equal to the 1-process ones up to the rounding of the
            gradient reduction. u is then kept as a row shard (placed as G: the rows of G this rank owns), vh
            replicated on every mesh dimension.
  right     R = G vh^T: R_i = G_i vh^T is local; R (m x r) and the moments are row-sharded; back R_i vh local.
  left      R = u^T G = sum_i u_i^T G_i: one all-reduce of r x n; R and the moments replicated (r x n);
            back u_i R local.
  full      R = u^T G vh^T: one all-reduce of r x r; back u_i R vh local.

The placements come from the projector's declaration (`state_specs`: "rows" -> G's placements, "replicated"
-> whole on every rank); this module names no state key. DTensor's sharding propagation does the products
once the state tensors are DTensors with those placements; a plain tensor a projector makes inside its
methods (a sketch regenerated from a seed) counts as replicated (`implicit_replication`), so it must be the
same on every rank. `project` turns the partial sums it leaves into replicated tensors (the all-reduce).
Communication per refresh: one all-gather of G (m n elements); per step: nothing for "right", one
all-reduce of r n (left) or r^2 (full) elements. Memory per rank: the "right" moments are 1/world of the
unsharded ones; the "left" ones are replicated (r x n, small against G's shard for m >> r).
"""
from __future__ import annotations

from contextlib import nullcontext

from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor
from torch.distributed.tensor.experimental import implicit_replication

from optim.projector import ROWS, Projector, State, check_state


def make_projection(projector: Projector, grad: Tensor, seed: int) -> State:
    """`projector.make(grad, seed)`, checked against its declaration; for a row-sharded DTensor gradient
    made from the gathered gradient and placed as declared (see the module docstring)."""
    full = grad.full_tensor() if isinstance(grad, DTensor) else grad
    state = projector.make(full, seed)
    check_state(projector, state, full)
    if not isinstance(grad, DTensor):
        return state
    specs, mesh = projector.state_specs(tuple(grad.shape)), grad.device_mesh
    return {key: distribute_tensor(value, mesh, _placements(specs[key].placement, grad), src_data_rank=None)
            if isinstance(value, Tensor) else value for key, value in state.items()}


def project(projector: Projector, state: State, grad: Tensor) -> Tensor:
    """`projector.project(state, grad)`, with partial sums over ranks reduced (replicated)."""
    with _local_as_replicated(grad):
        return _reduced(projector.project(state, grad))


def project_back(projector: Projector, state: State, low: Tensor) -> Tensor:
    with _local_as_replicated(low):
        return projector.project_back(state, low)


def full_update(projector: Projector, state: State, grad: Tensor | None, low_grad: Tensor, low_update: Tensor) -> Tensor:
    """`projector.full_update(...)`; state tensors it made or changed are put back on their declared placements."""
    with _local_as_replicated(low_grad):
        update = projector.full_update(state, grad, low_grad, low_update)
    if isinstance(update, DTensor):
        specs = projector.state_specs(tuple(update.shape))
        for key, value in state.items():
            if isinstance(value, DTensor) and value.placements != (wanted := _placements(specs[key].placement, update)):
                state[key] = value.redistribute(placements=wanted)
    return update


def replicated(ndim: int) -> tuple[Replicate, ...]:
    """The placements of a tensor every rank holds whole, on a mesh of `ndim` dimensions."""
    return (Replicate(),) * ndim


def _placements(placement: str, grad: DTensor) -> tuple:
    return grad.placements if placement == ROWS else replicated(grad.device_mesh.ndim)


def _reduced(low: Tensor) -> Tensor:
    if isinstance(low, DTensor) and any(p.is_partial() for p in low.placements):
        return low.redistribute(placements=replicated(low.device_mesh.ndim))
    return low


def _local_as_replicated(t: Tensor):
    return implicit_replication() if isinstance(t, DTensor) else nullcontext()
