"""Share of training time spent computing GaLore projectors when OwLore draws new blocks.

Every `period` steps OwLore activates `gamma` blocks whose state was freed, so their 7 matrices each need a
fresh projector (an SVD of the gradient) at once. Share = refresh / (refresh + period x steady step), with
the steady step measured by running train.py's step (`training.step`) on real tensors and the refresh as
`SVDProjector.make` on gradients of the blocks' shapes, exact and randomized.

    python -m bench.refresh                      # the 71M LLaMA shape on CPU, fp32, 2x128 tokens, gamma 2
    python -m bench.refresh --block llama2-7b    # the 7 matrices of one llama2-7b block (refresh only)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.memory import train_args
from model.config import get_config
from optim.projector import SVDProjector
from training.memory import build_model, prepare, run_steps


def block_shapes(config) -> list[tuple[int, int]]:
    with torch.device("meta"):
        block = build_model(get_config(config.name, n_layers=1, **{k: getattr(config, k) for k in (
            "dim", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size")}), torch.float32).layers[0]
    return [tuple(p.shape) for p in block.parameters() if p.ndim == 2]


def refresh_seconds(shapes: list[tuple[int, int]], rank: int, svd: str) -> float:
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=gen) for shape in shapes]
    start = time.perf_counter()
    projector = SVDProjector(rank, "std", svd)
    for g in grads:
        projector.make(g, seed=0)
    return time.perf_counter() - start


def steady_step_seconds(config, flags: list[str], steps: int) -> float:
    stamps = []
    session = prepare(config, train_args(flags), torch.float32)
    run_steps(session, steps, lambda k: stamps.append(time.perf_counter()))
    stamps.append(time.perf_counter())
    return statistics.median(b - a for a, b in list(zip(stamps, stamps[1:]))[1:])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block", help="named config: time one block's 7 projectors only (no training step)")
    p.add_argument("--gamma", type=int, default=2)
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--period", type=int, default=50)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--svd", type=lambda v: v.split(","), default=["exact", "randomized"])
    a = p.parse_args(argv)
    if a.block:
        config = get_config(a.block)
        shapes = block_shapes(config)
        out = {svd: refresh_seconds(shapes, a.rank, svd) for svd in a.svd}
        for svd, s in out.items():
            print(f"{a.block}: one block's 7 projectors ({svd} SVD, rank {a.rank}): {s:.2f} s")
        return out
    config = get_config("llama2-7b", dim=512, n_layers=12, n_heads=8, n_kv_heads=8, ffn_dim=1376)
    flags = ["--method", "owlore", "--batch-size", "2", "--seq-len", "128", "--gamma", str(a.gamma), "--rank",
             str(a.rank), "--svd", "randomized"]
    step = steady_step_seconds(config, flags, a.steps)
    shapes = block_shapes(config) * a.gamma
    out = {"step_s": step}
    print(f"71M shape, CPU fp32, 2x128 tokens: steady OwLore step {step:.3f} s (median of {a.steps - 1})")
    for svd in a.svd:
        s = refresh_seconds(shapes, a.rank, svd)
        share = s / (s + a.period * step)
        out[svd] = dict(refresh_s=s, share=share)
        print(f"  refresh of {a.gamma} blocks ({len(shapes)} projectors, {svd}): {s:.3f} s = {share:.2%} of a "
              f"{a.period}-step period")
    return out


if __name__ == "__main__":
    main()
