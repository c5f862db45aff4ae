"""Fine-tune a LLaMA-family model with OwLore (or a baseline) — the algorithm, top to bottom.

    python train.py --model llama2-7b --ckpt-dir /path/to/llama-2-7b --data commonsense_170k.json

1. load the pre-trained model;
2. tokenise the training data into fixed-length blocks;
3. (LISA / OwLore) score every decoder block by its share of outlier weights and build the sampler;
4. build the optimizer: GaLore for the 2-D block weights (galore, owlore), AdamW for the rest;
5. loop: every `period` steps draw `gamma` blocks, train only them (+ embeddings, norm, head),
   free the optimizer state of blocks that left; checkpoint, evaluate, log;
6. save the fine-tuned weights in Meta and/or HF format.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from common import cli
from common.errors import Stopped, UserError
from common.outputs import check_output_folder, clear_output_folder
from data import BatchLoader, build_dataset, load_records
from data.commonsense import TRAIN_FILE, build_commonsense
from model import load_model
from model.load import check_tokenizer_fits
from model.cli import DTYPES
from optim import GaLoreAdamW, lr_lambda
from optim.fused import FusedStepHandle
from sampling import (POLICIES, CacheError, LayerSampler, block_alphas, calibration_windows, load_or_compute_ratios,
                      plot_sampling_counts, read_documents)
from sampling.calibration import training_documents
from training.args import parse_args, resolve_svd, step_config, write_config
from training.checkpoint import (CheckpointError, checkpoints, clear_run, is_legacy, load_checkpoint,
                                 read_trainer_state, resolve_checkpoint, save_checkpoint)
from training.compile import compile_blocks, use_compile
from training.distributed import World, close_world, init_world, on_main, sum_scalar, together
from training.fingerprints import check_fingerprints, run_fingerprints
from training.fsdp import shard_model
from training.heldout import HeldOut
from training.inputs import check_providers, provide_inputs, register_input
from training.legacy_checkpoint import load_legacy_checkpoint
from training.memory_report import MemoryReport, format_report
from training.memory_cache import memory_report
from training.methods import METHODS, active_block_indices
from training.out_folder import check_out_folder, own_out
from training.stop import SIGNALS, StopFlag
from training.metrics import current_memory_bytes, peak_memory_bytes
from training.runlog import RunLog
from training.export_writer import export_adapter, export_model
from training.step import (StepConfig, apply_gradients, backward_micro_batches, build_optimizer, gradient_norm,
                           start_period, trainable_with_grad)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)  # flags, config file, the resumed run's arguments: all checked here
    with own_out(args), StopFlag(Path(args.out)) as stop:  # one run per --out; SIGINT/SIGTERM (see StopFlag)
        context = start(args)  # 1. the out folder, the process group, the data records, the pre-trained model
        run = prepare(context)  # 2-4. batches, the block sampler, the optimizer; the resumed state; the logs
        stop.armed = True  # from here a signal finishes the step, saves and stops
        train(run, stop)  # 5.
        signum = stop.requested
        finish(run, stopped=signum is not None)  # 6.
        run.metrics.close()
        close_world(context.world)
    if signum is not None:  # exit status 128 + signal, so `train.py && next-step` does not go on
        raise stopped_after_checkpoint(run, signum)


@dataclass(frozen=True)
class Context:
    """The run's settings, process group and pre-trained model: what every later phase builds on."""

    args: argparse.Namespace  # as parsed; the values resolved since are the fields below
    out: Path
    resumed_from: Path | None
    data: str  # --data, or the commonsense set built into --out
    step: StepConfig  # --svd resolved for this model
    world: World
    distributed: bool  # FSDP2 DTensors: sharded (--fsdp) or replicated (data parallel)
    device: torch.device
    dtype: torch.dtype
    say: Callable[..., None]
    records: list[dict]
    eval_records: list[dict] | None
    model: torch.nn.Module
    tokenizer: object
    fingerprints: dict  # of the inputs (training.fingerprints), recorded in each checkpoint

    def resolved_args(self) -> dict:
        return {**vars(self.args), "data": self.data, "svd": self.step.svd}


