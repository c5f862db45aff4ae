"""AdamW with optional GaLore low-rank gradient projection per param group.

A group with a projector (optim/projector.py) is GaLore; one without is plain AdamW:
  {"params": [...], "projector": SVDProjector(rank=128), "update_proj_gap": 200, "scale": 0.25}
galore-torch's spelling `{"rank": 128, "proj_type": "std", ...}` is read as `SVDProjector(128, "std")`.
The update is the original's:
  m = b1 m + (1-b1) g,  v = b2 v + (1-b2) g^2,  step_size = lr sqrt(1-b2^t) / (1-b1^t)
  W -= step_size * scale * back(m / (sqrt(v) + eps)),  then  W -= lr * wd * W
where g = project(grad) and back() the projector's `full_update` (GaLore: project_back, the inverse of
project; APOLLO: the raw gradient scaled, optim/apollo.py) in a projected group, both the identity otherwise;
the projector is made afresh from the gradient every `update_proj_gap` steps. `fp32_moments` keeps m and v in
fp32 for a bf16/fp16 weight: in bf16, `v * 0.999` rounds back to v and the second moment never decays.
"""
from __future__ import annotations

import math
from itertools import chain
from typing import Callable, Iterable

import torch
from torch import Tensor

from optim.projector import Projector, SVDProjector, build_projector
from optim.sharded import full_update, make_projection, project, project_back

GROUP_DEFAULTS = dict(projector=None, update_proj_gap=200, scale=1.0, reproject_moments=False)


