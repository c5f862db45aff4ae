"""APOLLO and APOLLO-Mini (Zhu et al., MLSys 2025, arXiv 2412.05270; `apollo-torch` 1.0.3) as projectors.

No SVD: P is a seeded Gaussian with entries N(0, 1/r), drawn afresh every `update_proj_gap` steps (the moments
are kept). For G (m x n), `std` projects the shorter side away:
  side "right" (m >= n): P r x n, R = G P^T (m x r);   side "left" (m < n): P m x r, R = P^T G (r x n).
Adam runs on R only to estimate how much to scale G: with N = m / (sqrt(v) + eps) (the low-rank Adam direction,
before bias correction), per channel j of the side R shares with G (a row for "right", a column for "left")
  s_j = ||N_j|| / (||R_j|| + 1e-8)          (APOLLO, scale_type "channel")
or one s = ||N|| / (||R|| + 1e-8) for the tensor (APOLLO-Mini, rank 1, scale_type "tensor"). The update is the
raw gradient G s, after Fira's norm-growth limiter: with the norm kept from the step before,
  limiter = max(||G s|| / (last + 1e-8), gamma) / gamma,   G s <- G s / limiter,   last <- ||G s||  (gamma 1.01)
times sqrt(scale), applied as GaLoreAdamW applies any update (step size lr sqrt(1-b2^t)/(1-b1^t), group scale,
decoupled weight decay). Defaults are the published ones: APOLLO rank 256, scale 1; Mini rank 1, scale 128.
The group's own `scale` (train.py --galore-scale) multiplies on top: 1 for the published runs.

The limiter needs the full gradient of the whole step, so micro-batches are summed full-rank (`needs_grad`).
Seeds are GaLoreAdamW's, one per (parameter, refresh step), where apollo-torch chains one seed per parameter
from its position; the same seed draws the same P (tests/test_optim_apollo.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from optim.projector import (PROJ_TYPES, REPLICATED, ROWS, Projector, State, StateSpec, projection_side,
                              register_projector)

SCALE_TYPES = ("channel", "tensor")


class _Apollo(Projector):
    """APOLLO's update rule; subclasses say rank, proj_type, scale and scale_type."""

    rank: int
    proj_type: str
    scale: float
    scale_type: str
    norm_growth: ClassVar[float] = 1.01  # gamma of the limiter
    needs_grad: ClassVar[bool] = True

    def _check(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if self.proj_type not in PROJ_TYPES or self.proj_type == "full":
            raise ValueError(f"APOLLO projects one side: proj_type must be one of "
                             f"{[t for t in PROJ_TYPES if t != 'full']}, got {self.proj_type!r}")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")
        if self.scale_type not in SCALE_TYPES:
            raise ValueError(f"unknown scale_type {self.scale_type!r}; expected one of {SCALE_TYPES}")

    def _side(self, shape: tuple[int, ...]) -> str:
        return projection_side(shape, self.proj_type)

    def _p_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        m, n = shape
        return (self.rank, n) if self._side(shape) == "right" else (m, self.rank)

    def make(self, grad: Tensor, seed: int) -> State:
        gen = torch.Generator(device=grad.device).manual_seed(seed)
        p = torch.randn(self._p_shape(tuple(grad.shape)), generator=gen, device=grad.device) / math.sqrt(self.rank)
        return {"p": p.to(grad.dtype), "right": int(self._side(tuple(grad.shape)) == "right")}

    def project(self, state: State, grad: Tensor) -> Tensor:
        return grad @ state["p"].mT if state["right"] else state["p"].mT @ grad

    def project_back(self, state: State, low: Tensor) -> Tensor:
        """The adjoint of `project` (P is not orthonormal: APOLLO itself never projects back)."""
        return low @ state["p"] if state["right"] else state["p"] @ low

    def low_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        m, n = shape
        return (m, self.rank) if self._side(shape) == "right" else (self.rank, n)

    def state_specs(self, shape: tuple[int, int]) -> dict[str, StateSpec]:
        placement = REPLICATED if self._side(shape) == "right" else ROWS
        return {"p": StateSpec(self._p_shape(shape), placement=placement),
                "last_norm": StateSpec((), kept=True)}  # ||G s|| of the step before, for the limiter

    def full_update(self, state: State, grad: Tensor | None, low_grad: Tensor, low_update: Tensor) -> Tensor:
        if grad is None:
            raise RuntimeError("APOLLO scales the full gradient: it cannot step from projected accumulated gradients")
        if self.scale_type == "channel":
            dim = 1 if state["right"] else 0  # along R's rank dimension: one norm per row (right) or column of G
            norms = lambda t: torch.linalg.vector_norm(t, dim=dim, keepdim=True)  # noqa: E731
        else:
            norms = torch.linalg.vector_norm
        s = norms(low_update) / (norms(low_grad) + 1e-8)
        scaled = grad * s.to(grad.dtype)
        norm = torch.linalg.vector_norm(scaled)
        if "last_norm" in state:
            growth = norm / (state["last_norm"] + 1e-8)  # compared with gamma in its own dtype, as apollo-torch
            limiter = torch.where(growth < self.norm_growth, 1.0, growth / self.norm_growth)
            scaled, norm = scaled / limiter, norm / limiter
        state["last_norm"] = norm
        return scaled * math.sqrt(self.scale)


@register_projector("apollo")
@dataclass(frozen=True)
class ApolloProjector(_Apollo):
    """APOLLO: channel-wise scaling from a rank-`rank` random projection."""

    rank: int = 256
    proj_type: str = "std"
    scale: float = 1.0
    scale_type: str = "channel"

    def __post_init__(self):
        self._check()


@register_projector("apollo-mini")
@dataclass(frozen=True)
class ApolloMiniProjector(_Apollo):
    """APOLLO-Mini: one scale per tensor from a rank-1 projection (rank is not an option: --rank is dropped)."""

    rank: ClassVar[int] = 1
    scale_type: ClassVar[str] = "tensor"
    proj_type: str = "std"
    scale: float = 128.0

    def __post_init__(self):
        self._check()
