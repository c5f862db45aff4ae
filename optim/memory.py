"""Optimizer-state memory from shapes alone (docs/method.md, "GaLore"), and the bytes an optimizer really holds.

Adam on an m x n weight: moments 2 m n. GaLore at r' = min(r, m, n):
  side "left":  P m r' + moments 2 r' n;   side "right": P r' n + moments 2 m r';
  side "full":  P (m + n) r' + moments 2 r'^2.
The step counter is a Python int and is not counted.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from optim.lora import lora_param_count
from optim.projector import projection_side


def state_bytes(
    shape: tuple[int, ...], rank: int | None = None, proj_type: str = "std", dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of GaLoreAdamW state for one parameter of `shape` (rank None: plain Adam)."""
    element = torch.empty((), dtype=dtype).element_size()
    if rank is None:
        return 2 * math.prod(shape) * element
    m, n = shape
    r = min(rank, m, n)
    side = projection_side(shape, proj_type)
    if side == "left":
        count = m * r + 2 * r * n
    elif side == "right":
        count = r * n + 2 * m * r
    else:
        count = (m + n) * r + 2 * r * r
    return count * element


def state_bytes_table(
    entries: Iterable[tuple[str, tuple[int, ...], dict]], dtype: torch.dtype = torch.float32
) -> tuple[dict[str, int], int]:
    """Per-parameter and total state bytes for (name, shape, group options) entries.

    Options: `rank` and `proj_type` as in a GaLoreAdamW group; `{"lora_rank": r}` instead counts Adam on a
    rank-r LoRA adapter of that weight; `{"frozen": True}` counts nothing.
    """
    per_param = {}
    for name, shape, options in entries:
        if options.get("frozen"):
            per_param[name] = 0
        elif options.get("lora_rank") is not None:
            element = torch.empty((), dtype=dtype).element_size()
            per_param[name] = 2 * lora_param_count(shape, options["lora_rank"]) * element
        else:
            per_param[name] = state_bytes(shape, options.get("rank"), options.get("proj_type", "std"), dtype)
    return per_param, sum(per_param.values())


def measured_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in `optimizer.state` (storage shared between entries counted once)."""
    seen, total = set(), 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                key = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
                if key not in seen:
                    seen.add(key)
                    total += value.untyped_storage().nbytes()
    return total
