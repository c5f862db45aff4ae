"""What `--sampling htsr_dynamic` costs: one observation (the HT-SR alpha of every block matrix, from its
singular values) per period, timed on random weights of a named config's shapes.

    python -m bench.htsr --model smollm2-135m             # all blocks, fp32 on the CPU
    python -m bench.htsr --model llama2-7b --blocks 1     # one block, scaled to the model's block count
"""
from __future__ import annotations

import argparse
import time

import torch

from model import Transformer, get_config
from sampling.policies import observe_alphas


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.htsr", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--blocks", type=int, help="time this many blocks and scale to all (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--period", type=int, default=50, help="steps per period, for the per-step share")
    args = p.parse_args(argv)
    config = get_config(args.model)
    n_timed = min(args.blocks or config.n_layers, config.n_layers)
    if n_timed < 1:
        p.error(f"--blocks must be >= 1, got {args.blocks}")
    torch.manual_seed(0)
    model = Transformer(get_config(args.model, n_layers=n_timed)).to(args.device)  # random init: alphas differ,
    cuda = args.device != "cpu"                                                      # the work does not
    if cuda:  # the first call pays the solver's start-up
        observe_alphas(model)
        torch.cuda.synchronize()
    start = time.perf_counter()
    observe_alphas(model)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) * config.n_layers / n_timed
    scaled = "" if n_timed == config.n_layers else f" (measured on {n_timed} of {config.n_layers} blocks, scaled)"
    print(f"{args.model} on {args.device}: one observation {seconds:.2f} s{scaled}; "
          f"{seconds / args.period:.3f} s per step at --period {args.period}")


if __name__ == "__main__":
    main()
