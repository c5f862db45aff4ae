"""Peak training memory of every method, simulated on fake tensors (`training.memory`), and on small shapes
measured on real CPU tensors beside the simulation.

    python -m bench.memory --simulate --model llama2-7b                       # every method x {paper, lean}, 16x512 bf16
    python -m bench.memory --simulate --model llama2-7b --full-simulation     # every block simulated (the reference)
    python -m bench.memory --simulate --model llama3-8b --methods owlore --presets lean --phases
    python -m bench.memory --simulate --model llama2-7b --methods owlore --presets lean --flags "--grad-accum 16"
    python -m bench.memory --measure --model llama2-7b --dim 512 --layers 12 --heads 8 --ffn 1376 \\
        --batch-size 2 --seq-len 128 --gamma 2 --dtype fp32          # the 71M shape: real CPU peak vs simulated

Presets are train.py flags: official = `--grad-ckpt` on the defaults, the official OwLore run (rank 256, the state
of every block ever drawn kept, exact SVD, clipping); paper = `--grad-ckpt` with GaLore paper's rank and this project's memory-relevant
differences (rank 128, the state of deactivated blocks freed, no clipping); lean = paper with `--lean` (fused steps,
chunked cross-entropy, checkpointing, randomized SVD; LoRA cannot fuse, so it gets the rest). `--flags` appends any other train.py flags.
The measured peak is the largest sum of live tensor bytes: the bytes alive before the steps (parameters,
buffers, optimizer state) plus the running sum of the allocations and frees the torch profiler records.
"""
from __future__ import annotations

import argparse
import json
import shlex

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._pytree import tree_flatten

from model.config import CONFIGS, get_config
from common import cli
from common.errors import UserError
from model.cli import DTYPES
from common.plugins import import_plugins, preparse
from training.args import apply_presets, build_parser, check_consistency, step_config
from training.methods import METHODS
from training.memory import Session, prepare, reach_steady_state, run_steps, simulate_memory
from training.memory_report import CATEGORIES, GIB, format_report
from training.step import StepConfig

# This project's differences from the official run that change memory (docs/method.md): GaLore's paper
# rank, state of deactivated blocks freed, no clipping.
OURS = ["--rank", "128", "--update-proj-gap", "200", "--galore-scale", "0.25", "--no-keep-inactive-state",
        "--max-grad-norm", "0"]
PRESETS = {"official": ["--grad-ckpt"], "paper": ["--grad-ckpt", *OURS], "lean": ["--lean", *OURS]}
LORA_LEAN = ["--grad-ckpt", "--chunked-ce", "--svd", "randomized", *OURS]  # --fused refuses LoRA


def preset_flags(method: str, preset: str) -> list[str]:
    return LORA_LEAN if (method, preset) == ("lora", "lean") else PRESETS[preset]


def train_args(flags: list[str]) -> StepConfig:
    """The step of train.py's own parse of `flags` (presets applied, consistency checked); no data file is read."""
    import_plugins(preparse(flags).plugin)  # --flags "--plugin my_research.py --projector mine"
    args = build_parser().parse_args(flags)
    apply_presets(args)
    check_consistency(args)
    return step_config(args)


