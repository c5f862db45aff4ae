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

DTensor's sharding propagation does exactly these products once the bases are DTensors with those
placements; `project` turns the partial sums it leaves into replicated tensors (the all-reduce).
Communication per refresh: one all-gather of G (m n elements); per step: nothing for "right", one
all-reduce of r n (left) or r^2 (full) elements. Memory per rank: the "right" moments are 1/world of the
unsharded ones; the "left" ones are replicated (r x n, small against G's shard for m >> r).
"""
from __future__ import annotations

from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor

from optim.projector import Projector, State


def make_projection(projector: Projector, grad: Tensor, seed: int) -> State:
    """`projector.make(grad, seed)`, for a row-sharded DTensor gradient too (see the module docstring)."""
    if not isinstance(grad, DTensor):
        return projector.make(grad, seed)
    state = projector.make(grad.full_tensor(), seed)
    mesh = grad.device_mesh
    placements = {"u": grad.placements, "vh": replicated(mesh.ndim)}
    return {key: distribute_tensor(value, mesh, placements[key], src_data_rank=None)
            if isinstance(value, Tensor) else value for key, value in state.items()}


def project(projector: Projector, state: State, grad: Tensor) -> Tensor:
    """`projector.project(state, grad)`, with partial sums over ranks reduced (replicated)."""
    low = projector.project(state, grad)
    if isinstance(low, DTensor) and any(p.is_partial() for p in low.placements):
        low = low.redistribute(placements=replicated(low.device_mesh.ndim))
    return low


def replicated(ndim: int) -> tuple[Replicate, ...]:
    """The placements of a tensor every rank holds whole, on a mesh of `ndim` dimensions."""
    return (Replicate(),) * ndim
