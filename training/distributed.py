"""Data parallelism under torchrun: every rank holds the whole model, draws the same blocks (the
sampler is a pure function of (seed, period)) and sums its gradients with the others before the step,
so GaLore projectors, computed from identical gradients, stay identical across ranks."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

BUCKET_BYTES = 25 * 2**20


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device_type: str, group: bool = False) -> World:
    """Join the process group torchrun describes in the environment; a single process otherwise (with
    `group`, a one-process group of its own, so sharded code paths run unchanged on one process)."""
    backend = "nccl" if device_type == "cuda" else "gloo"
    if dist.is_initialized():  # a caller (a test harness running several trainings) set it up already
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        if group and not dist.is_initialized():
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        return World()
    dist.init_process_group(backend=backend)
    world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world


def close_world(world: World) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_scalar(value: float | int, world: World, device: torch.device) -> float:
    if world.size == 1:
        return value
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def sum_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """All-reduce (sum) the gradients of `params` in flat buckets of about 25 MiB each. Sharded (DTensor)
    gradients are skipped: FSDP has reduce-scattered them already."""
    if world.size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        if bucket and (size + g.numel() * g.element_size() > BUCKET_BYTES or g.dtype != bucket[0].dtype):
            _reduce_bucket(bucket)
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel() * g.element_size()
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
