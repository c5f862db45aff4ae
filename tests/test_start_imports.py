"""What a start imports: train.py, and a model built on the meta device (every load does), stay clear of the
modules that cost seconds and that only some runs need (BENCHMARKS.md, "Third round": start-up)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch._dynamo", "torch._inductor", "matplotlib", "torch.distributed._tools.mem_tracker")
PROBE = f"""
import sys, torch
import train
from model import Transformer, get_config
with torch.device("meta"):
    Transformer(get_config("tiny"))
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


@pytest.mark.slow
def test_importing_train_and_building_on_meta_imports_no_compiler_no_plotting_no_simulation():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"imported at start: {done.stdout.strip()}"
