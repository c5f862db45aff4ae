"""Simulated peak memory per rank of `--fsdp` training: the real sharded model, optimizer and step on fake
tensors (FakeTensorMode: shapes and dtypes, no storage) over a fake process group of N ranks, measured by
torch's FSDPMemTracker. Nothing is allocated, so 70B on 8 ranks simulates on a laptop.

    python -m bench.fsdp_memory                       # the BENCHMARKS.md table
    python -m bench.fsdp_memory --model llama2-7b --world 2 --method owlore --gamma 4
    python -m bench.fsdp_memory --model llama2-7b --world 2 --layout replicate   # data parallel (no --fsdp)

What is simulated: rank 0 of N, bf16 weights, two training steps (the second at a GaLore refresh, so the
gathered full gradient of one matrix is in the peak), per-block activation checkpointing, the optimizer
state after the first step. The projector is GaLore's `RandomProjector` (the same state shapes as the SVD one;
SVD's own workspace, one gathered matrix's worth, is not modelled). Host-side loading is not part of it.
"""
from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.testing._internal.distributed.fake_pg import FakeStore

from model import get_config
from optim import GaLoreAdamW
from optim.projector import RandomProjector
from sampling import set_trainable
from training.fsdp import data_parallel_mesh, shard_model
from training.memory import StepTracker, build_model, plan_blocks
from training.methods import METHODS, SAMPLED_METHODS, param_groups

GIB = 2**30
# (model, ranks, GPU GiB, method, gamma): the cases the README's multi-GPU section cites
CASES = [("llama2-70b", 8, 80, "owlore", 8), ("llama2-70b", 8, 80, "full", 0),
         ("llama2-13b", 2, 24, "owlore", 4), ("llama2-13b", 1, 24, "owlore", 4),
         ("llama2-7b", 2, 16, "owlore", 4)]


def simulate(model_name: str, world: int, method: str, gamma: int, micro_batch: int = 1, seq_len: int = 2048,
             rank: int = 128, dtype: torch.dtype = torch.bfloat16, layout: str = "shard") -> dict[str, int]:
    """Peak bytes on rank 0, by FSDPMemTracker's categories plus "Total". `layout`: "shard" (--fsdp),
    "replicate" (data parallelism as train.py runs it: FSDP2 on the ranks x 1 mesh) or "plain" (no FSDP:
    every rank as one process, what data parallelism with an all-reduce after backward holds)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        config = get_config(model_name)
        galore = dict(projector=RandomProjector(rank), update_proj_gap=2, scale=0.25) if METHODS[method].projected else None
        mesh = data_parallel_mesh("cpu", world, layout == "replicate")  # outside fake mode: real rank numbers
        with FakeTensorMode():
            model = build_model(config, dtype)
            model.gradient_checkpointing = True
            model.train()
            if method in SAMPLED_METHODS:
                set_trainable(model, list(range(gamma)), train_outer=True)
            groups = param_groups(model, galore)
            if layout != "plain":
                groups = shard_model(model, groups, torch.device("cpu"), world, mesh=mesh)
            optimizer = GaLoreAdamW(groups, lr=1e-5, fp32_moments=True)
            ids = torch.randint(0, config.vocab_size, (micro_batch, seq_len))
            if layout == "plain":  # train.py's own tracker (frozen blocks take no hook); the peak of step 2
                plan = plan_blocks(config.n_layers, [None, None], composed=False)  # every block simulated
                tracker = StepTracker(optimizer, plan, {id(q): k for k, block in enumerate(model.layers)
                                                        for q in block.parameters()})
                tracker.track_external(model, optimizer)
            else:
                tracker = FSDPMemTracker(model, optimizer)
                tracker.track_inputs((ids,))
            with tracker:
                for i in range(2):
                    if layout == "plain":
                        tracker.start_step(i)
                    logits = model(ids)[:, :-1]  # (model.loss counts targets, which fake tensors cannot)
                    F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1)).backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if i == 0:
                        tracker.reset_mod_stats()
            if layout == "plain":
                top = max((p for phase, p in tracker.phases.items() if phase.startswith("step 2")), key=lambda p: p.total)
                return {"PARAM": top.parameters, "GRAD": top.gradients, "OPT": top.optimizer, "Total": top.total}
            peak = tracker.get_tracker_snapshot("peak")
        per_device = next(iter(peak.values()))
        return {str(k): int(v) for k, v in per_device.items()}
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model")
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--method", default="owlore")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--layout", default="shard", choices=("shard", "replicate", "plain"),
                   help="--fsdp; data parallelism as train.py runs it; no FSDP (one process's step)")
    args = p.parse_args(argv)
    cases = [(args.model, args.world, None, args.method, args.gamma)] if args.model else CASES
    print("| model | ranks | method (gamma) | micro-batch x seq | peak per rank (GiB, simulated) | of which "
          "parameters (sharded + gathered) / gradients / optimizer state / activations, buffers, temporaries | GPU |")
    print("|---|---|---|---|---|---|---|")
    for name, world, gpu, method, gamma in cases:
        peak = simulate(name, world, method, gamma, args.micro_batch, args.seq_len, layout=args.layout)
        parts = [sum(v for k, v in peak.items() if k.endswith(cat)) / GIB for cat in ("PARAM", "GRAD", "OPT")]
        rest = peak["Total"] / GIB - sum(parts)
        fits = "" if gpu is None else f"{gpu} GB: {'fits' if peak['Total'] < gpu * 1e9 * 0.95 else 'does not fit'}"
        label = f"{method} ({gamma})" if method in SAMPLED_METHODS else method
        print(f"| {name} | {world} | {label} | {args.micro_batch} x {args.seq_len} | {peak['Total'] / GIB:.1f} | "
              + " / ".join(f"{x:.1f}" for x in [*parts, rest]) + f" | {fits} |", flush=True)


if __name__ == "__main__":
    main()
