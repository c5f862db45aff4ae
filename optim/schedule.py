"""Learning-rate multipliers for `torch.optim.lr_scheduler.LambdaLR` (step 0 is the first update).

linear: warmup ramp, then straight to 0 at `total` (the official OwLore run: linear, warmup 0).
cosine: warmup ramp, then half a cosine from 1 to 0.  constant: warmup ramp, then 1.
"""
from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("linear", "cosine", "constant")


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {SCHEDULES}")
    if total < 1 or not 0 <= warmup <= total:
        raise ValueError(f"need total >= 1 and 0 <= warmup <= total, got warmup={warmup}, total={total}")

    def multiplier(step: int) -> float:
        if step < warmup:
            return step / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier
