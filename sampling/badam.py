"""BAdam's block order (Luo et al. 2024, arXiv 2404.02827; `badam` 1.4) as sampling policies: block
coordinate descent, one decoder block trained at a time (gamma 1) and switched every period (BAdam's
`switch_block_every`), in BAdam's three orders:

  badam_ascending    0, 1, ..., n-1, 0, 1, ...
  badam_descending   n-1, ..., 1, 0, n-1, ...            (BAdam's default)
  badam_random       each sweep of n periods a fresh permutation, taken from its end as BAdam pops it

The permutation of sweep k is the (k+1)-th `torch.randperm(n)` of a generator seeded with the run's seed, so
the order is a pure function of (seed, period) and a resumed run continues it; it equals BAdam's after
`torch.manual_seed(seed)` when nothing else draws from torch's global generator in between
(tests/test_sampling_badam.py). Two differences from the package: its first block trains K-1 steps (it
switches once (steps + 1) % K == 0), here every block trains K; and it keeps embeddings and head frozen
unless asked, which is train.py's --freeze-embeddings.
"""
from __future__ import annotations

import numpy as np
import torch

from sampling.policies import register_policy


def _one_block(n_layers: int, gamma: int, block: int) -> np.ndarray:
    if gamma != 1:
        raise ValueError(f"BAdam trains one block at a time: gamma must be 1, got {gamma}")
    weights = np.zeros(n_layers)
    weights[block] = 1.0
    return weights


@register_policy("badam_ascending")
def badam_ascending(n_layers: int, gamma: int, period_index: int) -> np.ndarray:
    return _one_block(n_layers, gamma, period_index % n_layers)


@register_policy("badam_descending")
def badam_descending(n_layers: int, gamma: int, period_index: int) -> np.ndarray:
    return _one_block(n_layers, gamma, n_layers - 1 - period_index % n_layers)


@register_policy("badam_random")
def badam_random(n_layers: int, gamma: int, period_index: int, seed: int) -> np.ndarray:
    sweep, position = divmod(period_index, n_layers)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(sweep + 1):
        order = torch.randperm(n_layers, generator=gen).tolist()
    return _one_block(n_layers, gamma, order[-1 - position])