@dataclass
class Run:
    """What the loop and the export work on."""

    context: Context
    loader: BatchLoader
    total_steps: int
    sampler: LayerSampler | None
    groups: list[dict]
    optimizer: GaLoreAdamW
    fused: FusedStepHandle | None
    scheduler: torch.optim.lr_scheduler.LambdaLR
    first_step: int
    estimate: MemoryReport | None
    heldout: HeldOut | None
    metrics: RunLog


def start(args: argparse.Namespace) -> Context:
    """The out folder (checked on every rank before any rank writes), the process group, the data, the model."""
    if METHODS[args.method].sampled:
        check_providers(POLICIES[args.sampling])  # the run inputs the policy names, before any work
    out = Path(args.out)
    resumed_from = resolve_checkpoint(args.resume) if args.resume else None
    replace_run = check_out_folder(out, resumed_from, args.overwrite)
    world, device = open_world(args.device, args.fsdp)
    distributed = args.fsdp or world.size > 1
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(args.seed)
    say = tqdm.write if world.is_main else (lambda *a, **k: None)  # above the progress bar, not into it
    if world.is_main and replace_run:
        clear_run(out)
    data = args.data or default_data(out, say)
    if world.is_main:
        write_config(args, out, resumed_from, resolved={"data": data})
    with cli.warnings_to(say):  # (fields ignored: a plain line)
        records = load_records(data)  # bad data files fail before the model loads
        eval_records = load_records(args.eval_data) if args.eval_data else None
    model, tokenizer = load_pretrained(args, world, device, dtype, distributed)
    fingerprints = on_main(lambda: run_fingerprints(data, args.calib, tokenizer, model), world)  # (rank 0: weights)
    if resumed_from:  # the same inputs as the checkpoint's, before any work on them
        check_fingerprints(resumed_from, read_trainer_state(resumed_from).get("fingerprints"), fingerprints,
                           args.allow_changes, say)
    step = step_config(args)
    step = replace(step, svd=resolve_svd(step.svd, sum(p.numel() for p in model.parameters())))
    return Context(args, out, resumed_from, data, step, world, distributed, device, dtype, say, records, eval_records,
                   model, tokenizer, fingerprints)


def open_world(device_flag: str | None, fsdp: bool) -> tuple[World, torch.device]:
    device = torch.device(device_flag or ("cuda" if torch.cuda.is_available() else "cpu"))
    world = init_world(device.type, group=fsdp)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    return world, device


def default_data(out: Path, say: Callable[..., None]) -> str:
    """The embedded commonsense set: the real train splits of its 8 tasks, held-out rows kept out."""
    data = out / "commonsense" / TRAIN_FILE
    if not data.is_file():
        build_commonsense(out / "commonsense")
    say(f"data: no --data given; training on the commonsense set built in {data} (python -m data.commonsense)")
    return str(data)


def load_pretrained(args: argparse.Namespace, world: World, device: torch.device, dtype: torch.dtype,
                    distributed: bool) -> tuple[torch.nn.Module, object]:
    """1. The pre-trained model. (Distributed: rank 0 alone reads it, into host memory; the other ranks build
    it on the meta device, and sharding sends every rank its part from rank 0, tensor by tensor.)"""

    def load(weights: bool):
        return load_model(args.model, device="cpu" if distributed else device, dtype=dtype, ckpt_dir=args.ckpt_dir,
                          tokenizer=args.tokenizer, weights=weights)

    model, tokenizer = together(lambda: load(world.is_main or not distributed), world)  # an error stops every rank
    if tokenizer is None:
        raise UserError(f"--model {args.model}: the checkpoint has no tokenizer file; training needs one")
    model.train()
    model.gradient_checkpointing = args.grad_ckpt
    check_fits_model(args, model.config, tokenizer)
    return model, tokenizer


