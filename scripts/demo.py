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
         "--eval-limit", str(args.eval_limit), "--max-steps", str(args.steps), "--batch-size", "4",
         "--seq-len", "128", "--gamma", "5", "--period", "10", "--rank", "128", "--lr", "1e-4",
         "--save-format", "hf", "--out", str(out / "train"), "--overwrite"])
    summarize(out, time.time() - started)


def summarize(out: Path, seconds: float) -> None:
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "heldout_loss" in r]
    steps = [r for r in records if "loss" in r]
    before, after = evals[0], evals[-1]
    print("\n== OwLore demo on SmolLM2-135M ==")
    print(f"wall time              {seconds / 60:.1f} min")
    print(f"peak memory (RSS)      {max(r['peak_memory'] for r in steps) / 2**30:.2f} GiB")
    print(f"train loss             {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f} over {len(steps)} steps")
    print(f"held-out loss          {before['heldout_loss']:.3f} -> {after['heldout_loss']:.3f}")
    for task in before.get("heldout_acc", {}):
        print(f"held-out acc {task:<10}{before['heldout_acc'][task]:.3f} -> {after['heldout_acc'][task]:.3f}")
    print(f"outputs                {out}/ (outlier_scores.json, outliers.png, train/metrics.jsonl, train/final-hf/)")


if __name__ == "__main__":
    main()
