"""Per-step metrics: a JSON-lines log and the memory readings beside it."""
from __future__ import annotations

import json
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


class MetricsLog:
    """Appends one JSON object per line; the file survives a crash up to the last complete line."""

    def __init__(self, path: Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", buffering=1)

    def write(self, **record) -> None:
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.enabled:
            self.file.close()