def check_fits_model(args: argparse.Namespace, config, tokenizer) -> None:
    """Flags and tokenizer against the loaded model, before any work on it (calibration, the first step)."""
    check_tokenizer_fits(tokenizer, config, args.model)
    if args.gamma > config.n_layers and METHODS[args.method].sampled:
        raise UserError(f"--gamma: {args.gamma} exceeds the model's {config.n_layers} blocks")
    outside = [i for i in args.fixed_layers or [] if not 0 <= i < config.n_layers]
    if outside and METHODS[args.method].sampled:
        raise UserError(f"--fixed-layers: {outside} not among the model's blocks 0..{config.n_layers - 1}")
    calibrates = METHODS[args.method].sampled and "ratios" in POLICIES[args.sampling].needs
    for flag, length in (("--seq-len", args.seq_len), ("--calib-seq-len", args.calib_seq_len if calibrates else 0)):
        if length > config.max_seq_len:
            raise UserError(f"{flag}: {length} tokens exceed the model's context of {config.max_seq_len}")


def prepare(c: Context) -> Run:
    """2-4. Batches, the block sampler and the optimizer; where a resumed run was; the memory estimate; logs."""
    args = c.args
    loader, total_steps = batches(c)
    sampler = build_sampler(c) if METHODS[args.method].sampled else None
    groups, optimizer, fused = build_optimizer(c.model, c.step, shard_units(c) if c.distributed else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.schedule, args.warmup, total_steps))
    if use_compile(args.compile, c.device, c.distributed):  # (after LoRA wrapped the linears)
        compile_blocks(c.model)
    step = resume(c, optimizer, scheduler, loader, sampler) if c.resumed_from else 0
    estimate = estimate_memory(c) if c.world.is_main and c.args.memory_report else None  # (the other ranks would only repeat it)
    heldout = (HeldOut(c.eval_records, c.tokenizer, args.eval_limit, template=args.template, progress=c.world.is_main)
               if c.eval_records else None)
    metrics = RunLog(c.out, enabled=c.world.is_main, wandb=args.wandb, config=c.resolved_args(), say=c.say,
                     resume_step=step if c.resumed_from else None)  # jsonl, TensorBoard, W&B
    run = Run(c, loader, total_steps, sampler, groups, optimizer, fused, scheduler, step, estimate, heldout, metrics)
    if heldout and evaluates(c) and step == 0:
        metrics.write(step=0, **heldout.evaluate(c.model))
    return run


def batches(c: Context) -> tuple[BatchLoader, int]:
    """2. Training data: fixed-length blocks, a seeded order every rank agrees on; and the number of steps."""
    args, world = c.args, c.world
    try:
        with cli.warnings_to(c.say):  # its statistics (rows dropped, truncated): plain lines of the run's log
            dataset = build_dataset(c.records, c.tokenizer, args.seq_len, pack=not args.no_pack,
                                    mask_prompt=not args.train_on_prompt, template=args.template)
    except ValueError as err:
        raise UserError(f"{c.data}: {err}") from None
    if len(dataset) < args.batch_size:
        raise UserError(f"{c.data}: {len(dataset)} training rows of {args.seq_len} tokens, fewer than one batch "
                        f"(--batch-size {args.batch_size}); lower --batch-size or add data")
    if world.size > 1 and args.batch_size % (world.size * args.grad_accum):
        raise UserError(f"--batch-size: {args.batch_size} must split over {world.size} ranks x {args.grad_accum} micro-batches")
    loader = BatchLoader(dataset, batch_size=args.batch_size // world.size, seed=args.seed,
                         rank=world.rank, world_size=world.size)
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * loader.batches_per_epoch))
    if args.warmup > total_steps:
        raise UserError(f"--warmup: {args.warmup} steps exceed the run's {total_steps} steps")
    c.say(f"data: {len(c.records)} records -> {len(dataset)} blocks of {args.seq_len} tokens; {total_steps} steps")
    return loader, total_steps


def build_sampler(c: Context) -> LayerSampler:
    """3. Layer sampling: the policy's per-block weights -> probabilities: outlier ratios D_l of the pre-trained
    blocks (OwLore), uniform (LISA), ...; a dynamic policy re-weighs the blocks every period. The run inputs
    the policy names come from their providers (training.inputs)."""
    args, policy = c.args, POLICIES[c.args.sampling]
    inputs = provide_inputs(policy, c)
    try:
        return LayerSampler(policy, args.gamma, args.period, args.seed, c.model.config.n_layers, **inputs)
    except ValueError as err:  # e.g. no block has outliers at this M
        hint = f"; lower --M (now {args.M})" if "ratios" in policy.needs else ""
        raise UserError(f"--sampling {args.sampling}: {err}{hint}") from None


