"""Heavy-tailed self-regularisation: the median-Hill power-law exponent of each weight's spectrum.

docs/method.md, "HT-SR alpha".

With the eigenvalues of WᵀW sorted ascending, lambda_(1) <= ... <= lambda_(N), and k = N // 2:
alpha = 1 + k / sum_{i=1..k} ln(lambda_(N-i+1) / lambda_(N-k)). Lower alpha means a heavier tail.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor
from tqdm import tqdm

from sampling.blocks import block_linears, decoder_blocks


def hill_alpha(eigenvalues: Tensor) -> float:
    """Median-Hill estimate (k = N/2) of the power-law exponent of a set of eigenvalues."""
    lam = torch.sort(eigenvalues.detach().double().flatten()).values
    n = lam.numel()
    if n < 2:
        raise ValueError(f"need at least 2 eigenvalues for a Hill estimate, got {n}")
    if not torch.isfinite(lam).all() or lam[0] < 0:
        raise ValueError("eigenvalues must be finite and non-negative")
    k = n // 2
    threshold = lam[n - k - 1]  # lambda_(N-k), 1-indexed
    if threshold <= 0:
        raise ValueError(f"the spectrum is rank-deficient below its median ({n - k} of {n} eigenvalues are zero): "
                         "alpha is undefined")
    log_excess = torch.log(lam[n - k:] / threshold).sum().item()
    if log_excess == 0:
        raise ValueError("the upper half of the spectrum is flat: alpha is infinite")
    return 1.0 + k / log_excess


def weight_alpha(weight: Tensor) -> float:
    """Alpha of one weight matrix from the squared singular values (fp32)."""
    if weight.dim() != 2:
        raise ValueError(f"HT-SR needs a 2-D weight, got shape {tuple(weight.shape)}")
    return hill_alpha(torch.linalg.svdvals(weight.detach().float()) ** 2)


def block_alphas(model: nn.Module, progress: bool = False) -> tuple[list[float], list[dict[str, float]]]:
    """Per block the mean alpha of its linears, and each linear's alpha (`progress`: a bar over the blocks)."""
    blocks = tqdm(decoder_blocks(model), desc="HT-SR alphas", unit="block", disable=not progress, leave=False)
    per_matrix = [{name: weight_alpha(lin.weight) for name, lin in block_linears(block).items()} for block in blocks]
    return [sum(a.values()) / len(a) for a in per_matrix], per_matrix


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties get the mean of their positions."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation: Pearson correlation of the (tie-averaged) ranks."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two equal-length sequences of >= 2 values, got {len(x)} and {len(y)}")
    if any(not math.isfinite(v) for v in list(x) + list(y)):
        raise ValueError("spearman got NaN or inf")
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        raise ValueError("spearman is undefined when one sequence is constant")
    return cov / math.sqrt(vx * vy)
