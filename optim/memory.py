"""Optimizer-state memory from shapes alone, and the bytes an optimizer really holds.

Per parameter of shape s: two Adam moments of the projected shape (s itself without a projector), plus
the projector's own state, whose tensors, shapes and dtypes the projector declares (`Projector.state_specs`). For
GaLore's SVD projector at r' = min(r, m, n) on an m x n weight:
  side "left":  P m r' + moments 2 r' n;   side "right": P r' n + moments 2 m r';
  side "full":  P (m + n) r' + moments 2 r'^2;   against plain Adam's 2 m n.
The step counter is a Python int and is not counted.
"""
from __future__ import annotations

import math

import torch

from optim.projector import Projector


def state_bytes(
    shape: tuple[int, ...],
    projector: Projector | None = None,
    dtype: torch.dtype = torch.float32,
    moments_dtype: torch.dtype | None = None,
) -> int:
    """Bytes of GaLoreAdamW state for one parameter of `shape` and `dtype` (projector None: plain Adam);
    `moments_dtype` torch.float32 for an optimizer with fp32_moments=True."""
    moments = math.prod(shape if projector is None else projector.low_shape(shape))
    own = 0 if projector is None else sum(spec.nbytes(dtype) for spec in projector.state_specs(shape).values())
    return own + 2 * moments * (moments_dtype or dtype).itemsize


def measured_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in `optimizer.state`, nested dicts included (storage shared between
    entries counted once)."""
    seen, total = set(), 0
    pending = list(optimizer.state.values())
    while pending:
        for value in pending.pop().values():
            if isinstance(value, dict):
                pending.append(value)
            elif isinstance(value, torch.Tensor):
                key = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
                if key not in seen:
                    seen.add(key)
                    total += value.untyped_storage().nbytes()
    return total
