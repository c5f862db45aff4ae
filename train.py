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

import math
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common import cli
from common.errors import UserError
from data import BatchLoader, build_dataset, load_records
from data.commonsense import TRAIN_FILE, build_commonsense
from model import load_model, save_model
from model.cli import DTYPES
from model.peft_format import write_peft_adapter
from optim import lr_lambda, merge_lora
from sampling import (POLICIES, CacheError, LayerSampler, block_alphas, calibration_windows, load_or_compute_ratios,
                      plot_sampling_counts, read_documents)
from sampling.calibration import training_documents
from training.args import parse_args, resolve_svd, write_config
from training.checkpoint import checkpoints, clear_run, load_checkpoint, resolve_checkpoint, run_outputs, save_checkpoint
from training.distributed import close_world, init_world, on_main, sum_scalar, together
from training.fsdp import shard_model
from training.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint
from training.sharded_export import export_peft_sharded, export_sharded
from training.heldout import HeldOut
from training.memory import format_report, simulate_memory
from training.methods import METHODS, active_block_indices
from training.metrics import current_memory_bytes, peak_memory_bytes
from training.runlog import RunLog
from training.step import (apply_gradients, backward_micro_batches, build_optimizer, gradient_norm, start_period,
                           trainable_with_grad)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)  # flags, config file, the resumed run's arguments: all checked here
    method = METHODS[args.method]
    out = Path(args.out)
    resumed_from = resolve_checkpoint(args.resume) if args.resume else None
    replace_run = check_out_folder(out, resumed_from, args.overwrite)  # every rank, before any rank writes
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    world = init_world(device.type, group=args.fsdp)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    distributed = args.fsdp or world.size > 1  # FSDP2 DTensors: sharded (--fsdp) or replicated (data parallel)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(args.seed)
    say = print if world.is_main else (lambda *a, **k: None)
    if world.is_main and replace_run:
        clear_run(out)
    if not args.data:  # the embedded commonsense set: the real train splits of its 8 tasks, held-out rows kept out
        args.data = str(out / "commonsense" / TRAIN_FILE)
        if not Path(args.data).is_file():
            build_commonsense(out / "commonsense")
        say(f"data: no --data given; training on the commonsense set built in {args.data} (python -m data.commonsense)")
    if world.is_main:
        write_config(args, out, resumed_from)
    records = load_records(args.data)  # bad data files fail before the model loads
    eval_records = load_records(args.eval_data) if args.eval_data else None

    # 1. The pre-trained model. (Distributed: rank 0 alone reads it, into host memory; the other ranks build
    #    it on the meta device, and sharding below sends every rank its part from rank 0, tensor by tensor.)
    def load(weights: bool):
        return load_model(args.model, device="cpu" if distributed else device, dtype=dtype, ckpt_dir=args.ckpt_dir,
                          tokenizer=args.tokenizer, weights=weights)

    model, tokenizer = together(lambda: load(world.is_main or not distributed), world)  # an error stops every rank
    if tokenizer is None:
        raise UserError(f"--model {args.model}: the checkpoint has no tokenizer file; training needs one")
    model.train()
    model.gradient_checkpointing = args.grad_ckpt
    resolve_svd(args, sum(p.numel() for p in model.parameters()))
    n_layers = model.config.n_layers
    if args.gamma > n_layers and method.sampled:
        raise UserError(f"--gamma: {args.gamma} exceeds the model's {n_layers} blocks")

    # 2. Training data: fixed-length blocks, a seeded order every rank agrees on.
    try:
        dataset = build_dataset(records, tokenizer, args.seq_len, pack=not args.no_pack,
                                mask_prompt=not args.train_on_prompt, template=args.template)
    except ValueError as err:
        raise UserError(f"{args.data}: {err}") from None
    if len(dataset) < args.batch_size:
        raise UserError(f"{args.data}: {len(dataset)} training rows of {args.seq_len} tokens, fewer than one batch "
                        f"(--batch-size {args.batch_size}); lower --batch-size or add data")
    if world.size > 1 and args.batch_size % (world.size * args.grad_accum):
        raise UserError(f"--batch-size: {args.batch_size} must split over {world.size} ranks x {args.grad_accum} micro-batches")
    loader = BatchLoader(dataset, batch_size=args.batch_size // world.size, seed=args.seed,
                         rank=world.rank, world_size=world.size)
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * loader.batches_per_epoch))
    say(f"data: {len(records)} records -> {len(dataset)} blocks of {args.seq_len} tokens; {total_steps} steps")

    # 3. Layer sampling: the policy's per-block weights -> probabilities: outlier ratios D_l of the pre-trained
    #    blocks (OwLore), uniform (LISA), ...; a dynamic policy re-weighs the blocks every period.
    sampler = None
    if method.sampled:
        policy, inputs = POLICIES[args.sampling], {}
        if "ratios" in policy.needs:
            scores = Path(args.scores) if args.scores else out / "outlier_scores.json"
            source = args.calib or args.data

            def windows() -> list[torch.Tensor]:
                documents = (read_documents(args.calib) if args.calib else  # else: the training stream itself
                             training_documents(records, tokenizer, args.calib_windows * args.calib_seq_len,
                                                args.template, args.seed))
                return calibration_windows(documents, tokenizer, args.calib_windows, args.calib_seq_len,
                                           seed=args.seed).to(model.output.weight.device).split(4)

            try:  # a --calib named must match the cache's tokens; a stale default cache is recomputed, a --scores one refused
                inputs["ratios"] = on_main(lambda: load_or_compute_ratios(  # (rank 0 holds the weights)
                    model, args.model, windows() if args.calib else windows, args.M, scores, calibration_source=source,
                    on_stale="error" if args.scores else "recompute"), world)
            except CacheError as err:
                raise UserError(f"{'--scores ' if args.scores else ''}{err}") from None
            say("outlier ratios D_l (%): " + " ".join(f"{r:.3f}" for r in inputs["ratios"]))
        if "alphas" in policy.needs:
            inputs["alphas"] = on_main(lambda: block_alphas(model)[0], world)
            say("HT-SR alphas: " + " ".join(f"{a:.3f}" for a in inputs["alphas"]))
        if "fixed_layers" in policy.needs:
            inputs["fixed_layers"] = args.fixed_layers
        try:
            sampler = LayerSampler(policy, args.gamma, args.period, args.seed, n_layers, **inputs)
        except ValueError as err:  # e.g. no block has outliers at this M
            hint = f"; lower --M (now {args.M})" if "ratios" in policy.needs else ""
            raise UserError(f"--sampling {args.sampling}: {err}{hint}") from None

    # 4. Optimizer: GaLore groups for 2-D block weights (galore, owlore), AdamW for everything else.
    shard = None
    if distributed:  # every block and the root an FSDP unit; the groups then hold the DTensor parameters
        reduce_dtype = DTYPES[args.reduce_dtype] if args.reduce_dtype else None
        shard = lambda groups: shard_model(model, groups, device, world.size, reduce_dtype,  # noqa: E731
                                           replicate=not args.fsdp, from_rank0=True)
    groups, optimizer, fused = build_optimizer(model, args, shard)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.schedule, args.warmup, total_steps))

    # Resume: weights, optimizer, scheduler, sampler, data position and RNG, exactly where they were.
    step = 0
    if resumed_from:
        if (resumed_from / "shards").is_dir() != distributed:  # DCP shards (several ranks or --fsdp), or model.pt
            how = ("by one process without --fsdp; resume it so" if distributed else
                   "by several ranks or with --fsdp; resume it with --fsdp (on any number of processes) or under torchrun")
            raise UserError(f"--resume {resumed_from}: the checkpoint was written {how}")
        state = (load_sharded_checkpoint if distributed else load_checkpoint)(resumed_from, model, optimizer)
        step = state["step"]
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        if sampler:
            sampler.load_state_dict(state["sampler"])
        say(f"resumed from {args.resume} at step {step}")

    micro_batch = args.batch_size // (world.size * args.grad_accum)
    estimate = None
    if world.is_main and args.memory_report:  # (the other ranks would only repeat it)
        estimate = simulate_memory(model.config, args, dtype, world_size=world.size, max_micro_batches=2)
        unsharded = " of an unsharded rank (per-rank --fsdp numbers: python -m bench.fsdp_memory)" if args.fsdp else ""
        say(f"memory of one step{unsharded} of {args.method} ({dtype}, micro-batch {micro_batch}x{args.seq_len}), "
            f"simulated on fake tensors in {estimate.seconds:.1f} s:\n" + format_report(estimate))

    heldout = HeldOut(eval_records, tokenizer, args.eval_limit, template=args.template) if eval_records else None
    metrics = RunLog(out, enabled=world.is_main, wandb=args.wandb, config=vars(args), say=say,  # jsonl, TensorBoard, W&B
                     resume_step=step if resumed_from else None)
    evaluates = world.is_main or distributed  # an FSDP forward needs every rank
    if heldout and evaluates and step == 0:
        metrics.write(step=0, **heldout.evaluate(model))

    # 5. The loop.
    stop = StopFlag()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_step = step
    progress = tqdm(range(step, total_steps), initial=step, total=total_steps, disable=not world.is_main)
    for step in progress:
        if sampler and (step % args.period == 0 or step == first_step):
            start_period(model, optimizer, sampler.active_layers(step, model), args)
        started = time.perf_counter()
        loss, n_tokens = accumulate_gradients(model, loader, world, device, args.grad_accum, args.chunked_ce,
                                               args.fused)
        if not math.isfinite(loss):  # every rank sees the same summed loss, so every rank stops here
            raise diverged(f"loss is {loss}", step + 1, out)
        trainable = trainable_with_grad(groups)  # (summed over ranks by FSDP in backward)
        grad_norm = gradient_norm(trainable, args.max_grad_norm)  # None with --fused: already stepped
        if grad_norm is not None and not math.isfinite(grad_norm):
            raise diverged(f"gradient norm is {grad_norm}", step + 1, out)
        apply_gradients(optimizer)
        scheduler.step()
        seconds = time.perf_counter() - started

        lr = scheduler.get_last_lr()[0]
        active = active_block_indices(model) if sampler else None
        record = dict(step=step + 1, loss=loss, lr=lr, grad_norm=grad_norm, tokens_per_s=n_tokens / seconds, step_s=seconds,
                      active_blocks=active, peak_memory=peak_memory_bytes(device), memory=current_memory_bytes(device))
        if step + 1 == first_step + 2 and estimate:
            say("measured after 2 steps:\n" + format_report(estimate, record["peak_memory"]))
        if heldout and args.eval_every and (step + 1) % args.eval_every == 0 and evaluates:
            record.update(heldout.evaluate(model))
        metrics.write(**record)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{n_tokens / seconds:.0f}",
                             blocks=",".join(map(str, active or [])))
        done = step + 1 == total_steps
        if stop.requested or done or (args.save_every and (step + 1) % args.save_every == 0):
            check_weights(model, step + 1, out)  # on every rank: the weights, and so the verdict, agree
            if world.is_main or distributed:
                saved_args = {k: v for k, v in vars(args).items() if k != "changed_on_resume"}
                state = dict(step=step + 1, scheduler=scheduler.state_dict(), loader=loader.state_dict(),
                             sampler=sampler.state_dict() if sampler else None, args=saved_args)
                save = save_sharded_checkpoint if distributed else save_checkpoint
                path = save(out, step + 1, model, optimizer, state, keep=args.keep_checkpoints)
                say(f"checkpoint: {path}")
        if stop.requested:
            say(f"stopped by signal after step {step + 1}; resume with --resume {out}")
            break
    evaluated_at_end = args.eval_every and total_steps % args.eval_every == 0
    if heldout and evaluates and not stop.requested and not evaluated_at_end:
        metrics.write(step=total_steps, **heldout.evaluate(model))

    # 6. The fine-tuned weights, in formats other tools open; how often each block was drawn.
    if fused:
        fused.remove()
    if sampler and world.is_main:
        expected = None if sampler.policy.dynamic else sampler.inclusion_probabilities("monte_carlo")
        plot_sampling_counts(out / "sampling_counts.png", sampler.counts, expected,
                             title=f"{args.method}: periods each block was active")
    if distributed and args.save_format != "none" and not stop.requested:  # gathered and written block by block
        if method.adapters:
            export_peft_sharded(model, out / "final-peft", base_model=str(args.model), dropout=args.lora_dropout)
            say(f"saved the LoRA adapter (PEFT) to {out / 'final-peft'}")
        for fmt in (("meta", "hf") if args.save_format == "both" else (args.save_format,)):
            export_sharded(model, out / f"final-{fmt}", fmt, tokenizer)
            say(f"saved {fmt} weights to {out / f'final-{fmt}'}")
    elif world.is_main and args.save_format != "none" and not stop.requested:
        if method.adapters:  # the adapter for PEFT, then the merged weights
            write_peft_adapter(model, out / "final-peft", base_model=str(args.model), dropout=args.lora_dropout)
            say(f"saved the LoRA adapter (PEFT) to {out / 'final-peft'}")
            merge_lora(model)
        for fmt in (("meta", "hf") if args.save_format == "both" else (args.save_format,)):
            save_model(model, out / f"final-{fmt}", format=fmt, tokenizer=tokenizer)
            say(f"saved {fmt} weights to {out / f'final-{fmt}'}")
    stop.restore()
    metrics.close()
    close_world(world)


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


def check_out_folder(out: Path, resumed_from: Path | None, overwrite: bool) -> bool:
    """Whether `out` holds another run to replace (with --overwrite); refuse one otherwise."""
    held = run_outputs(out)
    if resumed_from is not None and resumed_from.parent.resolve() == out.resolve():
        names = [p.name for p in checkpoints(out)]
        newer = names[names.index(resumed_from.name) + 1:] if resumed_from.name in names else []
        if newer:  # they belong to the abandoned continuation, and the newest checkpoint wins a later resume
            raise UserError(f"--resume {resumed_from}: {out} holds newer checkpoints ({', '.join(newer)}); "
                            f"resume the newest with --resume {out}, or branch off with another --out")
        return False
    if not held:
        return False
    if not overwrite:
        raise UserError(f"--out {out}: already holds a run ({', '.join(held)}); continue it with --resume {out}, "
                        "replace it with --overwrite, or choose another --out")
    return True


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves and exits."""

    def __init__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.requested = True


if __name__ == "__main__":
    cli.run(main)
