"""AdamW with optional GaLore low-rank gradient projection per param group (docs/method.md, "GaLore").

Groups follow galore-torch: `{"params": [...], "rank": 128, "update_proj_gap": 200, "scale": 0.25,
"proj_type": "std"}`; a group without `rank` is plain AdamW. The update is the original's:
  m = b1 m + (1-b1) g,  v = b2 v + (1-b2) g^2,  step_size = lr sqrt(1-b2^t) / (1-b1^t)
  W -= step_size * back(m / (sqrt(v) + eps)),  then  W -= lr * wd * W
where g and back() are the projection and its inverse in a rank group and the identity otherwise.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor

from optim.projector import PROJ_SOURCES, PROJ_TYPES, SIDES, SVD_METHODS, Projection, compute_projection

GALORE_DEFAULTS = dict(
    rank=None,
    update_proj_gap=200,
    scale=1.0,
    proj_type="std",
    svd="exact",
    oversample=8,
    power_iters=2,
    reproject_moments=False,
    proj_source="svd",
    proj_seed=0,
)


def _check_group(group: dict) -> None:
    lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if not lr >= 0 or not eps >= 0 or not wd >= 0:
        raise ValueError(f"lr, eps and weight_decay must be >= 0, got lr={lr}, eps={eps}, weight_decay={wd}")
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas must lie in [0, 1), got {group['betas']}")
    rank = group["rank"]
    if rank is None:
        return
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")
    gap = group["update_proj_gap"]
    if not isinstance(gap, int) or gap < 1:
        raise ValueError(f"update_proj_gap must be a positive int, got {gap!r}")
    for key, allowed in (("proj_type", PROJ_TYPES), ("svd", SVD_METHODS), ("proj_source", PROJ_SOURCES)):
        if group[key] not in allowed:
            raise ValueError(f"unknown {key} {group[key]!r}; expected one of {allowed}")
    if group["oversample"] < 0 or group["power_iters"] < 0:
        raise ValueError(f"oversample and power_iters must be >= 0, got {group['oversample']}, {group['power_iters']}")
    for p in group["params"]:
        if p.dim() != 2:
            raise ValueError(
                f"parameter of shape {tuple(p.shape)} is in a group with rank={rank}: GaLore projects 2-D "
                "weights only; put it in a plain group"
            )


class GaLoreAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
    ):
        self._param_index: dict[Tensor, int] = {}  # stable per-parameter seed for projection draws
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, {**defaults, **GALORE_DEFAULTS})

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        group = {**self.defaults, **param_group, "params": params}
        _check_group(group)
        super().add_param_group(group)
        for p in params:
            self._param_index.setdefault(p, len(self._param_index))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.requires_grad:
                    self._update(p, group)
        return loss

    @torch.no_grad()
    def step_param(self, p: Tensor, group: dict) -> None:
        """Update one parameter of `group` from its current .grad (used by the fused per-parameter mode)."""
        if p.grad is not None and p.requires_grad:
            self._update(p, group)

    def drop_state(self, params: Iterable[Tensor]) -> None:
        """Forget moments, projection and step of `params`; a later update starts them from step 0."""
        for p in params:
            self.state.pop(p, None)

    def _update(self, p: Tensor, group: dict) -> None:
        grad = p.grad
        if grad.is_sparse:
            raise ValueError(f"GaLoreAdamW does not support sparse gradients (parameter of shape {tuple(p.shape)})")
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
        projection = None
        if group["rank"] is not None:
            if state["step"] % group["update_proj_gap"] == 0:
                self._refresh_projection(p, state, group)
            projection = _stored_projection(state)
            grad = projection.project(grad)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        t, (b1, b2), lr = state["step"], group["betas"], group["lr"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t) if group["correct_bias"] else lr
        update = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
        if projection is not None:
            update = projection.project_back(update, group["scale"])
        p.add_(update, alpha=-step_size)
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-lr * group["weight_decay"])

    def _refresh_projection(self, p: Tensor, state: dict, group: dict) -> None:
        seed = hash((group["proj_seed"], self._param_index[p], state["step"])) & 0x7FFF_FFFF_FFFF_FFFF
        new = compute_projection(
            p.grad, group["rank"], group["proj_type"], group["svd"], group["oversample"], group["power_iters"],
            group["proj_source"], seed,
        )
        if group["reproject_moments"] and "exp_avg" in state:
            # M <- P_new^T P_old M: carry the first moment into the new subspace (v has no linear analogue).
            state["exp_avg"] = new.project(_stored_projection(state).project_back(state["exp_avg"]))
        state["proj_side"] = SIDES.index(new.side)  # an int: load_state_dict would mangle a str
        for key, basis in (("proj_u", new.u), ("proj_vh", new.vh)):
            if basis is None:
                state.pop(key, None)
            else:
                state[key] = basis


def _stored_projection(state: dict) -> Projection:
    return Projection(SIDES[state["proj_side"]], state.get("proj_u"), state.get("proj_vh"))