@register_input("ratios")
def outlier_ratios(c: Context) -> list[float]:
    """Outlier ratios D_l (%), from the cache (--scores, or out/outlier_scores.json) or computed on rank 0."""
    args = c.args
    scores = Path(args.scores) if args.scores else c.out / "outlier_scores.json"

    def windows() -> list[torch.Tensor]:
        documents = (read_documents(args.calib) if args.calib else  # else: the training stream itself
                     training_documents(c.records, c.tokenizer, args.calib_windows * args.calib_seq_len,
                                        args.template, args.seed))
        return calibration_windows(documents, c.tokenizer, args.calib_windows, args.calib_seq_len,
                                   seed=args.seed).to(c.model.output.weight.device).split(4)

    try:  # the cache must match these tokens (a --scores one without --calib: any); stale: default recomputed, --scores refused
        ratios = on_main(lambda: load_or_compute_ratios(  # (rank 0 holds the weights)
            c.model, args.model, windows if args.scores and not args.calib else windows(), args.M, scores,
            calibration_source=args.calib or c.data, on_stale="error" if args.scores else "recompute",
            progress=True, fingerprint=c.fingerprints["weights"]), c.world)  # (start's pass over the weights)
    except CacheError as err:
        raise UserError(f"{'--scores ' if args.scores else ''}{err}") from None
    c.say("outlier ratios D_l (%): " + " ".join(f"{r:.3f}" for r in ratios))
    return ratios


@register_input("alphas")
def htsr_alphas(c: Context) -> list[float]:
    alphas = on_main(lambda: block_alphas(c.model, progress=True)[0], c.world)
    c.say("HT-SR alphas: " + " ".join(f"{a:.3f}" for a in alphas))
    return alphas


@register_input("fixed_layers")
def fixed_layers(c: Context) -> list[int] | None:
    return c.args.fixed_layers


def shard_units(c: Context) -> Callable[[list[dict]], list[dict]]:
    """4. Distributed: every block and the root an FSDP unit; the optimizer's groups then hold DTensors."""
    reduce_dtype = DTYPES[c.args.reduce_dtype] if c.args.reduce_dtype else None
    return lambda groups: shard_model(c.model, groups, c.device, c.world.size, reduce_dtype,
                                      replicate=not c.args.fsdp, from_rank0=True)


