"""Command-line and config-file arguments of train.py, with the paper's defaults (docs/method.md, "Defaults and where they come from").

Three sources, later ones winning: the arguments saved in the checkpoint being resumed (`--resume`), a
`--config` file, the command line. The first two are turned into command-line tokens, so every value
goes through the same parsing, bounds and choices as the flag itself.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from common.cli import ArgumentParser, number
from common.errors import UserError
from common.plugins import add_plugin_flag, import_plugins, plugin_list, preparse
from model.cli import add_model_flags, check_model_source, device_name
from data.templates import TEMPLATES
from optim.projector import PROJ_TYPES, PROJECTORS, SVD_METHODS
from optim.schedule import SCHEDULES
from sampling.policies import POLICIES
from training.checkpoint import read_trainer_state, resolve_checkpoint
from training.methods import METHODS, SAMPLED_METHODS
from training.step import StepConfig

# Adam's eps of the official runs: galore-torch's GaLoreAdamW (1e-6) for GaLore; HF Trainer's AdamW otherwise.
DEFAULT_EPS = {"galore": 1e-6, "owlore": 1e-6}
HF_ADAMW_EPS = 1e-8
OFFICIAL_MAX_GRAD_NORM = 1.0  # HF Trainer's max_grad_norm, which LMFlow's scripts leave as it is
# Not restored from the resumed run (they say where and how to resume), and flags that may change on
# resume without changing what is trained: evaluation, checkpoint cadence and output formats, memory tricks.
NOT_RESTORED = {"resume", "config", "out", "overwrite", "allow_changes"}
HARMLESS_ON_RESUME = {"eval_every", "eval_data", "eval_limit", "save_every", "keep_checkpoints",
                      "save_format", "device", "ckpt_dir", "grad_ckpt", "chunked_ce", "fsdp", "memory_report",
                      "compile", "plugin"}  # (a resumed run imports its plugins again; one added only registers more choices)

COUNT, NONNEG = number(int, at_least=1), number(int, at_least=0)
POSITIVE, NONNEG_FLOAT = number(float, above=0), number(float, at_least=0)


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices such as 0,3,7, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="train.py", description="Fine-tune a LLaMA-family model with OwLore or a baseline.",
                       allow_abbrev=False)  # (--plugin, --config and --resume are read before the parser is built)
    a = p.add_argument
    a("--config", help="a recipe name (recipes/NAME.yaml: " + ", ".join(recipe_names()) + ") or a YAML/JSON file "
      "with the same keys as the flags; flags override it")
    add_plugin_flag(p)
    # model and data
    a("--model", default="smollm2-135m", help="named config, Meta/Mistral/HF dir or .gguf file")
    a("--data", help="training data (Alpaca/LLM-Adapters JSON(L), LMFlow JSON, chat JSONL, .txt); "
               "default: the commonsense set of data/commonsense.py, built into --out")
    a("--template", default="alpaca", choices=TEMPLATES, help="prompt template of instruction records")
    a("--train-on-prompt", action=argparse.BooleanOptionalAction, default=True,
      help="train on every token, prompt included, as the official run (--no-train-on-prompt masks the prompt)")
    a("--no-pack", action="store_true", help="pad/truncate each record instead of packing")
    a("--seq-len", type=number(int, at_least=2), default=512, help="tokens per training row")
    # method
    a("--method", default="owlore", choices=METHODS, help="what is trained: OwLore, its ablations or a baseline (docs/method.md)")
    a("--gamma", type=COUNT, help="blocks trained at a time (default: 2 for lisa as the official LISA baseline, "
                                   "5 otherwise as the official OwLore script)")
    a("--period", type=COUNT, help="steps between block draws, K (default: 3 for lisa, 50 otherwise; same sources)")
    a("--sampling", choices=POLICIES, help="block sampling policy (sampling/policies.py); "
      "default: uniform for lisa, owlore otherwise")
    a("--fixed-layers", type=int_list, help="blocks for --sampling fixed")
    a("--freeze-embeddings", action="store_true", help="keep embeddings, final norm and head frozen")
    a("--keep-inactive-state", action=argparse.BooleanOptionalAction, default=True,
      help="keep the optimizer state of deactivated blocks, as the official code (--no-keep-inactive-state frees it: "
           "memory bounded by gamma blocks)")
    a("--M", type=POSITIVE, default=13.0, help="outlier threshold multiple of the mean Wanda score")
    a("--scores", help="outlier-ratio cache (JSON); computed and written when missing")
    a("--calib-windows", type=COUNT, default=128, help="calibration windows for the outlier ratios (OWL: 128)")
    a("--calib-seq-len", type=number(int, at_least=2), default=2048, help="tokens per calibration window (OWL: 2048)")
    a("--calib", help="calibration text file (default: the training data)")
    a("--rank", type=COUNT, default=256, help="GaLore rank, as the official script (GaLore's paper: 128)")
    a("--update-proj-gap", type=COUNT, default=100,
      help="steps between projector updates, as the official script (GaLore's paper: 200)")
    a("--galore-scale", type=POSITIVE, default=1.0, help="GaLore update scale, as the official script (GaLore's paper: 0.25)")
    a("--proj-type", default="std", choices=PROJ_TYPES, help="GaLore projection side: std projects the smaller side, reverse_std the larger; left, right or full")
    a("--svd", choices=("auto", *SVD_METHODS),
      help="projector SVD (default: exact, as the official code; randomized with --lean); "
           "auto: randomized for models of >= 1B parameters, exact below")
    a("--projector", default="svd", choices=tuple(PROJECTORS), help="GaLore subspace: SVD of the gradient, or random")
    a("--svd-oversample", type=NONNEG, default=8, help="randomized SVD: extra sketch columns")
    a("--svd-power-iters", type=NONNEG, default=2, help="randomized SVD: power iterations (raise for flat spectra)")
    a("--reproject-moments", action="store_true", help="carry Adam's first moment into each new subspace")
    a("--fp32-moments", action="store_true", help="Adam moments in fp32 for bf16 weights (they can decay)")
    a("--lora-rank", type=COUNT, default=8, help="LoRA rank r (--method lora)")
    a("--lora-alpha", type=POSITIVE, default=16.0, help="LoRA scale alpha; the update is scaled by alpha / r")
    a("--lora-dropout", type=number(float, at_least=0), default=0.05, help="dropout on the LoRA input")
    # optimisation
    a("--lr", type=POSITIVE, default=3e-4, help="peak learning rate")
    a("--eps", type=NONNEG_FLOAT, help=f"Adam eps (default: 1e-6 for galore/owlore as galore-torch, "
                                        f"{HF_ADAMW_EPS:g} otherwise as HF Trainer's AdamW)")
    a("--weight-decay", type=NONNEG_FLOAT, default=0.0, help="AdamW decoupled weight decay")
    a("--schedule", default="linear", choices=SCHEDULES, help="learning-rate schedule after the warmup")
    a("--warmup", type=NONNEG, default=0, help="linear warmup steps from lr 0")
    a("--max-steps", type=COUNT, help="optimizer steps (default: --epochs worth of steps)")
    a("--epochs", type=POSITIVE, default=1.0, help="passes over the training data when --max-steps is not given")
    a("--batch-size", type=COUNT, default=16, help="global batch per optimizer step")
    a("--grad-accum", type=COUNT, default=1, help="micro-batches per optimizer step (--batch-size must divide)")
    a("--max-grad-norm", type=NONNEG_FLOAT, help="global-norm clipping (default: 1.0, the HF Trainer default the "
      "official run inherits; 0 turns it off; off by default with --fused, which cannot clip)")
    a("--fused", action="store_true", help="step each parameter in its grad hook and free the grad")
    a("--chunked-ce", action="store_true", help="cross-entropy in chunks, never the full fp32 logits")
    add_model_flags(p, dtype_default=None)  # --ckpt-dir, --tokenizer, --dtype
    a("--device", type=device_name, help="torch device (default: cuda if available, else cpu)")
    a("--grad-ckpt", action="store_true", help="activation checkpointing per block")
    a("--compile", action=argparse.BooleanOptionalAction,
      help="torch.compile each decoder block (default: on for CUDA, off on CPU, where it did not win; "
      "BENCHMARKS.md; not with --fsdp)")
    a("--fsdp", action="store_true", help="shard weights, gradients and optimizer state over the ranks (FSDP2)")
    a("--reduce-dtype", choices=("fp32", "bf16", "fp16"), help="--fsdp gradient reduction dtype (default: --dtype)")
    a("--memory-report", action=argparse.BooleanOptionalAction, default=True,
      help="simulate the step's memory on fake tensors before training and report it beside the measured peak")
    a("--lean", action="store_true", help="lean-memory preset: fused, chunked CE, grad ckpt, randomized SVD")
    a("--seed", type=NONNEG, default=111, help="seed of the data order, block draws, calibration windows and initialisation")
    # output
    a("--out", default="runs/latest", help="run folder (default: runs/latest; with --resume: the resumed run's)")
    a("--overwrite", action="store_true", help="replace the run that --out already holds")
    a("--save-every", type=NONNEG, default=0, help="checkpoint every N steps (0: only at the end)")
    a("--keep-checkpoints", type=COUNT, default=2, help="complete checkpoints kept (the newest N)")
    a("--resume", help="run folder or checkpoint folder to continue from (its arguments are restored)")
    a("--allow-changes", action="store_true",
      help="with --resume: accept flags that change the run (recorded in config.yaml)")
    a("--save-format", default="hf", choices=("meta", "hf", "gguf", "both", "none"),
      help="final weights: HF folder (default), Meta folder, llama.cpp GGUF (F16; python -m "
           "training.export --format gguf --gguf-type for F32, BF16 or Q8_0), both = meta and hf, none")
    a("--eval-every", type=NONNEG, default=0, help="held-out evaluation every N steps (0: start and end only)")
    a("--eval-data", help="held-out file from data.commonsense (records with task and doc_id)")
    a("--eval-limit", type=COUNT, help="score at most N held-out rows per task")
    a("--wandb", choices=("offline", "online"), help="also log to a Weights & Biases run (offline: no network)")
    return p


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def config_path(name: str) -> Path:
    """--config: a file, or the name of a recipe shipped in recipes/."""
    file = Path(name)
    if not file.exists() and file.suffix == "" and "/" not in name and (RECIPES / f"{name}.yaml").is_file():
        return RECIPES / f"{name}.yaml"
    return file


def load_config_file(path: str) -> dict:
    file = config_path(path)
    if not file.is_file():
        raise UserError(f"--config: {path}: neither a file nor a recipe ({', '.join(recipe_names())})")
    text = file.read_text(encoding="utf-8-sig")  # a byte-order mark is not YAML or JSON
    try:
        values = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{file}: not valid {file.suffix[1:].upper() or 'YAML'}: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise UserError(f"{file}: must hold a mapping of flag names to values")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def as_tokens(parser: argparse.ArgumentParser, values: dict, source: str) -> list[str]:
    """`values` ({dest: value}) as command-line tokens, checked by parsing them alone."""
    actions = {action.dest: action for action in parser._actions if action.option_strings and action.dest not in ("help", "debug")}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise UserError(f"{source}: unknown keys {', '.join(unknown)}")
    tokens = []
    for key, value in values.items():
        flag = actions[key].option_strings[0]
        switch = actions[key]
        if isinstance(switch, argparse._AppendAction):
            items = [] if value is None else value if isinstance(value, list) else [value]
            tokens += [t for item in items for t in (flag, str(item))]
        elif isinstance(switch, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool) and value is not None:
                raise UserError(f"{source}: {key}: expected true or false, got {value!r}")
            if value:
                tokens.append(flag)
            elif value is False and isinstance(switch, argparse.BooleanOptionalAction):
                tokens.append(switch.option_strings[1])  # --no-...
        elif value is not None:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            tokens += [flag, text]
    try:
        parser.parse_args(tokens)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    first = preparse(argv, "--config", "--resume")
    saved_tokens, config_tokens, saved, config = [], [], None, {}
    if first.config:  # read first: a value from the file means what its flag means, `resume:` too
        config = load_config_file(first.config)
        if config.get("config") is not None:
            raise UserError(f"{first.config}: config: a config file cannot name another one")
    resume = first.resume or (None if config.get("resume") is None else str(config["resume"]))
    if resume:
        checkpoint = resolve_checkpoint(resume)
        saved = {k: v for k, v in (read_trainer_state(checkpoint).get("args") or {}).items() if k not in NOT_RESTORED}
    import_plugins([*plugin_list((saved or {}).get("plugin"), "--resume"),  # before the parser takes its choices
                    *plugin_list(config.get("plugin"), first.config), *first.plugin])
    parser = build_parser()
    if saved is not None:
        known = {action.dest for action in parser._actions}
        saved = {k: v for k, v in saved.items() if k in known}  # a flag this version no longer has
        saved_tokens = as_tokens(parser, saved, f"{checkpoint / 'trainer.pt'} (saved arguments)")
        parser.set_defaults(out=str(checkpoint.parent))
    if first.config:
        config_tokens = as_tokens(parser, config, first.config)
    args = parser.parse_args([*saved_tokens, *config_tokens, *argv])
    args.plugin = import_plugins(args.plugin or [])  # each once (the resumed run's, the config's, the flags')
    apply_presets(args)
    check_consistency(args)
    args.changed_on_resume = {}
    if saved is not None:
        changed = {k: (v, getattr(args, k)) for k, v in saved.items()
                   if k not in HARMLESS_ON_RESUME and getattr(args, k) != v}
        if changed and not args.allow_changes:
            listed = ", ".join(f"--{k.replace('_', '-')} {old} -> {new}" for k, (old, new) in changed.items())
            raise UserError(f"--resume {resume}: these flags change the run being resumed: {listed}; "
                            "pass --allow-changes to continue with them")
        args.changed_on_resume = changed
    return args


def apply_presets(args: argparse.Namespace) -> None:
    """Fill the defaults that depend on other flags (an explicit flag always wins)."""
    method = METHODS[args.method]
    if args.lean:
        args.fused = args.chunked_ce = args.grad_ckpt = True
    if args.svd is None:
        args.svd = "randomized" if args.lean else "exact"
    if args.max_grad_norm is None:
        args.max_grad_norm = 0.0 if args.fused else OFFICIAL_MAX_GRAD_NORM
    if args.gamma is None:
        args.gamma = method.default_gamma
    if args.period is None:
        args.period = method.default_period
    if args.sampling is None:
        args.sampling = method.default_sampling
    if args.eps is None:
        args.eps = DEFAULT_EPS.get(args.method, HF_ADAMW_EPS)


RANDOMIZED_SVD_FROM = 10**9  # parameters; each newly sampled 7B block refreshes 7 projectors at once


def resolve_svd(svd: str, n_params: int) -> str:
    """--svd auto -> randomized for a model of >= 1B parameters, exact below (BENCHMARKS.md: refresh share)."""
    if svd != "auto":
        return svd
    return "randomized" if n_params >= RANDOMIZED_SVD_FROM else "exact"


def step_config(args: argparse.Namespace) -> StepConfig:
    """The flags a training step reads (training.step), frozen; library code never sees the namespace."""
    return StepConfig(**{f.name: getattr(args, f.name) for f in fields(StepConfig)})


def check_consistency(args: argparse.Namespace) -> None:
    """Flags that are valid alone but not together; cheap checks of named files before any work."""
    sampled = METHODS[args.method].sampled
    if args.sampling and not sampled:
        raise UserError(f"--sampling: applies to {'/'.join(SAMPLED_METHODS)}, not --method {args.method}")
    if args.freeze_embeddings and not sampled:
        raise UserError(f"--freeze-embeddings: applies to {'/'.join(SAMPLED_METHODS)}, not --method {args.method}")
    needs_fixed = sampled and "fixed_layers" in POLICIES[args.sampling].needs
    if needs_fixed and not args.fixed_layers:
        raise UserError(f"--sampling {args.sampling}: needs --fixed-layers, e.g. --fixed-layers 0,3,7")
    if args.fixed_layers and not needs_fixed:
        raise UserError("--fixed-layers: only used with --sampling fixed")
    if args.fused and args.max_grad_norm:
        raise UserError("--fused: cannot clip by global norm (--max-grad-norm): the norm is unknown when a parameter steps")
    if args.fused and METHODS[args.method].adapters:
        raise UserError("--fused: is for full-weight methods; LoRA adapters are small")
    if args.compile and args.fsdp:
        raise UserError("--compile: not with --fsdp or several ranks; pass --no-compile")
    if args.max_steps and args.warmup > args.max_steps:
        raise UserError(f"--warmup: {args.warmup} steps exceed --max-steps {args.max_steps}")
    if args.batch_size % args.grad_accum:
        raise UserError(f"--batch-size: {args.batch_size} is not divisible by --grad-accum {args.grad_accum}")
    if args.dtype == "fp16":
        raise UserError("--dtype fp16: not for training (it would need fp32 optimizer state and loss scaling); "
                        "use bf16 or fp32")
    if args.wandb and importlib.util.find_spec("wandb") is None:
        raise UserError(f"--wandb {args.wandb}: the wandb package is not installed (pip install wandb)")
    for flag, value in (("--data", args.data), ("--eval-data", args.eval_data), ("--calib", args.calib)):
        if value and not Path(value).is_file():
            raise UserError(f"{flag}: {value}: no such file")
    check_model_source(args.model)
    if args.lora_dropout >= 1:
        raise UserError(f"--lora-dropout: must be < 1, got {args.lora_dropout}")
    if args.scores and Path(args.scores).is_dir():
        raise UserError(f"--scores {args.scores}: is a folder; name a file")


def write_config(args: argparse.Namespace, out: Path, resumed_from: Path | None = None, resolved: dict | None = None,
                 ) -> Path:
    """`out/config.yaml`: the resolved arguments (loadable with --config; `resolved` replaces some), and every
    change made on resume."""
    from common.io import atomic_write

    path = out / "config.yaml"
    notes = [line for line in path.read_text().splitlines() if line.startswith("# resumed")] if path.is_file() else []
    if args.changed_on_resume:
        changes = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in args.changed_on_resume.items())
        notes.append(f"# resumed from {resumed_from} with --allow-changes: {changes}")
    values = {k: v for k, v in {**vars(args), **(resolved or {})}.items()
              if k not in NOT_RESTORED | {"changed_on_resume"} or k == "out"}
    text = "\n".join(["# train.py arguments of this run, as resolved (usable with --config)", *notes,
                      yaml.safe_dump(values, sort_keys=False)])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
