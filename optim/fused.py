"""Per-parameter ("fused") optimizer step: each parameter is updated from its
post-accumulate-grad hook during backward and its gradient freed at once, so the full set of
gradients never exists together. Valid only without gradient accumulation and global-norm clipping,
both of which need every gradient before any update; those are refused rather than silently broken.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


class FusedStepHandle:
    """Returned by `attach_fused_step`; `.remove()` detaches every hook."""

    def __init__(self, handles: list):
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def attach_fused_step(
    optimizer: torch.optim.Optimizer,
    params: Iterable[Tensor] | None = None,
    grad_accum_steps: int = 1,
    max_grad_norm: float | None = None,
) -> FusedStepHandle:
    """Step `params` (default: all of the optimizer's) one by one as their gradients arrive in backward.

    The optimizer must have `step_param(p, group)` (GaLoreAdamW). Hooks are registered on frozen
    parameters too (their requires_grad is flipped on only while registering), so a layer sampler may
    freeze and unfreeze blocks freely; a frozen parameter gets no gradient and so no step.
    `max_grad_norm` None or <= 0 means no clipping.
    """
    if grad_accum_steps != 1:
        raise ValueError(
            f"fused step updates each weight as soon as its gradient exists, so it cannot accumulate "
            f"gradients (grad_accum_steps={grad_accum_steps}); use optimizer.step() instead"
        )
    if max_grad_norm is not None and max_grad_norm > 0:
        raise ValueError(
            f"fused step cannot clip by the global gradient norm (max_grad_norm={max_grad_norm}): the norm is "
            "known only after every gradient exists; disable clipping or use optimizer.step()"
        )
    if not hasattr(optimizer, "step_param"):
        raise TypeError(f"{type(optimizer).__name__} has no step_param(p, group); fused step needs GaLoreAdamW")
    group_of = {p: group for group in optimizer.param_groups for p in group["params"]}
    params = list(group_of) if params is None else list(params)
    handles = []
    for p in params:
        if p not in group_of:
            raise ValueError(f"parameter of shape {tuple(p.shape)} is not in the optimizer's param groups")
        handles.append(_register(p, _make_hook(optimizer, group_of[p])))
    return FusedStepHandle(handles)


def _make_hook(optimizer: torch.optim.Optimizer, group: dict):
    def hook(p: Tensor) -> None:
        optimizer.step_param(p, group)
        p.grad = None

    return hook


def _register(p: Tensor, hook):
    if p.requires_grad:
        return p.register_post_accumulate_grad_hook(hook)
    p.requires_grad_(True)  # registration needs a grad-requiring leaf; the hook stays when it is frozen again
    try:
        return p.register_post_accumulate_grad_hook(hook)
    finally:
        p.requires_grad_(False)
