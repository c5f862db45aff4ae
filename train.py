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
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from data import BatchLoader, build_dataset, load_records
from data.commonsense import TRAIN_FILE, build_commonsense
from model import load_model, save_model
from model.cli import DTYPES
from model.peft_format import write_peft_adapter
from model.loss import next_token_loss_sum as token_loss_sum
from optim import GaLoreAdamW, apply_lora, attach_fused_step, lr_lambda, merge_lora
from sampling import LayerSampler, calibration_windows, load_or_compute_ratios, plot_sampling_counts, read_documents
from sampling.calibration import training_documents
from training.args import parse_args
from training.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from training.distributed import close_world, init_world, sum_gradients, sum_scalar
from training.fsdp import is_sharded, set_gradient_sync, shard_model
from training.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint
from training.sharded_export import export_sharded
from training.heldout import HeldOut
from training.memory import MemorySettings, estimate_memory, format_report
from training.methods import SAMPLED_METHODS, activate_blocks, active_block_indices, param_groups
from training.metrics import current_memory_bytes, peak_memory_bytes
from training.runlog import RunLog



def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    world = init_world(device.type, group=args.fsdp)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(args.seed)
    out = Path(args.out)
    say = print if world.is_main else (lambda *a, **k: None)

    # 1. The pre-trained model.
    try:  # (--fsdp: into host memory, until fully_shard below moves each rank's shard to the device)
        model, tokenizer = load_model(args.model, device="cpu" if args.fsdp else device, dtype=dtype,
                                      ckpt_dir=args.ckpt_dir, tokenizer=args.tokenizer)
    except (FileNotFoundError, ValueError) as err:  # no weights found, unreadable checkpoint or tokenizer
        sys.exit(f"error: {err}")
    model.train()
    model.gradient_checkpointing = args.grad_ckpt
    n_layers = model.config.n_layers
    if args.gamma > n_layers and args.method in SAMPLED_METHODS:
        sys.exit(f"error: --gamma {args.gamma} exceeds the model's {n_layers} blocks")

    # 2. Training data: fixed-length blocks, a seeded order every rank agrees on.
    if not args.data:  # the embedded commonsense set: the real train splits of its 8 tasks, held-out rows kept out
        args.data = str(out / "commonsense" / TRAIN_FILE)
        if not Path(args.data).is_file():
            build_commonsense(out / "commonsense")
        say(f"data: no --data given; training on the commonsense set built in {args.data} (python -m data.commonsense)")
    records = load_records(args.data)
    dataset = build_dataset(records, tokenizer, args.seq_len, pack=not args.no_pack,
                            mask_prompt=not args.train_on_prompt, template=args.template)
    if world.size > 1 and args.batch_size % (world.size * args.grad_accum):
        sys.exit(f"error: --batch-size {args.batch_size} must split over {world.size} ranks x {args.grad_accum} micro-batches")
    loader = BatchLoader(dataset, batch_size=args.batch_size // world.size, seed=args.seed,
                         rank=world.rank, world_size=world.size)
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * loader.batches_per_epoch))
    say(f"data: {len(records)} records -> {len(dataset)} blocks of {args.seq_len} tokens; {total_steps} steps")

    # 3. Layer sampling: outlier ratios D_l of the pre-trained blocks -> probabilities (OwLore), or uniform (LISA).
    sampler = None
    if args.method in SAMPLED_METHODS:
        ratios = None
        if args.sampling in ("owlore", "owlore_reverse"):
            scores = Path(args.scores) if args.scores else out / "outlier_scores.json"
            calib = None  # an existing cache made for these weights is used as it is
            if args.calib or not scores.is_file():
                documents = (read_documents(args.calib) if args.calib else  # else: the training stream itself
                             training_documents(records, tokenizer, args.calib_windows * args.calib_seq_len,
                                                args.template, args.seed))
                windows = calibration_windows(documents, tokenizer, args.calib_windows, args.calib_seq_len,
                                              seed=args.seed)
                calib = windows.to(model.output.weight.device).split(4)
            ratios = load_or_compute_ratios(model, args.model, calib, args.M, scores,
                                            calibration_source=args.calib or args.data)
            say("outlier ratios D_l (%): " + " ".join(f"{r:.3f}" for r in ratios))
        sampler = LayerSampler(ratios, args.sampling, args.gamma, args.period, args.seed, n_layers,
                               fixed_layers=args.fixed_layers)

    # 4. Optimizer: GaLore groups for 2-D block weights, AdamW for everything else.
    if args.method == "lora":
        groups = [{"params": apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)}]
    else:
        groups = param_groups(model, args)
    if args.fsdp:  # every block and the root fully sharded; the groups then hold the sharded parameters
        reduce_dtype = DTYPES[args.reduce_dtype] if args.reduce_dtype else None
        groups = shard_model(model, groups, device, world.size, reduce_dtype)
    optimizer = GaLoreAdamW(groups, lr=args.lr, weight_decay=args.weight_decay, fp32_moments=args.fp32_moments)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.schedule, args.warmup, total_steps))
    if args.fused and world.size > 1 and not args.fsdp:
        sys.exit("error: --fused steps each parameter before gradients could be summed across ranks; "
                 "drop --fused under torchrun")
    fused = attach_fused_step(optimizer, [p for g in groups for p in g["params"]], grad_accum_steps=args.grad_accum,
                              max_grad_norm=args.max_grad_norm) if args.fused else None

    # Resume: weights, optimizer, scheduler, sampler, data position and RNG, exactly where they were.
    step = 0
    if args.resume:
        path = resolve_checkpoint(args.resume)
        if (path / "shards").is_dir() != args.fsdp:  # DCP shards (--fsdp) or model.pt/optimizer.pt
            written = "without" if args.fsdp else "with"
            sys.exit(f"error: --resume {path}: the checkpoint was written {written} --fsdp; resume it {written} --fsdp")
        state = (load_sharded_checkpoint if args.fsdp else load_checkpoint)(path, model, optimizer)
        step = state["step"]
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        if sampler:
            sampler.load_state_dict(state["sampler"])
        say(f"resumed from {args.resume} at step {step}")

    settings = MemorySettings(
        method=args.method, micro_batch=args.batch_size // (world.size * args.grad_accum), seq_len=args.seq_len,
        dtype=dtype, gamma=args.gamma, rank=args.rank, proj_type=args.proj_type,
        lora_rank=args.lora_rank, grad_ckpt=args.grad_ckpt, fused=args.fused, chunked_ce=args.chunked_ce,
        train_outer=not args.freeze_embeddings, keep_inactive_state=args.keep_inactive_state)
    estimate = estimate_memory(model.config, settings)
    say(f"memory estimate for {args.method} ({dtype}, micro-batch {settings.micro_batch}x{args.seq_len}):\n"
        + format_report(estimate))

    heldout = HeldOut(args.eval_data, tokenizer, args.eval_limit, template=args.template) if args.eval_data else None
    metrics = RunLog(out, enabled=world.is_main, wandb=args.wandb, config=vars(args), say=say)  # jsonl, TensorBoard, W&B
    evaluates = world.is_main or args.fsdp  # a sharded forward needs every rank
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
            left = activate_blocks(model, sampler.active_layers(step), train_outer=not args.freeze_embeddings)
            if not args.keep_inactive_state:
                optimizer.drop_state(left)
        started = time.perf_counter()
        loss, n_tokens = accumulate_gradients(model, loader, args, world, device)
        trainable = [p for g in groups for p in g["params"] if p.grad is not None]
        sum_gradients(trainable, world)
        if args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()  # --fused: parameters stepped in backward find no grad; with --grad-accum, applies the sums
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        seconds = time.perf_counter() - started

        lr = scheduler.get_last_lr()[0]
        active = active_block_indices(model) if sampler else None
        record = dict(step=step + 1, loss=loss, lr=lr, tokens_per_s=n_tokens / seconds, step_s=seconds,
                      active_blocks=active, peak_memory=peak_memory_bytes(device), memory=current_memory_bytes(device))
        if step + 1 == first_step + 2:
            say("measured after 2 steps:\n" + format_report(estimate, record["peak_memory"]))
        if heldout and args.eval_every and (step + 1) % args.eval_every == 0 and evaluates:
            record.update(heldout.evaluate(model))
        metrics.write(**record)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{n_tokens / seconds:.0f}",
                             blocks=",".join(map(str, active or [])))
        done = step + 1 == total_steps
        if stop.requested or done or (args.save_every and (step + 1) % args.save_every == 0):
            if world.is_main or args.fsdp:
                state = dict(step=step + 1, scheduler=scheduler.state_dict(), loader=loader.state_dict(),
                             sampler=sampler.state_dict() if sampler else None, args=vars(args))
                save = save_sharded_checkpoint if args.fsdp else save_checkpoint
                path = save(out, step + 1, model, optimizer, state)
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
        plot_sampling_counts(out / "sampling_counts.png", sampler.counts, sampler.inclusion_probabilities("monte_carlo"),
                             title=f"{args.method}: periods each block was active")
    if args.fsdp and args.save_format != "none" and not stop.requested:  # gathered and written block by block
        for fmt in (("meta", "hf") if args.save_format == "both" else (args.save_format,)):
            export_sharded(model, out / f"final-{fmt}", fmt, tokenizer)
            say(f"saved {fmt} weights to {out / f'final-{fmt}'}")
    elif world.is_main and args.save_format != "none" and not stop.requested:
        if args.method == "lora":  # the adapter for PEFT, then the merged weights
            write_peft_adapter(model, out / "final-peft", base_model=str(args.model), dropout=args.lora_dropout)
            say(f"saved the LoRA adapter (PEFT) to {out / 'final-peft'}")
            merge_lora(model)
        for fmt in (("meta", "hf") if args.save_format == "both" else (args.save_format,)):
            save_model(model, out / f"final-{fmt}", format=fmt, tokenizer=tokenizer)
            say(f"saved {fmt} weights to {out / f'final-{fmt}'}")
    stop.restore()
    metrics.close()
    close_world(world)


