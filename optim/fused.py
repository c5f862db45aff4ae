"""Per-parameter ("fused") optimizer step from post-accumulate-grad hooks, so the full set of gradients
never exists together.

Without accumulation each parameter is updated in its hook during backward and its gradient freed at once.
With `grad_accum_steps` > 1 the hook of a projected parameter adds the micro-batch's *projected* gradient
(r x n) to a pending sum and frees the full gradient at once (`GaLoreAdamW.accumulate_grad`); plain
parameters keep their full gradient, which autograd sums; the caller's `optimizer.step()` after the last
micro-batch then applies everything. At a projector refresh step the projector is made from the first
micro-batch's gradient (not the summed one: keeping the full gradient for that step would cost the memory
this mode saves). Global-norm clipping needs every gradient before any update and is refused.
The hooks look the parameter's group up at call time, so `load_state_dict` (which replaces the group
dicts) and schedulers act on them.
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
    """Step (or, with grad_accum_steps > 1, accumulate) `params` (default: all of the optimizer's) one by
    one as their gradients arrive in backward.

    The optimizer must have `step_param(p)` and `accumulate_grad(p)` (GaLoreAdamW). Hooks are registered
    on frozen parameters too (their requires_grad is flipped on only while registering), so a layer sampler
    may freeze and unfreeze blocks freely; a frozen parameter gets no gradient and so no step.
    `max_grad_norm` None or <= 0 means no clipping.
    """
    if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be a positive int, got {grad_accum_steps!r}")
    if max_grad_norm is not None and max_grad_norm > 0:
        raise ValueError(
            f"fused step cannot clip by the global gradient norm (max_grad_norm={max_grad_norm}): the norm is "
            "known only after every gradient exists; disable clipping or use optimizer.step()"
        )
    if not (hasattr(optimizer, "step_param") and hasattr(optimizer, "accumulate_grad")):
        raise TypeError(f"{type(optimizer).__name__} has no step_param(p) / accumulate_grad(p); "
                        "fused step needs GaLoreAdamW")
    known = {p for group in optimizer.param_groups for p in group["params"]}
    params = list(known) if params is None else list(params)
    on_grad = optimizer.step_param if grad_accum_steps == 1 else optimizer.accumulate_grad
    handles = []
    for p in params:
        if p not in known:
            raise ValueError(f"parameter of shape {tuple(p.shape)} is not in the optimizer's param groups")
        handles.append(_register(p, _make_hook(on_grad, free=grad_accum_steps == 1)))
    return FusedStepHandle(handles)


def _make_hook(on_grad, free: bool):
    def hook(p: Tensor) -> None:
        on_grad(p)
        if free:
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