def live_bytes(s: Session) -> int:
    """Bytes of the distinct storages of parameters, buffers, gradients and optimizer state."""
    tensors = [*s.model.parameters(), *s.model.buffers(), *(p.grad for p in s.model.parameters() if p.grad is not None)]
    tensors += [v for state in s.optimizer.state.values() for v in tree_flatten(state)[0] if isinstance(v, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def measure_memory(config, args: StepConfig, dtype: torch.dtype, steps: int = 2,
                   max_micro_batches: int | None = None) -> int:
    """Peak live tensor bytes of the same steps `simulate_memory` runs, on real CPU tensors."""
    torch.manual_seed(0)
    s = prepare(config, args, dtype, max_micro_batches=max_micro_batches)
    reach_steady_state(s)
    baseline = live_bytes(s)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_steps(s, steps)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    if s.fused:
        s.fused.remove()
    return baseline + peak


def command(a: argparse.Namespace, method: str, preset: str) -> str:
    shape = "".join(f" --{k.replace('_', '-')} {getattr(a, k)}" for k in ("dim", "layers", "heads", "kv_heads", "ffn", "vocab")
                    if getattr(a, k) is not None)
    extra = f' --flags "{a.flags}"' if a.flags else ""
    return (f"python -m bench.memory --simulate --model {a.model}{shape} --methods {method} --presets {preset} "
            f"--batch-size {a.batch_size} --seq-len {a.seq_len} --dtype {a.dtype}{extra}")


def row_flags(a: argparse.Namespace, method: str, preset: str) -> list[str]:
    flags = ["--method", method, "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len),
             "--gamma", str(a.gamma), *preset_flags(method, preset), *(["--rank", str(a.rank)] if a.rank else [])]
    return flags + shlex.split(a.flags or "")


def model_config(a: argparse.Namespace):
    overrides = {"dim": a.dim, "n_layers": a.layers, "n_heads": a.heads, "ffn_dim": a.ffn, "vocab_size": a.vocab}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if a.heads is not None or a.kv_heads is not None:
        overrides["n_kv_heads"] = a.kv_heads or a.heads
    overrides["max_seq_len"] = max(get_config(a.model).max_seq_len, a.seq_len)
    return get_config(a.model, **overrides)


def table(rows: list[dict]) -> str:
    lines = ["| method | preset | " + " | ".join(CATEGORIES) + " | peak GiB | peak GB | phase of the peak |",
             "|---|---|" + "---|" * (len(CATEGORIES) + 3)]
    for r in rows:
        p = r["report"]["peak"]
        cells = " | ".join(f"{p[c] / GIB:.2f}" for c in CATEGORIES)
        lines.append(f"| {r['method']} | {r['preset']} | {cells} | {p['total'] / GIB:.2f} | {p['total'] / 1e9:.2f} | "
                     f"{p['phase']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--simulate", action="store_true", help="fake-tensor simulation (the default)")
    p.add_argument("--measure", action="store_true", help="also run the steps on real CPU tensors (small shapes only)")
    p.add_argument("--model", default="llama2-7b", choices=sorted(CONFIGS), help="named model config to simulate")
    for name in ("dim", "layers", "heads", "kv-heads", "ffn", "vocab"):
        p.add_argument(f"--{name}", type=cli.number(int, at_least=1), help=f"override the config's {name}")
    p.add_argument("--methods", type=lambda v: v.split(","), default=list(METHODS), help="comma-separated")
    p.add_argument("--presets", type=lambda v: v.split(","), default=list(PRESETS), help="official,paper,lean")
    p.add_argument("--batch-size", type=cli.number(int, at_least=1), default=16, help="global batch (sequences per optimizer step)")
    p.add_argument("--seq-len", type=cli.number(int, at_least=1), default=512, help="tokens per sequence")
    p.add_argument("--gamma", type=cli.number(int, at_least=1), default=5, help="blocks trained at a time (OwLore/LISA)")
    p.add_argument("--rank", type=cli.number(int, at_least=1), help="GaLore rank (default: the preset's)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="dtype of weights and activations")
    p.add_argument("--steps", type=cli.number(int, at_least=1), default=2, help="steps simulated (step 1 builds the state and projectors)")
    p.add_argument("--max-micro-batches", type=cli.number(int, at_least=1), default=2,
                   help="micro-batches simulated per step (later ones repeat the second exactly)")
    p.add_argument("--flags", default="", help="further train.py flags, e.g. \"--grad-accum 16 --freeze-embeddings\"")
    p.add_argument("--full-simulation", action="store_true",
                   help="simulate every block (the reference) instead of one per run of identical blocks, composed")
    p.add_argument("--phases", action="store_true", help="print every phase's peak, not only the overall one")
    p.add_argument("--json", help="write the rows to this file")
    a = p.parse_args(argv)
    bad = sorted(set(a.methods) - set(METHODS)) + sorted(set(a.presets) - set(PRESETS))
    if bad:
        raise UserError(f"--methods/--presets: unknown method or preset {bad}; methods: {', '.join(METHODS)}; presets: {', '.join(PRESETS)}")
    config = model_config(a)
    if not 1 <= a.gamma <= config.n_layers:
        raise UserError(f"--gamma: {a.gamma} must lie in [1, {config.n_layers}] for {a.model!r}")
    dtype = DTYPES[a.dtype]
    rows = []
    for method in a.methods:
        for preset in a.presets:
            try:
                args = train_args(row_flags(a, method, preset))
            except UserError as err:
                raise UserError(f"--flags: train.py rejects {' '.join(row_flags(a, method, preset))}: {err}") from None
            try:
                report = simulate_memory(config, args, dtype, a.steps, max_micro_batches=a.max_micro_batches,
                                         composed=not a.full_simulation)
            except ValueError as err:
                raise UserError(f"{method} {preset}: {err}") from None
            row = dict(method=method, preset=preset, report=report.as_dict(), command=command(a, method, preset))
            line = f"{method:<16} {preset:<6} peak {report.peak.total / GIB:7.3f} GiB in {report.peak.phase}"
            if a.measure:
                row["measured"] = measure_memory(config, args, dtype, a.steps, a.max_micro_batches)
                row["error"] = report.peak.total / row["measured"] - 1
                line += f"; measured {row['measured'] / GIB:.3f} GiB (simulated {row['error']:+.2%})"
            print(line + f"  [{report.seconds:.1f} s]", flush=True)
            if a.phases:
                print(format_report(report))
            rows.append(row)
    print(f"\n{a.model} ({config.dim}x{config.n_layers}, vocab {config.vocab_size}), {a.dtype}, global batch "
          f"{a.batch_size}x{a.seq_len}, gamma {a.gamma}, rank {a.rank}{', ' + a.flags if a.flags else ''}; simulated "
          f"({'every block' if a.full_simulation else 'composed from one block per run'}):")
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    cli.run(main)