def accumulate_gradients(model, loader, args, world, device) -> tuple[float, int]:
    """Forward/backward over `grad_accum` micro-batches of this rank's share of the global batch.

    The loss is the mean over every target token of the global batch, so accumulation and data
    parallelism (gradients summed over ranks) give the same gradient as one big batch.
    """
    input_ids, labels = loader.next_batch()
    input_ids, labels = input_ids.to(device), labels.to(device)
    targets = labels[:, 1:]
    n_targets = sum_scalar(int((targets != -100).sum()), world, device)
    if n_targets == 0:
        sys.exit("error: a training batch has no target tokens (every label is masked)")
    total = 0.0
    for i, (ids, lab) in enumerate(zip(input_ids.chunk(args.grad_accum), labels.chunk(args.grad_accum))):
        if is_sharded(model):  # reduce-scatter once, after the last (--fused: each, its hooks step/accumulate)
            set_gradient_sync(model, args.fused or i == args.grad_accum - 1)
        loss_sum = token_loss_sum(model, ids, lab, args.chunked_ce)
        if loss_sum is None:  # every target of this micro-batch is masked: it adds nothing
            continue
        if not torch.isfinite(loss_sum):
            sys.exit(f"error: loss is {loss_sum.item()} at this step; stopping without saving "
                     f"(the last good checkpoint in {args.out} is intact); try a lower --lr")
        (loss_sum / n_targets).backward()
        total += loss_sum.item()
    return sum_scalar(total, world, device) / n_targets, input_ids.numel() * world.size


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
    main()
