"""Per-step metrics: a JSON-lines log and the memory readings beside it."""
from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max allocated since the last reset. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def current_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def cut_after_step(path: Path, step: int) -> None:
    """Drop the lines after the last complete one with ``step <= step`` (a resumed run rewrites them)."""
    keep = 0
    with open(path, "rb") as log:
        for line in log:
            try:
                record = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n") or record.get("step", 0) > step:
                break
            keep += len(line)
    os.truncate(path, keep)


class MetricsLog:
    """Appends one JSON object per line; the file survives a crash up to the last complete line.

    `resume_step`: continue a log whose run is resumed from that step, dropping what came after it.
    """

    def __init__(self, path: Path, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is not None and path.is_file():
                cut_after_step(path, resume_step)
            self.file = open(path, "a", buffering=1)

    def write(self, **record) -> None:
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.enabled:
            self.file.close()
