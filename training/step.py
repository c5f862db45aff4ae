"""One optimizer step of train.py, for any caller that holds a batch: the training loop and the memory
simulation (`training.memory`) run this same code, in this order.

    build_optimizer         LoRA adapters or the method's param groups -> GaLoreAdamW (+ fused hooks)
    start_period            the sampled blocks become trainable; the state of blocks that left is freed
    backward_micro_batches  forward/backward over the micro-batches, the loss a mean over the global batch
    gradient_norm           the total gradient norm (clipping with --max-grad-norm): the divergence check
    apply_gradients         step, free the gradients
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
from torch import nn

from model.loss import next_token_loss_sum
from optim import GaLoreAdamW, apply_lora, attach_fused_step, build_projector
from optim.fused import FusedStepHandle
from training.fsdp import full_tensor, is_sharded, set_gradient_sync
from training.methods import METHODS, activate_blocks, param_groups


def build_optimizer(model: nn.Module, args: argparse.Namespace,
                    shard: Callable[[list[dict]], list[dict]] | None = None,
                    ) -> tuple[list[dict], GaLoreAdamW, FusedStepHandle | None]:
    """(param groups, optimizer, fused-step handle or None) for `args.method`; LoRA wraps the model's linears.
    `shard` (--fsdp) shards the model and returns the groups with its sharded parameters."""
    method = METHODS[args.method]
    if method.adapters:
        groups = [{"params": apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)}]
    else:
        galore = dict(projector=build_projector(args.projector, rank=args.rank, proj_type=args.proj_type, svd=args.svd,
                                                oversample=args.svd_oversample, power_iters=args.svd_power_iters),
                      update_proj_gap=args.update_proj_gap, scale=args.galore_scale,
                      reproject_moments=args.reproject_moments)
        groups = param_groups(model, galore if method.projected else None)
    if shard is not None:
        groups = shard(groups)
    optimizer = GaLoreAdamW(groups, lr=args.lr, eps=args.eps, weight_decay=args.weight_decay,
                            fp32_moments=args.fp32_moments)
    fused = attach_fused_step(optimizer, [p for g in groups for p in g["params"]], grad_accum_steps=args.grad_accum,
                              max_grad_norm=args.max_grad_norm) if args.fused else None
    return groups, optimizer, fused


def start_period(model: nn.Module, optimizer: GaLoreAdamW, active: list[int], args: argparse.Namespace) -> None:
    """Train exactly the `active` blocks from now on; drop the optimizer state of blocks that left."""
    left = activate_blocks(model, active, train_outer=not args.freeze_embeddings)
    if not args.keep_inactive_state:
        optimizer.drop_state(left)


def backward_micro_batches(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, n_targets: int,
                           grad_accum: int, chunked_ce: bool, fused: bool = False) -> float:
    """Backward of sum(token losses) / n_targets over `grad_accum` micro-batches; returns the summed loss.

    `n_targets` counts the target tokens of the global batch (every rank), so accumulation and data
    parallelism give the gradient of one big batch. Once the sum is not finite no further backward runs;
    the caller sees it in the returned sum (summed over ranks, so every rank stops together). Under FSDP
    every rank runs every forward and backward whatever its own batch holds: they hold collectives that
    the other ranks wait in.
    """
    total, sharded = 0.0, is_sharded(model)
    for i, (ids, lab) in enumerate(zip(input_ids.chunk(grad_accum), labels.chunk(grad_accum))):
        if sharded:  # reduce once, after the last micro-batch (--fused: each, its hooks step/accumulate)
            set_gradient_sync(model, fused or i == grad_accum - 1)
        loss_sum = next_token_loss_sum(model, ids, lab, chunked_ce)
        if loss_sum is None:  # every target of this micro-batch is masked: it adds nothing
            if not sharded:
                continue
            loss_sum = model(ids).sum() * 0
        total += loss_sum.item()
        if math.isfinite(total) or sharded:
            (loss_sum / n_targets).backward()
    return total


def trainable_with_grad(groups: list[dict]) -> list[nn.Parameter]:
    return [p for g in groups for p in g["params"] if p.grad is not None]


def gradient_norm(params: list[nn.Parameter], max_norm: float | None) -> float | None:
    """The total 2-norm of the gradients (clipping them to `max_norm` when given); None without gradients
    (with fused hooks every parameter already stepped in backward)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    if max_norm:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
    return float(full_tensor(torch.linalg.vector_norm(norms)))  # (sharded: one reduction over ranks, at the end)


def apply_gradients(optimizer: GaLoreAdamW) -> None:
    """Step and free every gradient (with --fused --grad-accum the step applies the projected sums)."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
