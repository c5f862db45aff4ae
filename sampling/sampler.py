"""Which decoder blocks train when: gamma distinct blocks every `period` steps (docs/method.md, "Layer sampling").

The probabilities come from a sampling policy (sampling/policies.py). The draw for period t is a pure
function of (seed, t, the policy's state for t), so every data-parallel rank and a resumed run pick
the same blocks. Blocks are drawn one after another without replacement, each with probability
proportional to its weight among those not yet drawn.
"""
from __future__ import annotations

import math

import numpy as np
import torch.nn as nn

from sampling.policies import Policy, check_inputs, get_policy

MAX_EXACT_STATES = 300_000  # subsets the exact inclusion computation may visit
CONFIGURATION = ("policy", "inputs", "gamma", "period", "seed", "n_layers")  # a resumed sampler must match these


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
    """Draws the active decoder blocks for each period of `period` steps, with a policy's probabilities.

    `inputs` are the run inputs the policy needs (`policy.needs`: ratios, alphas, fixed_layers).
    """

    def __init__(self, policy: str | Policy, gamma: int, period: int, seed: int, n_layers: int, **inputs):
        self.policy = policy if isinstance(policy, Policy) else get_policy(policy)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if not 1 <= gamma <= n_layers:
            raise ValueError(f"gamma must be in [1, {n_layers}] (number of blocks), got {gamma}")
        if period < 1:
            raise ValueError(f"period must be >= 1 step, got {period}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.gamma, self.period, self.seed, self.n_layers = gamma, period, seed, n_layers
        self.inputs = check_inputs(self.policy, inputs, n_layers)
        self.state: dict | None = None  # a dynamic policy's observation, and the period it was made for
        self.state_period = -1
        self._p = None if self.policy.dynamic else self._probabilities(None, 0)
        self.counts = [0] * n_layers  # realised number of periods each block was active
        self.last_counted_period = -1

    def _probabilities(self, state: dict | None, period_index: int) -> np.ndarray:
        p = self.policy.probabilities(self.n_layers, self.gamma, self.inputs, state, period_index, self.seed)
        if np.count_nonzero(p) < self.gamma:
            raise ValueError(f"policy {self.policy.name!r}: only {np.count_nonzero(p)} blocks have non-zero "
                             f"probability, cannot draw gamma={self.gamma} distinct blocks")
        return p

    @property
    def probabilities(self) -> list[float]:
        """Per-draw probabilities p_l (sum 1); for a dynamic policy those of its latest observation, for a
        per-period policy those of period 0 (`draw` computes each period's)."""
        return self._current().tolist()

    def _current(self) -> np.ndarray:
        if self._p is None:
            raise ValueError(f"policy {self.policy.name!r} is dynamic: it has no probabilities before it has "
                             "observed the model (active_layers(step, model))")
        return self._p

    def observe(self, model: nn.Module, period_index: int) -> None:
        """A dynamic policy's state for period `period_index`, from the model's current weights."""
        self._set_state(self.policy.observe(model), period_index)

    def _set_state(self, state: dict, period_index: int) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"policy {self.policy.name!r}: observe must return a dict, got {type(state).__name__}")
        self._p = self._probabilities(state, period_index)
        self.state, self.state_period = state, period_index

    def draw(self, period_index: int) -> list[int]:
        """The sorted blocks of one period: a pure function of (seed, period_index, probabilities)."""
        if period_index < 0:
            raise ValueError(f"period index must be >= 0, got {period_index}")
        rng = np.random.default_rng([self.seed, period_index])
        p = self._probabilities(self.state, period_index) if self.policy.per_period else self._current()
        return sorted(sequential_draw(p, self.gamma, rng))

    def active_layers(self, step: int, model: nn.Module | None = None) -> list[int]:
        """Sorted active blocks at a training step; counts each period's draw once, in order.

        A dynamic policy observes `model` at the first call of each period (train.py calls at the first
        step of every period, and at the first step after a resume, where the checkpointed state of
        that period is kept)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        period_index = step // self.period
        if self.policy.dynamic and self.state_period != period_index:
            if model is None:
                raise ValueError(f"policy {self.policy.name!r} is dynamic: active_layers needs the model")
            self.observe(model, period_index)
        layers = self.draw(period_index)
        if period_index > self.last_counted_period:
            for i in layers:
                self.counts[i] += 1
            self.last_counted_period = period_index
        return layers

    def inclusion_probabilities(self, method: str = "exact", n_draws: int = 100_000, seed: int = 0) -> list[float]:
        """P(block l is active in a period); not p_l * gamma once draws are without replacement. For a
        per-period policy: the mean over the periods drawn so far (period 0 before any)."""
        if self.policy.per_period:
            periods = range(max(self.last_counted_period, 0) + 1)
            return np.mean([self._inclusion(self._probabilities(self.state, t), method, n_draws, seed)
                            for t in periods], axis=0).tolist()
        return self._inclusion(self._current(), method, n_draws, seed).tolist()

    def _inclusion(self, p: np.ndarray, method: str, n_draws: int, seed: int) -> np.ndarray:
        if method == "exact":
            support = p > 0
            if np.all(p[support] == p[support][0]):  # equal weights: every supported block alike, by symmetry
                return np.where(support, self.gamma / support.sum(), 0.0)
            return exact_inclusion(p, self.gamma)
        if method == "monte_carlo":
            return monte_carlo_inclusion(p, self.gamma, n_draws, seed)
        raise ValueError(f"unknown inclusion method {method!r}; use 'exact' or 'monte_carlo'")

    def state_dict(self) -> dict:
        return {"policy": self.policy.name, "inputs": self.inputs, "gamma": self.gamma, "period": self.period,
                "seed": self.seed, "n_layers": self.n_layers, "counts": list(self.counts),
                "last_counted_period": self.last_counted_period, "state": self.state,
                "state_period": self.state_period}

    def load_state_dict(self, state: dict) -> None:
        """Restore counts and a dynamic policy's state; the configuration must match this sampler's."""
        mine = self.state_dict()
        for key in (*CONFIGURATION, "counts", "last_counted_period", "state", "state_period"):
            if key not in state:
                raise ValueError(f"sampler state is missing {key!r}")
        for key in CONFIGURATION:
            if state[key] != mine[key]:
                raise ValueError(f"sampler state has {key}={state[key]!r} but this run uses {mine[key]!r}")
        if len(state["counts"]) != self.n_layers:
            raise ValueError(f"sampler state has {len(state['counts'])} counts for {self.n_layers} blocks")
        if self.policy.dynamic and state["state"] is not None:
            self._set_state(state["state"], int(state["state_period"]))
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