def resume(c: Context, optimizer: GaLoreAdamW, scheduler, loader: BatchLoader, sampler: LayerSampler | None) -> int:
    """Weights, optimizer, scheduler, sampler, data position and RNG, exactly where they were; the step.
    A checkpoint written by any number of processes resumes on any other (DCP reshards)."""
    if is_legacy(c.resumed_from):  # model.pt of an earlier version: one process, positions not names
        if c.distributed:
            raise UserError(f"--resume {c.resumed_from}: a checkpoint of an earlier version (model.pt) resumes in "
                            "one process without --fsdp only; its next checkpoint resumes anywhere")
        state = load_legacy_checkpoint(c.resumed_from, c.model, optimizer)
    else:
        state = load_checkpoint(c.resumed_from, c.model, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    try:  # the data (its row count) and the sampler's configuration must be the checkpoint's
        loader.load_state_dict(state["loader"])
        if sampler:
            sampler.load_state_dict(state["sampler"])
    except ValueError as err:
        raise CheckpointError(f"--resume {c.resumed_from}: {err}") from None
    c.say(f"resumed from {c.args.resume} at step {state['step']}")
    return state["step"]


def estimate_memory(c: Context) -> MemoryReport:
    """The memory of one step, simulated on fake tensors, printed before the first step."""
    estimate, cached = memory_report(c.model.config, c.step, c.dtype, world_size=c.world.size, max_micro_batches=2)
    micro_batch = c.step.batch_size // (c.world.size * c.step.grad_accum)
    unsharded = " of an unsharded rank (per-rank --fsdp numbers: python -m bench.fsdp_memory)" if c.args.fsdp else ""
    c.say(f"memory of one step{unsharded} of {c.step.method} ({c.dtype}, micro-batch {micro_batch}x{c.step.seq_len}), "
          f"simulated on fake tensors{' (read from the cache)' if cached else ''} in {estimate.seconds:.1f} s:\n"
          + format_report(estimate))
    return estimate


def evaluates(c: Context) -> bool:
    return c.world.is_main or c.distributed  # an FSDP forward needs every rank


def train(run: Run, stop: StopFlag) -> None:
    """5. The loop: a step, its log line, held-out evaluation and checkpoints as asked; a signal saves and stops."""
    c, args = run.context, run.context.args
    if c.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(c.device)
    progress = tqdm(range(run.first_step, run.total_steps), initial=run.first_step, total=run.total_steps,
                    disable=not c.world.is_main)
    for step in progress:
        record = train_step(run, step)
        if step + 1 == run.first_step + 2 and run.estimate:
            c.say("measured after 2 steps:\n" + format_report(run.estimate, record["peak_memory"]))
        if run.heldout and args.eval_every and (step + 1) % args.eval_every == 0 and evaluates(c):
            record.update(run.heldout.evaluate(c.model))
        run.metrics.write(**record)
        blocks = {} if record["active_blocks"] is None else {"blocks": ",".join(map(str, record["active_blocks"]))}
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                             tok_s=f"{record['tokens_per_s']:.0f}", **blocks)
        if stop.requested or step + 1 == run.total_steps or (args.save_every and (step + 1) % args.save_every == 0):
            save(run, step + 1)
        if stop.requested:
            return
    evaluated_at_end = args.eval_every and run.total_steps % args.eval_every == 0
    if run.heldout and evaluates(c) and not evaluated_at_end:
        run.metrics.write(step=run.total_steps, **run.heldout.evaluate(c.model))


def train_step(run: Run, step: int) -> dict:
    """One optimizer step (a new draw of blocks at each period's start); its record for the logs."""
    c, config = run.context, run.context.step
    if run.sampler and (step % config.period == 0 or step == run.first_step):
        start_period(c.model, run.optimizer, run.sampler.active_layers(step, c.model), config)
    started = time.perf_counter()
    loss, n_tokens = accumulate_gradients(c.model, run.loader, c.world, c.device, config.grad_accum, config.chunked_ce,
                                          config.fused)
    if not math.isfinite(loss):  # every rank sees the same summed loss, so every rank stops here
        raise diverged(f"loss is {loss}", step + 1, c.out)
    grad_norm = gradient_norm(trainable_with_grad(run.groups), config.max_grad_norm)  # None with --fused: stepped
    if grad_norm is not None and not math.isfinite(grad_norm):  # (summed over ranks by FSDP in backward)
        raise diverged(f"gradient norm is {grad_norm}", step + 1, c.out)
    lr = run.scheduler.get_last_lr()[0]  # the lr this step used (--fused stepped with it in backward)
    apply_gradients(run.optimizer)
    run.scheduler.step()
    seconds = time.perf_counter() - started
    return dict(step=step + 1, loss=loss, lr=lr, grad_norm=grad_norm,
                tokens_per_s=n_tokens / seconds, step_s=seconds,
                active_blocks=active_block_indices(c.model) if run.sampler else None,
                peak_memory=peak_memory_bytes(c.device), memory=current_memory_bytes(c.device))


def save(run: Run, step: int) -> None:
    """A checkpoint after `step` steps, of finite weights only (checked on every rank: the verdicts agree)."""
    c = run.context
    check_weights(c.model, step, c.out)
    saved_args = {k: v for k, v in c.resolved_args().items() if k != "changed_on_resume"}
    state = dict(step=step, scheduler=run.scheduler.state_dict(), loader=run.loader.state_dict(),
                 sampler=run.sampler.state_dict() if run.sampler else None, args=saved_args,
                 fingerprints=c.fingerprints)
    c.say(f"checkpoint: {save_checkpoint(c.out, step, c.model, run.optimizer, state, keep=c.args.keep_checkpoints)}")


