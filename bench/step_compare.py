"""Measured peak memory and median step time of every method on one model and batch, in one run, beside
`training.memory`'s simulation of the same flags. Each method trains in its own subprocess (`train.main` with --max-steps), so
the peak RSS (CPU) or max-allocated (CUDA) that train.py logs in metrics.jsonl is that method's alone.

The model is a random-initialised, scaled-down LLaMA shape saved as a Meta dir with the Mistral v1
tokenizer; the data is the commonsense set built from the real validation sets. On CPU the process RSS
includes the torch runtime: a subprocess that imports train.py and stops measures it, and it enters the
estimate as the `runtime` component. Projector refresh: OwLore redraws blocks at step `period`; that step's
extra time over the median, spread over a period of 50 steps, is the refresh share of training time.

    python -m bench.step_compare                               # CPU: 71M-param LLaMA shape, fp32, 2x128 tokens
    python -m bench.step_compare --dim 4096 --layers 32 --ffn 11008 --heads 32 --batch-size 16 --seq-len 512 \
        --gamma 5 --rank 128 --dtype bf16 --grad-ckpt      # GPU: the llama2-7b shape, random weights
    python -m bench.step_compare --tiny                        # seconds-long smoke run
    python -m bench.step_compare --compile --methods full,owlore   # each method eager and compiled (inductor)
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import cli
from common.assets import asset_path
from data.commonsense import build_commonsense
from model import Transformer, get_config, save_model
from training.args import parse_args, step_config
from training.memory import simulate_memory
from training.memory_report import GIB
from training.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BASELINE = """
import json, sys, torch, train
from data import build_dataset, load_records
from model.tokenizer import load_tokenizer
from training.metrics import peak_memory_bytes
tokenizer = load_tokenizer(sys.argv[1])
build_dataset(load_records(sys.argv[2]), tokenizer, int(sys.argv[3]), pack=True, mask_prompt=False)
print(json.dumps(peak_memory_bytes(torch.device("cpu"))))
"""


def build_model_dir(out: Path, dim: int, layers: int, heads: int, ffn: int, seq_len: int) -> Path:
    torch.manual_seed(0)
    config = get_config("llama2-7b", dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=heads, ffn_dim=ffn,
                        max_seq_len=max(seq_len, 128))
    save_model(Transformer(config), out, format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    return out


def train_args(model_dir: Path, data: Path, out: Path, method: str, a: argparse.Namespace, lean: bool,
               compiled: bool = False) -> list[str]:
    args = ["--compile" if compiled else "--no-compile","--model", str(model_dir), "--data", str(data), "--out", str(out), "--method", method,
            "--max-steps", str(a.steps), "--period", str(a.period), "--gamma", str(a.gamma), "--rank", str(a.rank),
            "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len), "--dtype", a.dtype,
            "--save-format", "none", "--svd", "randomized", "--calib-windows", "2", "--calib-seq-len", "64",
            "--train-on-prompt", "--schedule", "constant", "--lr", "1e-5", "--overwrite",
            "--no-memory-report"]  # (estimate_for simulates the same step once, in this process)
    if method in ("lisa", "owlore", "owlore-fullrank"):
        args += ["--sampling", "uniform"]  # the draw's probabilities do not change memory or time
    if lean:
        args.append("--lean")
    elif a.grad_ckpt:
        args.append("--grad-ckpt")
    return args


def run_method(args: list[str], device: str) -> tuple[list[dict], int]:
    """train.py's step records, and the number of graphs Dynamo compiled (0 eager)."""
    code = (f"import json, train, torch._dynamo.utils as u; train.main({args + ['--device', device]!r}); "
            "print('graphs', u.counters['stats']['unique_graphs'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"train.py {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    out = Path(args[args.index("--out") + 1])
    graphs = int(done.stdout.rsplit("graphs ", 1)[1])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"step_s"' in line], graphs


def runtime_baseline(device: str, model_dir: Path, data: Path, seq_len: int) -> int:
    """Peak RSS of a process that imports train.py, loads the tokenizer and tokenises the data, and stops."""
    if device != "cpu":
        return 0
    tokenizer = next(model_dir.glob("tokenizer.model"))
    done = subprocess.run([sys.executable, "-c", BASELINE, str(tokenizer), str(data), str(seq_len)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def summarize(metrics: list[dict], period: int) -> dict:
    """Median step time over steps that draw no blocks (not the first, not a period start)."""
    steady = [m["step_s"] for m in metrics if m["step"] > 1 and (m["step"] - 1) % period]
    redraw = [m["step_s"] for m in metrics if m["step"] > 1 and (m["step"] - 1) % period == 0]
    median = statistics.median(steady)
    return dict(step_s=median, first_s=metrics[0]["step_s"], redraw_s=max(redraw) if redraw else None, peak=max(m["peak_memory"] for m in metrics),
                loss=metrics[-1]["loss"])


def estimate_for(model_dir: Path, data: Path, method: str, a: argparse.Namespace, lean: bool, runtime: int) -> int:
    """The simulated peak of the same train.py flags (`training.memory`), plus the runtime baseline."""
    config = get_config("llama2-7b", dim=a.dim, n_layers=a.layers, n_heads=a.heads, n_kv_heads=a.heads,
                        ffn_dim=a.ffn, max_seq_len=max(a.seq_len, 128))
    args = parse_args(train_args(model_dir, data, model_dir.parent / "unused", method, a, lean))
    return simulate_memory(config, step_config(args), DTYPES[a.dtype]).peak.total + runtime


def compare(a: argparse.Namespace, work: Path) -> list[dict]:
    model_dir = build_model_dir(work / "model", a.dim, a.layers, a.heads, a.ffn, a.seq_len)
    data, _ = build_commonsense(work / "data", heldout_per_task=1, max_train_per_task=a.records_per_task)
    runtime = runtime_baseline(a.device, model_dir, data, a.seq_len)
    rows = []
    runs = [(m, False) for m in a.methods] + ([("owlore", True)] if "owlore" in a.methods and not a.compile else [])
    for (method, lean), compiled in [(run, c) for run in runs for c in ((False, True) if a.compile else (False,))]:
        name = method + (" --lean" if lean else "") + (" --compile" if compiled else "")
        metrics, graphs = run_method(train_args(model_dir, data, work / name.replace(" --", "-"), method, a, lean,
                                                compiled), a.device)
        row = dict(method=name, graphs=graphs, **summarize(metrics, a.period))
        row["estimate"] = estimate_for(model_dir, data, method, a, lean, runtime)
        row["estimate_error"] = row["estimate"] / row["peak"] - 1
        rows.append(row)
        print(f"{name:<16} step {row['step_s']:.3f} s  peak {row['peak'] / GIB:.3f} GiB  "
              f"estimate {row['estimate'] / GIB:.3f} GiB ({row['estimate_error']:+.1%})  first step {row['first_s']:.1f} s  "
              f"graphs {graphs}", flush=True)
    full = next((r for r in rows if r["method"] == "full"), None)
    for row in rows:
        row["time_vs_full"] = row["step_s"] / full["step_s"] if full else float("nan")
    for row in rows:
        row["runtime_baseline"] = runtime
        eager = next((r for r in rows if r["method"] == row["method"].removesuffix(" --compile")), row)
        row["time_vs_eager"] = row["step_s"] / eager["step_s"]
    return rows


def report(rows: list[dict], a: argparse.Namespace) -> str:
    lines = ["| method | median step s | vs full | vs eager | first step s | graphs compiled | peak GiB (measured) "
             "| estimate GiB | estimate error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['step_s']:.3f} | {r['time_vs_full']:.2f} | {r['time_vs_eager']:.2f} | "
                     f"{r['first_s']:.2f} | {r['graphs']} | {r['peak'] / GIB:.3f} | "
                     f"{r['estimate'] / GIB:.3f} | {r['estimate_error']:+.1%} |")
    owlore = next((r for r in rows if r["method"] == "owlore"), None)
    if owlore and owlore["redraw_s"] is not None:
        extra = max(owlore["redraw_s"] - owlore["step_s"], 0.0)
        share = extra / (extra + 50 * owlore["step_s"])
        lines.append(f"\nprojector refresh (randomized SVD, {a.gamma} new blocks): {extra:.3f} s extra at the redraw "
                     f"step = {share:.2%} of training time at period 50")
    lines.append(f"runtime baseline (RSS after importing train.py, loading the tokenizer, tokenising the data): {rows[0]['runtime_baseline'] / GIB:.3f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512, help="model width of the random model")
    p.add_argument("--layers", type=int, default=12, help="decoder blocks of the random model")
    p.add_argument("--heads", type=int, default=8, help="attention heads of the random model")
    p.add_argument("--ffn", type=int, default=1376, help="feed-forward width of the random model")
    p.add_argument("--gamma", type=int, default=2, help="blocks trained at a time (OwLore/LISA)")
    p.add_argument("--rank", type=int, default=64, help="GaLore rank")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=7, help="optimizer steps timed per method")
    p.add_argument("--period", type=int, default=4, help="OwLore/LISA redraw every N steps (step N+1 redraws)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="dtype of weights and activations")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device the steps run on")
    p.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing per block")
    p.add_argument("--compile", action="store_true", help="run each method eager and with --compile, side by side")
    p.add_argument("--records-per-task", type=int, default=40, help="commonsense records per task in the data")
    p.add_argument("--methods", type=lambda v: v.split(","), default=list(METHODS),
                   help="comma-separated subset (owlore also runs with --lean)")
    p.add_argument("--tiny", action="store_true", help="dim 64, 2 blocks, 1x32 tokens, 3 steps (smoke run)")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    unknown = set(a.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    if a.tiny:
        a.dim, a.layers, a.heads, a.ffn, a.gamma, a.rank = 64, 2, 4, 160, 1, 8
        a.batch_size, a.seq_len, a.steps, a.period, a.records_per_task = 1, 32, 3, 2, 4
    with tempfile.TemporaryDirectory() as work:
        rows = compare(a, Path(work))
    print(report(rows, a))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    cli.run(main)
