"""The memory report of train.py's start, kept between starts.

The simulation (training/memory.py) is deterministic: the same model shape, step flags, dtype, world size,
micro-batch cap, torch version and code give the same report. It is stored as JSON under the cache folder
(`$OWLORE_CACHE/memory-reports/`), named by a hash of all of those, so a repeated start reads it instead
of simulating again. A file that cannot be read as a report is simulated again and replaced.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from common.assets import cache_dir
from common.code_version import code_version
from common.io import write_json
from model.config import ModelConfig
from training.memory_report import MemoryReport, Peak
from training.step import StepConfig


def report_key(config: ModelConfig, step: StepConfig, dtype: torch.dtype, world_size: int,
               max_micro_batches: int | None) -> str:
    inputs = dict(config=asdict(config), step=asdict(step), dtype=str(dtype), world_size=world_size,
                  max_micro_batches=max_micro_batches, torch=torch.__version__, code=code_version())
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:24]


def read_report(path: Path) -> MemoryReport | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return MemoryReport(Peak(**saved["peak"]), {k: Peak(**v) for k, v in saved["phases"].items()},
                            float(saved["seconds"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def memory_report(config: ModelConfig, step: StepConfig, dtype: torch.dtype, world_size: int = 1,
                  max_micro_batches: int | None = None, folder: Path | None = None) -> tuple[MemoryReport, bool]:
    """(the report of `simulate_memory`, whether it came from the cache); `folder` defaults to the cache's."""
    started = time.perf_counter()
    path = (folder or cache_dir() / "memory-reports") / f"{report_key(config, step, dtype, world_size, max_micro_batches)}.json"
    if (report := read_report(path)) is not None:
        report.seconds = time.perf_counter() - started
        return report, True
    from training.memory import simulate_memory  # (its fake-tensor stack costs seconds to import: only on a miss)

    report = simulate_memory(config, step, dtype, world_size=world_size, max_micro_batches=max_micro_batches)
    try:
        write_json(path, report.as_dict())
    except OSError:  # a read-only or full cache folder costs the next start its time, nothing else
        pass
    return report, False