def finish(run: Run, stopped: bool) -> None:
    """6. How often each block was drawn; the fine-tuned weights, unless a signal stopped the run."""
    c = run.context
    if run.fused:
        run.fused.remove()
    if run.sampler and c.world.is_main:
        expected = None if run.sampler.policy.dynamic else run.sampler.inclusion_probabilities("monte_carlo")
        plot_sampling_counts(c.out / "sampling_counts.png", run.sampler.counts, expected,
                             title=f"{c.args.method}: periods each block was active")
    if c.args.save_format != "none" and not stopped:
        export(c)


def export(c: Context) -> None:
    """The weights in formats other tools open: the LoRA adapter (PEFT) first, then the merged weights, by the
    writer `python -m training.export` uses (gathered block by block on several ranks; every rank calls this)."""
    args, out = c.args, c.out
    if c.world.is_main:  # the run's own folders, cleared (a resumed run's old export: only with --overwrite)
        for name in export_folders(args):
            clear_output_folder(check_output_folder(out / name, "--out", overwrite=True))
    if METHODS[args.method].adapters:
        export_adapter(c.model, out / "final-peft", base_model=str(args.model), dropout=args.lora_dropout)
        c.say(f"saved the LoRA adapter (PEFT) to {out / 'final-peft'}")
    for fmt in (("meta", "hf") if args.save_format == "both" else (args.save_format,)):
        export_model(c.model, out / f"final-{fmt}", fmt, c.tokenizer)
        c.say(f"saved {fmt} weights to {out / f'final-{fmt}'}")


def export_folders(args: argparse.Namespace) -> list[str]:
    """The folders the final export writes: the LoRA adapter, then the merged weights in each format."""
    formats = ("meta", "hf") if args.save_format == "both" else (args.save_format,)
    return ["final-peft"] * METHODS[args.method].adapters + [f"final-{fmt}" for fmt in formats]


def accumulate_gradients(model: torch.nn.Module, loader: BatchLoader, world, device: torch.device, grad_accum: int,
                         chunked_ce: bool, fused: bool = False) -> tuple[float, int]:
    """Forward/backward over `grad_accum` micro-batches of this rank's share of the global batch.

    The loss is the mean over every target token of the global batch, so accumulation and data
    parallelism (gradients summed over ranks) give the same gradient as one big batch.
    """
    input_ids, labels = loader.next_batch()
    input_ids, labels = input_ids.to(device), labels.to(device)
    targets = labels[:, 1:]
    n_targets = sum_scalar(int((targets != -100).sum()), world, device)
    if n_targets == 0:
        raise UserError("--data: a training batch has no target tokens (every label is masked)")
    total = backward_micro_batches(model, input_ids, labels, n_targets, grad_accum, chunked_ce, fused)
    return sum_scalar(total, world, device) / n_targets, input_ids.numel() * world.size


def check_weights(model: torch.nn.Module, step: int, out: Path) -> None:
    """Refuse to save weights that are not finite."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise diverged(f"weight {name} is not finite", step, out)


def diverged(what: str, step: int, out: Path) -> UserError:
    """The error for a run that blew up: nothing was saved, and what the last good checkpoint is."""
    found = checkpoints(out)
    kept = f"the newest checkpoint {found[-1]} is untouched" if found else f"{out} holds no checkpoint"
    return UserError(f"step {step}: {what}; stopped without saving ({kept}); try a lower --lr")


def stopped_after_checkpoint(run: Run, signum: int) -> Stopped:
    """What a stop by signal in the loop wrote (the checkpoint of the step it finished) and did not."""
    c, newest = run.context, checkpoints(run.context.out)[-1]
    exports = (f" ({', '.join(export_folders(c.args))})" if c.args.save_format != "none" else "")
    return Stopped(f"by {SIGNALS[signum]} after step {int(newest.name.removeprefix('step-'))}: wrote the checkpoint "
                   f"{newest}; the final evaluation and export{exports} were not done; resume with --resume {c.out}",
                   signum)


if __name__ == "__main__":
    cli.run(main)
