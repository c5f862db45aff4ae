"""GaLore gradient projection: a rank-r' subspace of a 2-D gradient and the maps into and out of it.

The math: docs/method.md, "GaLore".

For G (m x n) and r' = min(r, m, n), with G = U S Vh:
  side "right": P = Vh[:r'] (r' x n), R = G P^T,      back = R P
  side "left":  P = U[:, :r'] (m x r'), R = P^T G,    back = P R
  side "full":  R = U_r^T G V_r (r' x r'),            back = U_r R Vh_r
`std` picks "right" for tall/square G and "left" for wide G; `reverse_std` the opposite. The side is
decided once, stored with P, and never re-derived from shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
SVD_METHODS = ("exact", "randomized")
PROJ_SOURCES = ("svd", "random")
SIDES = ("left", "right", "full")


def projection_side(shape: tuple[int, ...] | torch.Size, proj_type: str) -> str:
    """'left', 'right' or 'full' for a gradient of `shape` under `proj_type`."""
    if proj_type not in PROJ_TYPES:
        raise ValueError(f"unknown proj_type {proj_type!r}; expected one of {PROJ_TYPES}")
    if len(shape) != 2:
        raise ValueError(f"GaLore projects 2-D gradients only, got shape {tuple(shape)}")
    if proj_type in ("left", "right", "full"):
        return proj_type
    tall = shape[0] >= shape[1]
    if proj_type == "std":
        return "right" if tall else "left"
    return "left" if tall else "right"


@dataclass
class Projection:
    """Orthonormal bases of one projection; `u` is m x r' (left, full), `vh` is r' x n (right, full)."""

    side: str
    u: Tensor | None = None
    vh: Tensor | None = None

    def project(self, grad: Tensor) -> Tensor:
        if self.side == "left":
            return self.u.mT @ grad
        if self.side == "right":
            return grad @ self.vh.mT
        return self.u.mT @ grad @ self.vh.mT

    def project_back(self, low: Tensor, scale: float = 1.0) -> Tensor:
        if self.side == "left":
            full = self.u @ low
        elif self.side == "right":
            full = low @ self.vh
        else:
            full = self.u @ low @ self.vh
        return full * scale


def randomized_svd(a: Tensor, rank: int, oversample: int, power_iters: int, seed: int) -> tuple[Tensor, Tensor]:
    """Top-`rank` singular vectors (U[:, :rank], Vh[:rank]) by a randomized range finder with power iterations
    (Halko, Martinsson & Tropp 2011). Seeded by its own generator, so every process and a resumed run agree."""
    m, n = a.shape
    sketch = min(rank + oversample, m, n)
    gen = torch.Generator(device=a.device).manual_seed(seed)
    omega = torch.randn(n, sketch, generator=gen, device=a.device, dtype=a.dtype)
    basis = torch.linalg.qr(a @ omega).Q
    for _ in range(power_iters):  # re-orthonormalised subspace iteration on A A^T
        basis = torch.linalg.qr(a.mT @ basis).Q
        basis = torch.linalg.qr(a @ basis).Q
    u_small, _, vh = torch.linalg.svd(basis.mT @ a, full_matrices=False)
    return (basis @ u_small)[:, :rank], vh[:rank]


def _random_orthonormal(dim: int, rank: int, seed: int, device: torch.device) -> Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.linalg.qr(torch.randn(dim, rank, generator=gen, device=device)).Q


def compute_projection(
    grad: Tensor,
    rank: int,
    proj_type: str = "std",
    svd: str = "exact",
    oversample: int = 8,
    power_iters: int = 2,
    source: str = "svd",
    seed: int = 0,
) -> Projection:
    """Projection of rank r' = min(rank, m, n) for `grad`, computed in fp32 and stored in grad's dtype."""
    side = projection_side(grad.shape, proj_type)
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"GaLore rank must be a positive int, got {rank!r}")
    if svd not in SVD_METHODS:
        raise ValueError(f"unknown svd method {svd!r}; expected one of {SVD_METHODS}")
    if source not in PROJ_SOURCES:
        raise ValueError(f"unknown projection source {source!r}; expected one of {PROJ_SOURCES}")
    m, n = grad.shape
    r = min(rank, m, n)
    g = grad.detach().float()
    if source == "random":
        u = _random_orthonormal(m, r, seed, g.device)
        vh = _random_orthonormal(n, r, seed + 1, g.device).mT
    else:
        if not torch.isfinite(g).all():
            raise ValueError(f"gradient of shape {tuple(grad.shape)} contains NaN or inf; cannot compute its SVD")
        if svd == "exact":
            full_u, _, full_vh = torch.linalg.svd(g, full_matrices=False)
            u, vh = full_u[:, :r], full_vh[:r]
        else:
            u, vh = randomized_svd(g, r, oversample, power_iters, seed)
    keep_u = side in ("left", "full")
    keep_vh = side in ("right", "full")
    return Projection(side, _owned(u, grad.dtype) if keep_u else None, _owned(vh, grad.dtype) if keep_vh else None)


def _owned(basis: Tensor, dtype: torch.dtype) -> Tensor:
    """A compact copy, so the state never pins the full SVD factors a slice was taken from."""
    return torch.empty(basis.shape, dtype=dtype, device=basis.device).copy_(basis)
