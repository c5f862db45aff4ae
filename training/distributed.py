"""The process group under torchrun, and sums of scalars over its ranks. Every rank draws the same blocks
(the sampler is a pure function of (seed, period)); FSDP2 (training/fsdp.py) sums the gradients, so GaLore
projectors, computed from identical gradients, stay identical across ranks."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from common.errors import UserError

T = TypeVar("T")

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
        if group:
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


def together(fn: Callable[[], T], world: World) -> T:
    """`fn()` on every rank; when it raises on any rank, it raises on every rank (its own error there, the
    failing rank's message elsewhere), so no rank goes on to a collective that another will never reach."""
    if world.size == 1:
        return fn()
    result, error = None, None
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 (raised below, on every rank)
        error = err
    messages: list = [None] * world.size
    dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failed:  # every rank has the messages before any rank raises and closes its connections
        dist.barrier()
    if error is not None:
        raise error
    if failed:
        rank, message = failed[0]
        raise UserError(f"rank {rank} stopped: {message}")
    return result


def on_main(fn: Callable[[], T], world: World) -> T:
    """`fn()` on rank 0 only, its result (it must pickle) on every rank; an error as in `together`."""
    result = together(lambda: fn() if world.is_main else None, world)
    if world.size > 1:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result
