"""Step time of every method against full fine-tuning, in one process, and where each step spends it.

Each method gets its own model and optimizer (`training.memory.prepare`, real tensors) and is warmed up (its
first draw, its optimizer state, its projectors); then rounds time one steady-state step of every method in
turn (train.py's loop body: forward, backward, clipping, the optimizer step; no data loading, no redraw), so
that a change of machine load hits all methods alike. The ratio to full is taken per round (paired) and its
median reported with the range. Then one step of each method runs under torch's profiler: its top operators
by self time, and how its time splits into forward, backward and optimizer step.

    python -m bench.step_profile                      # the 71M LLaMA shape of issue 7, fp32, 2x128 tokens
    python -m bench.step_profile --methods full,owlore --rounds 3 --dim 64 --layers 2 --vocab 512   # smoke
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.memory import train_args
from common import cli
from common.errors import UserError
from model import get_config
from training.memory import Session, prepare, reach_steady_state, run_steps
from training.compile import compile_blocks
from training.methods import METHODS
from training.step import apply_gradients, backward_micro_batches, gradient_norm, trainable_with_grad


def session(config, method: str, a: argparse.Namespace, compiled: bool = False) -> Session:
    flags = ["--method", method, "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len), "--gamma",
             str(a.gamma), "--rank", str(a.rank), "--period", "1000000", *a.flags.split()]
    torch.manual_seed(0)
    s = prepare(config, train_args(flags), torch.float32)
    if compiled:
        compile_blocks(s.model)  # as train.py does, after LoRA wrapped the linears
    reach_steady_state(s)
    run_steps(s, 2)  # the draw, the state, the projectors; later steps are the steady state
    return s


def timed_step(s: Session) -> float:
    started = time.perf_counter()
    run_steps(s, 1, sets=[None])
    return time.perf_counter() - started


def phases(s: Session) -> dict[str, float]:
    """Seconds of forward+backward and of the optimizer (clipping included), one step, without the profiler."""
    n_targets = s.tokens[:, 1:].numel()
    t0 = time.perf_counter()
    backward_micro_batches(s.model, s.tokens, s.tokens, n_targets, s.args.grad_accum, s.args.chunked_ce)
    t1 = time.perf_counter()
    gradient_norm(trainable_with_grad(s.groups), s.args.max_grad_norm)
    apply_gradients(s.optimizer)
    return {"forward+backward": t1 - t0, "optimizer": time.perf_counter() - t1}


def top_ops(s: Session, n: int) -> list[tuple[str, float, float]]:
    """(operator, self CPU ms, share of the step) of one step's top `n` operators."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("step"):
            run_steps(s, 1, sets=[None])
    totals: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        if e.key != "step":
            totals[e.key] += e.self_cpu_time_total / 1e3
    whole = sum(totals.values())
    return [(k, v, v / whole) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:n]]


def main(argv: list[str] | None = None) -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=cli.number(int, at_least=1), default=512, help="model width (default: %(default)s)")
    p.add_argument("--layers", type=cli.number(int, at_least=1), default=12, help="decoder blocks (default: %(default)s)")
    p.add_argument("--heads", type=cli.number(int, at_least=1), default=8, help="attention heads (default: %(default)s)")
    p.add_argument("--ffn", type=cli.number(int, at_least=1), default=1376, help="MLP width (default: %(default)s)")
    p.add_argument("--vocab", type=cli.number(int, at_least=1), default=32000, help="vocabulary (default: %(default)s)")
    p.add_argument("--batch-size", type=cli.number(int, at_least=1), default=2, help="rows per step (default: %(default)s)")
    p.add_argument("--seq-len", type=cli.number(int, at_least=1), default=128, help="tokens per row (default: %(default)s)")
    p.add_argument("--gamma", type=cli.number(int, at_least=1), default=2, help="sampled blocks (default: %(default)s)")
    p.add_argument("--rank", type=cli.number(int, at_least=1), default=64, help="GaLore rank (default: %(default)s)")
    p.add_argument("--methods", type=lambda v: v.split(","), default=["full", "owlore", "lisa", "owlore-fullrank"],
                   help="methods, comma-separated; full first, the reference (default: %(default)s)")
    p.add_argument("--rounds", type=cli.number(int, at_least=1), default=7, help="timed steps per method, interleaved (default: %(default)s)")
    p.add_argument("--top", type=cli.number(int, at_least=1), default=8, help="operators listed per method (default: %(default)s)")
    p.add_argument("--flags", default="", help="more train.py flags for every method (default: none)")
    p.add_argument("--compile", action="store_true",
                   help="also each method with its blocks compiled (train.py --compile), in the same rounds (default: off)")
    p.add_argument("--threads", type=cli.number(int, at_least=0), default=0, help="torch threads, 0 = torch's choice (default: %(default)s)")
    a = p.parse_args(argv)
    for m in a.methods:
        if m not in METHODS:
            raise UserError(f"--methods: unknown method {m!r} (known: {', '.join(METHODS)})")
    if a.methods[0] != "full":
        raise UserError("--methods: the first method is the reference and must be full")
    if a.threads:
        torch.set_num_threads(a.threads)
    config = get_config("llama2-7b", dim=a.dim, n_layers=a.layers, n_heads=a.heads, n_kv_heads=a.heads,
                        ffn_dim=a.ffn, vocab_size=a.vocab, max_seq_len=max(a.seq_len, 128))
    sessions = {m: session(config, m, a) for m in a.methods}
    if a.compile:
        torch._dynamo.utils.counters.clear()
        sessions |= {f"{m} compiled": session(config, m, a, compiled=True) for m in a.methods}
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    names = list(sessions)
    times: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(a.rounds):
        for m in names:
            times[m].append(timed_step(sessions[m]))
    print(f"{a.rounds} rounds, {torch.get_num_threads()} threads; step seconds (median) and the per-round ratio to full")
    print("| method | median step s | ratio to full, median | range | forward+backward s | optimizer s |")
    print("|---|---|---|---|---|---|")
    for m in names:
        ratios = [t / f for t, f in zip(times[m], times["full"])]
        split = phases(sessions[m])
        print(f"| {m} | {statistics.median(times[m]):.3f} | {statistics.median(ratios):.3f} | "
              f"{min(ratios):.3f}-{max(ratios):.3f} | {split['forward+backward']:.3f} | {split['optimizer']:.3f} |")
    if a.compile:
        print(f"compiled / eager per round (median): " + ", ".join(
            f"{m} {statistics.median(c / e for c, e in zip(times[f'{m} compiled'], times[m])):.3f}" for m in a.methods)
              + f"; graphs compiled in all: {graphs}, after the warm-up steps: "
              + str(torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs))
    for m in a.methods:
        print(f"\n{m}: top operators of one step (self CPU)")
        for name, ms, share in top_ops(sessions[m], a.top):
            print(f"  {name:<40} {ms:9.1f} ms {share:6.1%}")


if __name__ == "__main__":
    cli.run(main)
