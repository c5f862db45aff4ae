"""bench/gpu_check.sh in its --cpu-smoke mode: the same code path a lent GPU runs, on tiny shapes."""
import pytest
import json
import os
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_writes_every_part(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_ARGS": "--methods owlore"}
    done = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["failures"] == []
    assert [(r["method"], r["preset"]) for r in report["steps"]] == [("owlore", "paper"), ("owlore", "lean")]
    for row in report["steps"]:
        assert abs(row["simulated_error"]) < 0.05 and row["median_step_s"] > 0
    train = report["train"]
    assert train["loss_falls"] and train["resume_exact"] and train["exported_params"] > 0
    assert 0.0 <= report["eval"]["results"]["arc_easy"]["acc"] <= 1.0
    fsdp = report["fsdp"]  # the 1-device --fsdp run under torchrun against the plain one
    assert fsdp["losses_match"] and fsdp["loss_max_rel_diff"] <= 1e-5
    assert fsdp["plain"]["median_step_s"] > 0 and fsdp["fsdp"]["median_step_s"] > 0


def test_gpu_check_refuses_to_run_without_a_gpu_unless_smoke(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path / "x.json")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "error: no CUDA device" in done.stderr
