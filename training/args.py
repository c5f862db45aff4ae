"""Command-line and config-file arguments of train.py, with the paper's defaults (docs/method.md, "Defaults and where they come from")."""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import yaml

from model.cli import add_model_flags
from optim.projector import PROJ_TYPES, PROJECTORS, SVD_METHODS

METHODS = ("full", "lora", "galore", "lisa", "owlore", "owlore-fullrank")
SAMPLING_MODES = ("owlore", "uniform", "owlore_reverse", "decrease", "increase", "fixed")
DEFAULT_SAMPLING = {"lisa": "uniform", "owlore": "owlore", "owlore-fullrank": "owlore"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fine-tune a LLaMA-family model with OwLore or a baseline.")
    a = p.add_argument
    a("--config", help="YAML or JSON file with the same keys as the flags (flags override it)")
    # model and data
    a("--model", default="smollm2-135m", help="named config, Meta/Mistral/HF dir or .gguf file")
    a("--data", help="training data (Alpaca/LLM-Adapters JSON(L), LMFlow JSON, chat JSONL, .txt); "
               "default: the commonsense set of data/commonsense.py, built into --out")
    a("--template", default="alpaca", choices=("alpaca", "chat"))
    a("--train-on-prompt", action="store_true", help="no loss masking of the prompt (the official run)")
    a("--no-pack", action="store_true", help="pad/truncate each record instead of packing")
    a("--seq-len", type=int, default=512)
    # method
    a("--method", default="owlore", choices=METHODS)
    a("--gamma", type=int, default=5, help="blocks trained at a time (LISA / OwLore)")
    a("--period", type=int, default=50, help="steps between block draws (K)")
    a("--sampling", choices=SAMPLING_MODES, help="default: uniform for lisa, owlore otherwise")
    a("--fixed-layers", type=lambda s: [int(x) for x in s.split(",")], help="blocks for --sampling fixed")
    a("--freeze-embeddings", action="store_true", help="keep embeddings, final norm and head frozen")
    a("--keep-inactive-state", action="store_true", help="keep optimizer state of deactivated blocks (official)")
    a("--M", type=float, default=13.0, help="outlier threshold multiple of the mean Wanda score")
    a("--scores", help="outlier-ratio cache (JSON); computed and written when missing")
    a("--calib-windows", type=int, default=128)
    a("--calib-seq-len", type=int, default=2048)
    a("--calib", help="calibration text file (default: the training data)")
    a("--rank", type=int, default=128)
    a("--update-proj-gap", type=int, default=200)
    a("--galore-scale", type=float, default=0.25)
    a("--proj-type", default="std", choices=PROJ_TYPES)
    a("--svd", default="exact", choices=SVD_METHODS)
    a("--projector", default="svd", choices=tuple(PROJECTORS), help="GaLore subspace: SVD of the gradient, or random")
    a("--svd-oversample", type=int, default=8, help="randomized SVD: extra sketch columns")
    a("--svd-power-iters", type=int, default=2, help="randomized SVD: power iterations (raise for flat spectra)")
    a("--reproject-moments", action="store_true", help="carry Adam's first moment into each new subspace")
    a("--fp32-moments", action="store_true", help="Adam moments in fp32 for bf16/fp16 weights (they can decay)")
    a("--lora-rank", type=int, default=8)
    a("--lora-alpha", type=float, default=16.0)
    a("--lora-dropout", type=float, default=0.05)
    # optimisation
    a("--lr", type=float, default=3e-4)
    a("--weight-decay", type=float, default=0.0)
    a("--schedule", default="linear", choices=("linear", "cosine", "constant"))
    a("--warmup", type=int, default=0)
    a("--max-steps", type=int, help="optimizer steps (default: --epochs worth of steps)")
    a("--epochs", type=float, default=1.0)
    a("--batch-size", type=int, default=16, help="global batch per optimizer step")
    a("--grad-accum", type=int, default=1)
    a("--max-grad-norm", type=float, help="global-norm clipping (off by default, as the official run)")
    a("--fused", action="store_true", help="step each parameter in its grad hook and free the grad")
    a("--chunked-ce", action="store_true", help="cross-entropy in chunks, never the full fp32 logits")
    add_model_flags(p, dtype_default=None)  # --ckpt-dir, --tokenizer, --dtype
    a("--device", help="default: cuda if available, else cpu")
    a("--grad-ckpt", action="store_true", help="activation checkpointing per block")
    a("--fsdp", action="store_true", help="shard weights, gradients and optimizer state over the ranks (FSDP2)")
    a("--reduce-dtype", choices=("fp32", "bf16", "fp16"), help="--fsdp gradient reduction dtype (default: --dtype)")
    a("--lean", action="store_true", help="lean-memory preset: fused, chunked CE, grad ckpt, randomized SVD")
    a("--seed", type=int, default=111)
    # output
    a("--out", default="runs/latest")
    a("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    a("--resume", help="run directory or checkpoint directory to continue from")
    a("--save-format", default="hf", choices=("meta", "hf", "both", "none"))
    a("--eval-every", type=int, default=0, help="held-out evaluation every N steps (0: start and end only)")
    a("--eval-data", help="held-out file from data.commonsense (records with task and doc_id)")
    a("--eval-limit", type=int, help="score at most N held-out rows per task")
    a("--log-every", type=int, default=1)
    a("--wandb", choices=("offline", "online"), help="also log to a Weights & Biases run (offline: no network)")
    return p


def load_config_file(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"error: config file {file} does not exist")
    text = file.read_text()
    try:
        values = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SystemExit(f"error: config file {file} is not valid {file.suffix[1:].upper()}: {err}") from err
    if not isinstance(values, dict):
        raise SystemExit(f"error: config file {file} must hold a mapping of flag names to values")
    return {key.replace("-", "_"): value for key, value in values.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        values = load_config_file(first.config)
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"config file {first.config} has unknown keys: {', '.join(unknown)}")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    apply_presets(args)
    check_consistency(parser, args)
    return args


def apply_presets(args: argparse.Namespace) -> None:
    if args.lean:
        args.fused = args.chunked_ce = args.grad_ckpt = True
        args.svd = "randomized"
    if args.sampling is None:
        args.sampling = DEFAULT_SAMPLING.get(args.method)


def check_consistency(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    sampled = args.method in DEFAULT_SAMPLING
    if args.sampling and not sampled:
        parser.error(f"--sampling applies to lisa/owlore/owlore-fullrank, not --method {args.method}")
    if args.freeze_embeddings and not sampled:
        parser.error(f"--freeze-embeddings applies to lisa/owlore/owlore-fullrank, not --method {args.method}")
    if args.sampling == "fixed" and not args.fixed_layers:
        parser.error("--sampling fixed needs --fixed-layers, e.g. --fixed-layers 0,3,7")
    if args.fixed_layers and args.sampling != "fixed":
        parser.error("--fixed-layers is only used with --sampling fixed")
    if args.fused and args.max_grad_norm:
        parser.error("--fused cannot clip by global norm (--max-grad-norm): the norm is unknown when a parameter steps")
    if args.fused and args.method == "lora":
        parser.error("--fused is for full-weight methods; LoRA adapters are small")
    if args.fsdp and args.chunked_ce:
        parser.error("--chunked-ce reads the head weight outside the model's forward, where --fsdp keeps it "
                     "sharded: drop --chunked-ce (or --lean) under --fsdp")
    for name in ("batch_size", "grad_accum", "seq_len", "gamma", "period", "rank", "update_proj_gap"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("svd_oversample", "svd_power_iters"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.batch_size % args.grad_accum:
        parser.error(f"--batch-size {args.batch_size} is not divisible by --grad-accum {args.grad_accum}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.wandb and importlib.util.find_spec("wandb") is None:
        parser.error(f"--wandb {args.wandb}: the wandb package is not installed (pip install wandb)")
    if args.resume and not args.data:
        parser.error("--resume needs --data: the training data of the run being resumed")
