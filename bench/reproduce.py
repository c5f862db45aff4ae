"""Miniature of the paper's commonsense table: every method fine-tunes the same model on the commonsense
set built from the real validation sets (data.commonsense, seeded held-out split) at matched steps and
tokens, over an lr sweep and seeds; held-out accuracy per task (eval.evaluate on exactly the held-out rows,
via train.py's --eval-data) and peak memory. Writes a markdown table (best lr per method, mean over seeds)
and a bar plot. Each run is its own subprocess so its peak memory is its own.

    python -m bench.reproduce --steps 20 --batch-size 4 --seq-len 128 --heldout 20    # CPU size
    python -m bench.reproduce --steps 1000 --batch-size 16 --seq-len 512 --heldout 200 \
        --lrs 1e-5,3e-5,1e-4 --seeds 1,2,3 --dtype bf16                               # GPU size
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import cli
from bench.step_compare import run_method
from data.commonsense import TASKS, build_commonsense
from training.memory import GIB
from training.methods import METHODS

LORA_LR_FACTOR = 10.0  # adapters start from zero and need a larger step, as in the paper's LoRA runs


def run_one(a, data: Path, heldout: Path, out: Path, method: str, lr: float, seed: int) -> dict:
    args = ["--model", a.model, "--data", str(data), "--eval-data", str(heldout), "--out", str(out),
            "--method", method, "--lr", str(lr * (LORA_LR_FACTOR if method == "lora" else 1.0)), "--seed", str(seed),
            "--max-steps", str(a.steps), "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len),
            "--gamma", str(a.gamma), "--period", str(a.period), "--rank", str(a.rank), "--dtype", a.dtype,
            "--save-format", "none", "--svd", "randomized", "--calib-windows", "4", "--calib-seq-len", "128",
            "--warmup", "0", "--schedule", "constant", "--overwrite"]
    run_method(args, a.device)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "heldout_acc" in r]
    return dict(method=method, lr=lr, seed=seed, acc=evals[-1]["heldout_acc"], before=evals[0]["heldout_acc"],
                peak=max(r["peak_memory"] for r in records if "peak_memory" in r))


def table(results: list[dict], tasks: list[str]) -> tuple[str, dict]:
    best = {}
    for method in dict.fromkeys(r["method"] for r in results):
        by_lr = {}
        for r in results:
            if r["method"] == method:
                by_lr.setdefault(r["lr"], []).append(r)
        runs = max(by_lr.values(), key=lambda rs: statistics.mean(statistics.mean(x["acc"].values()) for x in rs))
        best[method] = dict(lr=runs[0]["lr"], peak=max(x["peak"] for x in runs),
                            acc={t: statistics.mean(x["acc"][t] for x in runs) for t in tasks})
    lines = ["| method | lr | " + " | ".join(tasks) + " | avg | peak GiB |", "|---" * (len(tasks) + 4) + "|"]
    before = [100 * results[0]["before"][t] for t in tasks]  # every run starts from the same weights
    lines.append("| pre-trained (no fine-tuning) | - | " + " | ".join(f"{x:.1f}" for x in before)
                 + f" | {statistics.mean(before):.1f} | - |")
    for method, b in best.items():
        accs = [100 * b["acc"][t] for t in tasks]
        lines.append(f"| {method} | {b['lr']:g} | " + " | ".join(f"{x:.1f}" for x in accs)
                     + f" | {statistics.mean(accs):.1f} | {b['peak'] / GIB:.2f} |")
    return "\n".join(lines), best


def plot(best: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    methods = list(best)
    ax.bar(methods, [100 * statistics.mean(b["acc"].values()) for b in best.values()])
    ax.set_ylabel("held-out accuracy (%)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", type=lambda v: v.split(","), default=list(METHODS))
    p.add_argument("--tasks", type=lambda v: v.split(","), default=list(TASKS))
    p.add_argument("--lrs", type=lambda v: [float(x) for x in v.split(",")], default=[3e-5])
    p.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[1])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--heldout", type=int, default=20, help="held-out rows per task")
    p.add_argument("--train-per-task", type=int, default=200)
    p.add_argument("--gamma", type=int, default=5)
    p.add_argument("--period", type=int, default=5)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/reproduce")
    a = p.parse_args(argv)
    unknown = set(a.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    out = Path(a.out)
    data, heldout = build_commonsense(out / "data", a.heldout, a.train_per_task, seed=0, tasks=tuple(a.tasks))
    results = []
    with tempfile.TemporaryDirectory() as work:
        for method in a.methods:
            for lr in a.lrs:
                for seed in a.seeds:
                    results.append(run_one(a, data, heldout, Path(work) / f"{method}-{lr}-{seed}", method, lr, seed))
                    print(json.dumps(results[-1]), flush=True)
    text, best = table(results, a.tasks)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(text + "\n")
    plot(best, out / "accuracy.png")
    print(text)
    return best


if __name__ == "__main__":
    cli.run(main)
