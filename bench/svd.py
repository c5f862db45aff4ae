"""Exact vs randomized SVD for GaLore projectors: time ratio and captured energy, in one run.

The test matrix is gradient-like: G = U diag(s) V^T with U, V random orthonormal (QR of Gaussians) and a
power-law spectrum s_i = (i + 1)^-decay, the heavy-tailed decay seen in LLM weight gradients. Captured
energy of a rank-r basis = ||P-projected G||_F^2 / sum_{i<r} s_i^2 (1.0 is optimal, Eckart-Young).

    python -m bench.svd            # 4096x11008 (r=128) and 4096x4096 (r=128), fp32
    python -m bench.svd --small    # seconds-long smoke run
"""
from __future__ import annotations

import argparse
import time

import torch

from common import cli
from optim.projector import SVDProjector


def gradient_like(m: int, n: int, decay: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, singular values) for an m x n matrix with spectrum (i+1)^-decay."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(m, k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen)).Q
    s = torch.arange(1, k + 1, dtype=torch.float32).pow(-decay)
    return (u * s) @ v.mT, s


def _timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _captured(g: torch.Tensor, projector: SVDProjector, state: dict, optimum: float) -> float:
    return float(projector.project(state, g).double().pow(2).sum()) / optimum


def compare(m: int, n: int, rank: int, decay: float, oversample: int, power_iters: int, repeats: int, seed: int) -> dict:
    g, s = gradient_like(m, n, decay, seed)
    optimum = float(s[:rank].double().pow(2).sum())
    exact_projector, rand_projector = SVDProjector(rank), SVDProjector(rank, "std", "randomized", oversample, power_iters)
    exact_s, exact = _timed(lambda: exact_projector.make(g, seed), 1)
    rand_s, rand = _timed(lambda: rand_projector.make(g, seed), repeats)
    lowrank_s, _ = _timed(lambda: torch.svd_lowrank(g, q=rank + oversample, niter=power_iters), repeats)
    return dict(
        shape=f"{m}x{n}", rank=rank, exact_s=exact_s, randomized_s=rand_s, svd_lowrank_s=lowrank_s,
        speedup=exact_s / rand_s, exact_energy=_captured(g, exact_projector, exact, optimum),
        randomized_energy=_captured(g, rand_projector, rand, optimum),
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="256x688 and 256x256 at rank 16 (smoke run)")
    parser.add_argument("--rank", type=int, default=None, help="projector rank (default: the sizes' own)")
    parser.add_argument("--decay", type=float, default=1.0, help="spectrum s_i = (i+1)^-decay")
    parser.add_argument("--oversample", type=int, default=8, help="randomized SVD: extra sketch columns")
    parser.add_argument("--power-iters", type=int, default=2, help="randomized SVD: power iterations")
    parser.add_argument("--repeats", type=int, default=3, help="randomized timings: best of N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random matrices and sketches")
    args = parser.parse_args(argv)
    shapes = [(256, 688), (256, 256)] if args.small else [(4096, 11008), (4096, 4096)]
    rank = args.rank or (16 if args.small else 128)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, decay {args.decay}, "
          f"oversample {args.oversample}, power_iters {args.power_iters}")
    print("| shape | r | exact s | randomized s | torch.svd_lowrank s | speedup | energy exact | energy randomized |")
    print("|---|---|---|---|---|---|---|---|")
    compare(64, 96, 8, args.decay, args.oversample, args.power_iters, 1, args.seed)  # warm up LAPACK
    rows = []
    for m, n in shapes:
        row = compare(m, n, rank, args.decay, args.oversample, args.power_iters, args.repeats, args.seed)
        rows.append(row)
        print(f"| {row['shape']} | {rank} | {row['exact_s']:.3f} | {row['randomized_s']:.3f} | "
              f"{row['svd_lowrank_s']:.3f} | {row['speedup']:.1f}x | {row['exact_energy']:.4f} | "
              f"{row['randomized_energy']:.4f} |", flush=True)
    return rows


if __name__ == "__main__":
    cli.run(main)