def _check_group(group: dict, known: set[str]) -> None:
    unknown = sorted(set(group) - known)
    if unknown:
        raise ValueError(f"unknown param-group options {unknown}; known: {sorted(known)}")
    lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if not lr >= 0 or not eps >= 0 or not wd >= 0:
        raise ValueError(f"lr, eps and weight_decay must be >= 0, got lr={lr}, eps={eps}, weight_decay={wd}")
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas must lie in [0, 1), got {group['betas']}")
    projector = group["projector"]
    if projector is None:
        return
    if not isinstance(projector, Projector):
        raise ValueError(f"projector must be an optim.projector.Projector or None, got {projector!r}")
    gap = group["update_proj_gap"]
    if not isinstance(gap, int) or isinstance(gap, bool) or gap < 1:
        raise ValueError(f"update_proj_gap must be a positive int, got {gap!r}")
    for p in group["params"]:
        if p.dim() != 2:
            raise ValueError(
                f"parameter of shape {tuple(p.shape)} is in a group with a projector: GaLore projects 2-D "
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
        fp32_moments: bool = False,
    ):
        self._param_index: dict[Tensor, int] = {}  # stable per-parameter seed for projection draws
        self._group_index: dict[Tensor, int] = {}  # position of each parameter's group (its dict is replaced on load)
        self._accumulated: dict[Tensor, Tensor] = {}  # projected gradients summed over micro-batches, not yet applied
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fp32_moments=fp32_moments)
        super().__init__(params, {**defaults, **GROUP_DEFAULTS})

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        group = {**self.defaults, **param_group, "params": params}
        rank, proj_type = group.pop("rank", None), group.pop("proj_type", "std")
        if rank is not None:  # galore-torch's group format
            if param_group.get("projector") is not None:
                raise ValueError("give a group either a projector or galore-torch's rank/proj_type, not both")
            group["projector"] = SVDProjector(rank, proj_type)
        _check_group(group, set(self.defaults) | {"params", "param_names"})
        super().add_param_group(group)
        for p in params:
            self._param_index.setdefault(p, len(self._param_index))
            self._group_index[p] = len(self.param_groups) - 1

    def state_dict(self) -> dict:
        """As torch's, with each projector written as its plain `spec()` (loadable with weights_only=True)."""
        state_dict = super().state_dict()
        for group in state_dict["param_groups"]:
            if group["projector"] is not None:
                group["projector"] = group["projector"].spec()
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        if any("projector" not in group for group in state_dict["param_groups"]):
            raise ValueError("optimizer state has param groups without a 'projector' entry: it was saved by "
                             "another optimizer or an older GaLoreAdamW (rank/proj_type groups) and cannot be resumed")
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            if isinstance(group["projector"], dict):
                group["projector"] = build_projector(**group["projector"])
        # torch casts every floating state tensor to its parameter's dtype; keep the saved one (fp32 moments)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for param_id, p in zip(saved_ids, params):
            if param_id in state_dict["state"]:
                self.state[p] = _with_saved_dtypes(self.state[p], state_dict["state"][param_id])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and (p.grad is not None or p in self._accumulated):
                    self._update(p, group)
        return loss

    @torch.no_grad()
    def step_param(self, p: Tensor) -> None:
        """Update one parameter from its current .grad now (the fused per-parameter mode)."""
        if p.grad is not None and p.requires_grad:
            self._update(p, self.param_groups[self._group_index[p]])

    @torch.no_grad()
    def accumulate_grad(self, p: Tensor) -> None:
        """Add one micro-batch's .grad of a projected parameter to its pending projected gradient and free
        .grad; the next `step()` applies the sum. Projection is linear, so for a fixed projector this equals
        projecting the summed gradient. At a refresh step the projector is made from the first micro-batch's
        gradient. The .grad of a plain parameter, or of one whose projector `needs_grad`, is left alone
        (autograd sums it)."""
        group = self.param_groups[self._group_index[p]]
        if p.grad is None or not p.requires_grad or group["projector"] is None or group["projector"].needs_grad:
            return
        low = self._project(p, self.state[p], group)
        pending = self._accumulated.get(p)
        self._accumulated[p] = low if pending is None else pending.add_(low)
        p.grad = None

    def drop_state(self, params: Iterable[Tensor]) -> None:
        """Forget moments, projection and step of `params`; a later update starts them from step 0."""
        for p in params:
            self.state.pop(p, None)
            self._accumulated.pop(p, None)

    def _project(self, p: Tensor, state: dict, group: dict) -> Tensor:
        """p.grad in the group projector's subspace; the subspace is made afresh from this gradient first
        when the step is a refresh step and no micro-batch of it has been projected yet."""
        state.setdefault("step", 0)
        if state["step"] % group["update_proj_gap"] == 0 and p not in self._accumulated:
            self._refresh(p, state, group)
        return project(group["projector"], state["projection"], p.grad)

    def _update(self, p: Tensor, group: dict) -> None:
        state, projector = self.state[p], group["projector"]
        low = self._accumulated.pop(p, None)
        if low is None:
            if p.grad.is_sparse:
                raise ValueError(f"GaLoreAdamW does not support sparse gradients (parameter of shape {tuple(p.shape)})")
            low = p.grad if projector is None else self._project(p, state, group)
        state.setdefault("step", 0)
        if group["fp32_moments"]:
            low = low.float()
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(low)
            state["exp_avg_sq"] = torch.zeros_like(low)
        state["step"] += 1
        t, (b1, b2), lr = state["step"], group["betas"], group["lr"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(b1).add_(low, alpha=1 - b1)
        exp_avg_sq.mul_(b2).addcmul_(low, low, value=1 - b2)
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        update = (exp_avg / exp_avg_sq.sqrt().add_(group["eps"])).to(p.dtype)
        if projector is not None:
            update = full_update(projector, state["projection"], p.grad, low, update)
            step_size *= group["scale"]
        p.add_(update, alpha=-step_size)
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-lr * group["weight_decay"])

    def _refresh(self, p: Tensor, state: dict, group: dict) -> None:
        projector = group["projector"]
        seed = hash((self._param_index[p], state["step"])) & 0x7FFF_FFFF_FFFF_FFFF
        new = make_projection(projector, p.grad, seed)
        old = state.get("projection", {})
        if group["reproject_moments"] and "exp_avg" in state:
            # M <- P_new^T P_old M: carry the first moment into the new subspace (v has no linear analogue).
            m = state["exp_avg"]
            state["exp_avg"] = project(projector, new, project_back(projector, old, m.to(p.dtype))).to(m.dtype)
        kept = [key for key, spec in projector.state_specs(tuple(p.shape)).items() if spec.kept and key in old]
        state["projection"] = {**new, **{key: old[key] for key in kept}}


def _with_saved_dtypes(loaded, saved):
    if isinstance(saved, Tensor) and saved.dtype != loaded.dtype:
        return saved.to(device=loaded.device)
    if isinstance(saved, dict):
        return {key: _with_saved_dtypes(loaded[key], value) for key, value in saved.items()}
    return loaded
