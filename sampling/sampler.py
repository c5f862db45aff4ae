"""Which decoder blocks train when: gamma distinct blocks every `period` steps (docs/method.md, "Layer sampling").

The draw for period t is a pure function of (seed, t), so every data-parallel rank and a resumed
run pick the same blocks. Blocks are drawn one after another without replacement, each with
probability proportional to its weight among those not yet drawn.
"""
from __future__ import annotations

import math

import numpy as np
import torch.nn as nn

MODES = ("owlore", "uniform", "owlore_reverse", "decrease", "increase", "fixed")
MAX_EXACT_STATES = 300_000  # subsets the exact inclusion computation may visit


def selection_weights(ratios: list[float] | None, mode: str, n_layers: int, fixed_layers: list[int] | None) -> np.ndarray:
    """Per-draw probabilities p (sum 1) of each block for a sampling mode."""
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "uniform":
        weights = np.ones(n_layers)
    elif mode == "decrease":
        weights = np.arange(n_layers, 0, -1, dtype=np.float64)
    elif mode == "increase":
        weights = np.arange(1, n_layers + 1, dtype=np.float64)
    elif mode == "fixed":
        weights = np.zeros(n_layers)
        weights[_check_fixed(fixed_layers, n_layers)] = 1.0
    else:
        d = _check_ratios(ratios, n_layers)
        weights = d if mode == "owlore" else (d / d.sum()).max() - d / d.sum()
        if not weights.sum() > 0:
            raise ValueError(f"mode {mode!r}: all block weights are zero (ratios {d.tolist()})")
    return weights / weights.sum()


