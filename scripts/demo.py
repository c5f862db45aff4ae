"""The main job on the embedded default (SmolLM2-135M, real weights; real commonsense data):

1. build a commonsense training set and a held-out split from the real validation sets;
2. score every block's outlier ratio on calibration text, with HT-SR alpha and a plot;
3. fine-tune with OwLore for a few dozen steps, evaluating the held-out rows before and after.

Each step is a command a user can run alone; this script prints and runs them, then sums up.
Sized for about 10 minutes on 2 CPU cores; pass `--steps`/`--eval-limit` to change it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the fine-tuning's shape: train.py runs it, and the memory of one of its steps is simulated with it
STEP_FLAGS = ["--batch-size", "4", "--seq-len", "128", "--gamma", "5", "--period", "10", "--rank", "128"]


def run(command: list[str]) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-limit", type=int, default=10, help="held-out rows scored per task")
    args = parser.parse_args()
    out = ROOT / args.out
    data, scores = out / "data", out / "outlier_scores.json"
    py = sys.executable
    started = time.time()

    run([py, "-m", "data.commonsense", "--out", str(data), "--heldout-per-task", "25", "--seed", "0"])
    run([py, "-m", "sampling", "--model", "smollm2-135m", "--n-windows", "8", "--seq-len", "256",
         "--M", "13", "--gamma", "5", "--htsr", "--out", str(scores), "--plot", str(out / "outliers.png")])
    run([py, "train.py", "--model", "smollm2-135m", "--method", "owlore", "--scores", str(scores),
         "--data", str(data / "commonsense_train.json"), "--eval-data", str(data / "commonsense_heldout.json"),
         "--eval-limit", str(args.eval_limit), "--max-steps", str(args.steps), *STEP_FLAGS, "--lr", "1e-4",
         "--save-format", "hf", "--out", str(out / "train"), "--overwrite"])
    summarize(out, time.time() - started)


METHOD_NAMES = {"owlore": "OwLore", "full": "full fine-tuning"}


def simulated_peaks(methods: tuple[str, ...] = ("owlore", "full")) -> dict[str, int]:
    """Peak bytes of one training step of each method on SmolLM2-135M (fp32, STEP_FLAGS), simulated on fake
    tensors (training/memory.py): no real memory is used."""
    import torch

    from bench.memory import train_args
    from model import get_config
    from training.memory import simulate_memory

    config = get_config("smollm2-135m")
    return {m: simulate_memory(config, train_args(["--method", m, *STEP_FLAGS]), torch.float32).peak.total
            for m in methods}


def summary_lines(records: list[dict], seconds: float, peaks: dict[str, int]) -> list[str]:
    """What the run did, in aligned columns: held-out answer NLL and accuracy before and after, the training
    loss, and OwLore's simulated step memory beside full fine-tuning's."""
    evals = [r for r in records if "heldout_loss" in r]
    steps = [r for r in records if "loss" in r]
    before, after = evals[0], evals[-1]
    rows = [("held-out answer NLL", before["heldout_loss"], after["heldout_loss"])]
    rows += [(f"held-out acc {task}", before["heldout_acc"][task], after["heldout_acc"][task])
             for task in before.get("heldout_acc", {})]
    rows.append((f"training loss (steps 1 and {len(steps)})", steps[0]["loss"], steps[-1]["loss"]))
    width = max(len(name) for name, _, _ in rows) + 2
    lines = [f"{'':<{width}}{'before':>8}{'after':>8}"]
    lines += [f"{name:<{width}}{a:8.3f}{b:8.3f}" for name, a, b in rows]
    lines.append("")
    lines.append(f"{'peak memory of one step, simulated (fp32, micro-batch 4x128)':<{width}}")
    lines += [f"  {METHOD_NAMES.get(method, method):<{width - 2}}{peak / 2**30:8.2f} GiB" for method, peak in peaks.items()]
    lines.append(f"{'peak memory measured (RSS)':<{width}}{max(r['peak_memory'] for r in steps) / 2**30:8.2f} GiB")
    lines.append(f"{'wall time':<{width}}{seconds / 60:8.1f} min")
    return lines


def summarize(out: Path, seconds: float) -> None:
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    print("\n== OwLore demo on SmolLM2-135M ==")
    print("\n".join(summary_lines(records, seconds, simulated_peaks())))
    print(f"outputs: {out}/ (outlier_scores.json, outliers.png, train/metrics.jsonl, train/training_curves.png, "
          "train/final-hf/)")


if __name__ == "__main__":
    main()
