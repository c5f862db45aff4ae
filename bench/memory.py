"""Training memory of every method from shapes alone (no weights): `training.memory`'s estimate as a table.

    python -m bench.memory --model llama2-7b --gamma 5 --rank 128 --batch-size 16 --seq-len 512 --grad-ckpt --dtype bf16
    python -m bench.memory --model llama2-7b --method owlore --lean --json
"""
from __future__ import annotations

import argparse
import json

from common import cli
from model.config import CONFIGS, get_config
from model.cli import DTYPES
from training.memory import GIB, MemoryEstimate, MemorySettings, estimate_memory
from training.methods import METHODS

COMPONENTS = ("weights", "gradients", "optimizer", "activations", "logits", "runtime")


def settings_from_args(args: argparse.Namespace, method: str) -> MemorySettings:
    lean = args.lean
    return MemorySettings(
        method=method, micro_batch=args.batch_size, seq_len=args.seq_len, dtype=DTYPES[args.dtype],
        gamma=args.gamma, rank=args.rank, lora_rank=args.lora_rank, grad_ckpt=args.grad_ckpt or lean,
        fused=lean and method != "lora", chunked_ce=lean, train_outer=not args.freeze_embeddings,
        keep_inactive_state=args.keep_inactive_state, runtime_bytes=int(args.runtime_gib * GIB),
    )


def table(rows: dict[str, MemoryEstimate]) -> str:
    lines = ["| method | " + " | ".join(COMPONENTS) + " | total |", "|---" * (len(COMPONENTS) + 2) + "|"]
    for method, est in rows.items():
        cells = [getattr(est, c) / GIB for c in COMPONENTS] + [est.total / GIB]
        lines.append(f"| {method} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, MemoryEstimate]:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama2-7b", choices=sorted(CONFIGS))
    p.add_argument("--method", choices=METHODS, help="default: all six")
    p.add_argument("--gamma", type=int, default=5)
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16, help="micro-batch (sequences per forward)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--lean", action="store_true", help="train.py --lean: fused steps, chunked CE, grad ckpt")
    p.add_argument("--freeze-embeddings", action="store_true")
    p.add_argument("--keep-inactive-state", action="store_true")
    p.add_argument("--runtime-gib", type=float, default=0.0, help="runtime baseline to add (CPU RSS; 0 for CUDA)")
    p.add_argument("--json", action="store_true", help="one object per method, components in bytes")
    args = p.parse_args(argv)
    config = get_config(args.model)
    try:
        rows = {m: estimate_memory(config, settings_from_args(args, m)) for m in ([args.method] if args.method else METHODS)}
    except ValueError as err:
        p.error(str(err))
    if args.json:
        print(json.dumps([{"method": m, **est.as_dict()} for m, est in rows.items()], indent=1))
    else:
        print(f"{args.model}, {args.dtype}, micro-batch {args.batch_size}x{args.seq_len}, gamma {args.gamma}, "
              f"GaLore rank {args.rank}, LoRA rank {args.lora_rank}, grad ckpt {args.grad_ckpt or args.lean}, "
              f"lean {args.lean}, embeddings/head {'frozen' if args.freeze_embeddings else 'trained'}, "
              f"inactive-block state {'kept' if args.keep_inactive_state else 'freed'}; GiB:")
        print(table(rows))
    return rows


if __name__ == "__main__":
    cli.run(main)