def _check_ratios(ratios: list[float] | None, n_layers: int) -> np.ndarray:
    if ratios is None:
        raise ValueError("this sampling mode needs outlier ratios, got None")
    d = np.asarray(ratios, dtype=np.float64)
    if d.shape != (n_layers,):
        raise ValueError(f"expected {n_layers} outlier ratios (one per block), got {len(d)}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"outlier ratios contain NaN or inf: {d.tolist()}")
    if np.any(d < 0):
        raise ValueError(f"outlier ratios must be non-negative, got {d.tolist()}")
    if not d.sum() > 0:
        raise ValueError("outlier ratios are all zero: no block can be sampled")
    return d


def _check_fixed(fixed_layers: list[int] | None, n_layers: int) -> list[int]:
    if not fixed_layers:
        raise ValueError("mode 'fixed' needs a non-empty fixed_layers list")
    if len(set(fixed_layers)) != len(fixed_layers) or not all(0 <= i < n_layers for i in fixed_layers):
        raise ValueError(f"fixed_layers must be distinct block indices in [0, {n_layers}), got {fixed_layers}")
    return sorted(fixed_layers)


def sequential_draw(p: np.ndarray, gamma: int, rng: np.random.Generator) -> list[int]:
    """gamma distinct indices; each draw picks among the remaining ones with probability ∝ p."""
    remaining = p.astype(np.float64).copy()
    chosen = []
    for _ in range(gamma):
        cdf = np.cumsum(remaining)
        i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        i = min(i, len(p) - 1)
        while remaining[i] == 0:  # guards the u*total == cdf[-1] rounding edge
            i -= 1
        chosen.append(i)
        remaining[i] = 0.0
    return chosen


def exact_inclusion(p: np.ndarray, gamma: int) -> np.ndarray:
    """P(block i is among the gamma drawn), exactly, by dynamic programming over drawn subsets.

    P(S) for a set S reached after |S| draws = sum_{j in S} P(S - j) * p_j / (1 - p(S - j)).
    The last draw is folded in: pi_i = sum_{|S|=gamma-1} P(S) * ([i in S] + [i not in S] p_i / (1 - p(S))).
    """
    n = len(p)
    states = sum(math.comb(n, k) for k in range(gamma))
    if states > MAX_EXACT_STATES:
        raise ValueError(f"exact inclusion probabilities for {n} blocks, gamma {gamma} need {states} subsets "
                         f"(limit {MAX_EXACT_STATES}); use method='monte_carlo'")
    level = {(): 1.0}  # sorted tuple of drawn blocks -> probability of having drawn exactly that set
    for _ in range(gamma - 1):
        nxt: dict[tuple[int, ...], float] = {}
        for drawn, prob in level.items():
            rest = 1.0 - sum(p[j] for j in drawn)
            if prob == 0.0 or rest <= 0.0:
                continue
            for j in range(n):
                if j not in drawn and p[j] > 0:
                    key = tuple(sorted(drawn + (j,)))
                    nxt[key] = nxt.get(key, 0.0) + prob * p[j] / rest
        level = nxt
    inclusion = np.zeros(n)
    for drawn, prob in level.items():
        in_set = np.zeros(n, dtype=bool)
        in_set[list(drawn)] = True
        rest = 1.0 - p[in_set].sum()
        last = np.where(in_set, 0.0, p / rest) if rest > 0 else np.zeros(n)
        inclusion += prob * (in_set + last)
    return inclusion


def monte_carlo_inclusion(p: np.ndarray, gamma: int, n_draws: int = 100_000, seed: int = 0) -> np.ndarray:
    """Inclusion frequencies over n_draws fixed-seed draws (Gumbel-top-k: the same law as the sequential draw)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(p))
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    for start in range(0, n_draws, 10_000):
        keys = log_p + rng.gumbel(size=(min(10_000, n_draws - start), len(p)))
        top = np.argpartition(-keys, gamma - 1, axis=1)[:, :gamma]
        counts += np.bincount(top.ravel(), minlength=len(p))
    return counts / n_draws


class LayerSampler:
    """Draws the active decoder blocks for each period of `period` steps."""

    def __init__(self, ratios: list[float] | None, mode: str, gamma: int, period: int, seed: int, n_layers: int,
                 fixed_layers: list[int] | None = None):
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if mode == "fixed" and fixed_layers is not None and gamma != len(fixed_layers):
            raise ValueError(f"mode 'fixed': gamma ({gamma}) must equal the number of fixed_layers ({len(fixed_layers)})")
        if not 1 <= gamma <= n_layers:
            raise ValueError(f"gamma must be in [1, {n_layers}] (number of blocks), got {gamma}")
        if period < 1:
            raise ValueError(f"period must be >= 1 step, got {period}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.mode, self.gamma, self.period, self.seed, self.n_layers = mode, gamma, period, seed, n_layers
        self.ratios = None if ratios is None else [float(r) for r in ratios]
        self.fixed_layers = None if fixed_layers is None else sorted(int(i) for i in fixed_layers)
        self._p = selection_weights(self.ratios, mode, n_layers, self.fixed_layers)
        if np.count_nonzero(self._p) < gamma:
            raise ValueError(f"mode {mode!r}: only {np.count_nonzero(self._p)} blocks have non-zero probability, "
                             f"cannot draw gamma={gamma} distinct blocks")
        self.counts = [0] * n_layers  # realised number of periods each block was active
        self.last_counted_period = -1

    @property
    def probabilities(self) -> list[float]:
        """Per-draw probabilities p_l (sum 1)."""
        return self._p.tolist()

    def draw(self, period_index: int) -> list[int]:
        """The sorted blocks of one period: a pure function of (seed, period_index)."""
        if period_index < 0:
            raise ValueError(f"period index must be >= 0, got {period_index}")
        if self.mode == "fixed":
            return list(self.fixed_layers)
        return sorted(sequential_draw(self._p, self.gamma, np.random.default_rng([self.seed, period_index])))

    def active_layers(self, step: int) -> list[int]:
        """Sorted active blocks at a training step; counts each period's draw once, in order."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        period_index = step // self.period
        layers = self.draw(period_index)
        if period_index > self.last_counted_period:
            for i in layers:
                self.counts[i] += 1
            self.last_counted_period = period_index
        return layers

    def inclusion_probabilities(self, method: str = "exact", n_draws: int = 100_000, seed: int = 0) -> list[float]:
        """P(block l is active in a period); not p_l * gamma once draws are without replacement."""
        if method == "exact":
            if self.mode == "uniform":
                return [self.gamma / self.n_layers] * self.n_layers
            if self.mode == "fixed":
                return (self._p > 0).astype(float).tolist()
            return exact_inclusion(self._p, self.gamma).tolist()
        if method == "monte_carlo":
            return monte_carlo_inclusion(self._p, self.gamma, n_draws, seed).tolist()
        raise ValueError(f"unknown inclusion method {method!r}; use 'exact' or 'monte_carlo'")

    def state_dict(self) -> dict:
        return {"ratios": self.ratios, "mode": self.mode, "gamma": self.gamma, "period": self.period,
                "seed": self.seed, "n_layers": self.n_layers, "fixed_layers": self.fixed_layers,
                "counts": list(self.counts), "last_counted_period": self.last_counted_period}

    def load_state_dict(self, state: dict) -> None:
        """Restore counts; the configuration must match the one this sampler was built with."""
        mine = self.state_dict()
        for key in ("ratios", "mode", "gamma", "period", "seed", "n_layers", "fixed_layers"):
            if key not in state:
                raise KeyError(f"sampler state is missing {key!r}")
            if state[key] != mine[key]:
                raise ValueError(f"sampler state has {key}={state[key]!r} but this run uses {mine[key]!r}")
        if len(state["counts"]) != self.n_layers:
            raise ValueError(f"sampler state has {len(state['counts'])} counts for {self.n_layers} blocks")
        self.counts = [int(c) for c in state["counts"]]
        self.last_counted_period = int(state["last_counted_period"])


def set_trainable(model: nn.Module, active_layers: list[int], train_outer: bool = True) -> None:
    """requires_grad on the active blocks only; embeddings, final norm and head follow `train_outer`."""
    active = set(active_layers)
    for i, block in enumerate(model.layers):
        block.requires_grad_(i in active)
    layer_params = {id(p) for p in model.layers.parameters()}
    for p in model.parameters():
        if id(p) not in layer_params:
            p.requires_grad_(train_outer)


__all__ = ["LayerSampler", "MODES", "selection_weights", "sequential_draw", "exact_inclusion",
           "monte_carlo_inclusion", "set_trainable"]
