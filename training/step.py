"""One optimizer step of train.py, in train.py's order, for any caller that holds a batch: the training loop
and the memory simulation (`training.memory`) run this same code.

    build_optimizer       LoRA adapters or the method's param groups -> GaLoreAdamW (+ fused hooks)
    start_period          the sampled blocks become trainable; the state of blocks that left is freed
    accumulate_gradients  forward/backward over the micro-batches, the loss a mean over the global batch
    apply_gradients       clip (optional), step, free the gradients
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from model.loss import next_token_loss_sum
from optim import GaLoreAdamW, apply_lora, attach_fused_step
from optim.fused import FusedStepHandle
from training.methods import activate_blocks, param_groups


class NonFiniteLoss(ValueError):
    """A micro-batch's loss is NaN or inf; `value` is what it was."""

    def __init__(self, value: float):
        super().__init__(f"loss is {value}")
        self.value = value


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> tuple[list[dict], GaLoreAdamW, FusedStepHandle | None]:
    """(param groups, optimizer, fused-step handle or None) for `args.method`; LoRA wraps the model's linears."""
    if args.method == "lora":
        groups = [{"params": apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)}]
    else:
        groups = param_groups(model, args)
    optimizer = GaLoreAdamW(groups, lr=args.lr, weight_decay=args.weight_decay, fp32_moments=args.fp32_moments)
    fused = attach_fused_step(optimizer, [p for g in groups for p in g["params"]], grad_accum_steps=args.grad_accum,
                              max_grad_norm=args.max_grad_norm) if args.fused else None
    return groups, optimizer, fused


def start_period(model: nn.Module, optimizer: GaLoreAdamW, active: list[int], args: argparse.Namespace) -> None:
    """Train exactly the `active` blocks from now on; drop the optimizer state of blocks that left."""
    left = activate_blocks(model, active, train_outer=not args.freeze_embeddings)
    if not args.keep_inactive_state:
        optimizer.drop_state(left)


def accumulate_gradients(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, n_targets: int,
                         grad_accum: int, chunked_ce: bool) -> float:
    """Backward of sum(token losses) / n_targets over `grad_accum` micro-batches; returns the summed loss.

    `n_targets` counts the target tokens of the global batch (every rank), so accumulation and data
    parallelism give the gradient of one big batch. Raises NonFiniteLoss before a bad micro-batch's backward.
    """
    total = 0.0
    for ids, lab in zip(input_ids.chunk(grad_accum), labels.chunk(grad_accum)):
        loss_sum = next_token_loss_sum(model, ids, lab, chunked_ce)
        if loss_sum is None:  # every target of this micro-batch is masked: it adds nothing
            continue
        if not torch.isfinite(loss_sum):
            raise NonFiniteLoss(loss_sum.item())
        (loss_sum / n_targets).backward()
        total += loss_sum.item()
    return total


def trainable_with_grad(groups: list[dict]) -> list[nn.Parameter]:
    return [p for g in groups for p in g["params"] if p.grad is not None]


def apply_gradients(optimizer: GaLoreAdamW, groups: list[dict], max_grad_norm: float | None) -> None:
    """Clip, step and free every gradient (with fused hooks each parameter already stepped in backward)."""
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(trainable_with_grad(groups), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
