"""One optimizer step of train.py, for any caller that holds a batch: the training loop and the memory
simulation (`training.memory`) run this same code, in this order.

    StepConfig              the flags a step reads, frozen
    build_optimizer         LoRA adapters or the method's param groups -> GaLoreAdamW (+ fused hooks)
    start_period            the sampled blocks become trainable; the state of blocks that left is freed
    backward_micro_batches  forward/backward over the micro-batches, the loss a mean over the global batch
    gradient_norm           the total gradient norm (clipping with --max-grad-norm): the divergence check
    apply_gradients         step, free the gradients
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from model.loss import next_token_loss_sum
from optim import GaLoreAdamW, apply_lora, attach_fused_step, build_projector
from optim.fused import FusedStepHandle
from training.fsdp import full_tensor, is_sharded, set_gradient_sync
from training.methods import METHODS, activate_blocks, param_groups


@dataclass(frozen=True)
class StepConfig:
    """What a training step is: the method, its optimizer, the batch and the block draws (train.py's flags of
    the same names; `training.args.step_config` builds it). `svd` may still be "auto" until the model is known
    (`training.args.resolve_svd`)."""

    method: str
    batch_size: int
    seq_len: int
    grad_accum: int
    chunked_ce: bool
    grad_ckpt: bool
    fused: bool
    max_grad_norm: float | None
    lr: float
    eps: float
    weight_decay: float
    fp32_moments: bool
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    projector: str
    rank: int
    proj_type: str
    svd: str
    svd_oversample: int
    svd_power_iters: int
    update_proj_gap: int
    galore_scale: float
    reproject_moments: bool
    gamma: int
    period: int
    seed: int
    freeze_embeddings: bool
    keep_inactive_state: bool


def build_optimizer(model: nn.Module, config: StepConfig,
                    shard: Callable[[list[dict]], list[dict]] | None = None,
                    ) -> tuple[list[dict], GaLoreAdamW, FusedStepHandle | None]:
    """(param groups, optimizer, fused-step handle or None) for `config.method`; LoRA wraps the model's linears.
    `shard` (--fsdp) shards the model and returns the groups with its sharded parameters."""
    method = METHODS[config.method]
    if method.adapters:
        groups = [{"params": apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout)}]
    else:
        projector = build_projector(config.projector, rank=config.rank, proj_type=config.proj_type, svd=config.svd,
                                    oversample=config.svd_oversample, power_iters=config.svd_power_iters)
        galore = dict(projector=projector,
                      update_proj_gap=config.update_proj_gap, scale=config.galore_scale,
                      reproject_moments=config.reproject_moments)
        groups = param_groups(model, galore if method.projected else None)
    if shard is not None:
        groups = shard(groups)
    optimizer = GaLoreAdamW(groups, lr=config.lr, eps=config.eps, weight_decay=config.weight_decay,
                            fp32_moments=config.fp32_moments)
    fused = attach_fused_step(optimizer, [p for g in groups for p in g["params"]], grad_accum_steps=config.grad_accum,
                              max_grad_norm=config.max_grad_norm) if config.fused else None
    return groups, optimizer, fused


def start_period(model: nn.Module, optimizer: GaLoreAdamW, active: list[int], config: StepConfig) -> None:
    """Train exactly the `active` blocks from now on; drop the optimizer state of blocks that left."""
    left = activate_blocks(model, active, train_outer=not config.freeze_embeddings)
    if not config.keep_inactive_state:
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
