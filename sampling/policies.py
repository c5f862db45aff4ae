"""Sampling policies: how much weight each decoder block gets in the draw.

A policy is a function that returns one non-negative weight per block; the sampler normalises them to
the per-draw probabilities p_l and draws `gamma` distinct blocks every period (sampling/sampler.py).
The names of the function's parameters say what it needs:

  n_layers, gamma   number of blocks, blocks per draw            (the sampler passes them)
  period_index      the period being drawn: weights that change every period (BAdam's block order,
                    sampling/badam.py) are recomputed at every draw
  seed              the run's seed, for a policy that draws its own random numbers
  ratios            outlier ratios D_l (%) of the pre-trained blocks  (train.py loads or computes them)
  alphas            HT-SR alphas of the pre-trained blocks            (train.py computes them)
  fixed_layers      the blocks of --fixed-layers
  state             dynamic policies only: what `observe(model)` returned at the start of this period

Any other parameter is a run input too: train.py gets it from the provider registered under its name
(training/inputs.py, `register_input`; a plugin module may register one beside its policy) and refuses,
before training, a policy whose inputs lack a provider. RUN_INPUTS are the built-in ones.

A static policy (weights fixed for the run) is one registered function:

    @register_policy("decrease")
    def decrease(n_layers: int) -> np.ndarray:
        return np.arange(n_layers, 0, -1.0)

A dynamic policy (weights that follow training) also names an `observe(model) -> dict`, called at the
first step of every period, before its draw. The contract data parallelism and resume rely on: the draw
for period t is a pure function of (seed, t, state_t). So `observe` must be a deterministic function of
the weights, which every rank holds identically, and return plain values (dicts, lists, floats); the
sampler keeps the latest state in its state_dict, so the checkpoint carries it and a run resumed inside
a period draws from the same state as an uninterrupted one:

    @register_policy("htsr_dynamic", observe=observe_alphas)
    def htsr_dynamic(state: dict) -> np.ndarray:
        return heavy_tail_weights(state["alphas"])

Registered policies are the choices of train.py's --sampling.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch.nn as nn

from sampling.htsr import block_alphas

RUN_INPUTS = {"ratios": "outlier ratios", "alphas": "HT-SR alphas", "fixed_layers": "fixed_layers"}
SAMPLER_INPUTS = ("n_layers", "gamma", "state", "period_index", "seed")


@dataclass(frozen=True)
class Policy:
    name: str
    weights: Callable[..., Sequence[float] | np.ndarray]
    observe: Callable[[nn.Module], dict] | None = None

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(inspect.signature(self.weights).parameters)

    @property
    def needs(self) -> tuple[str, ...]:
        """The run inputs (RUN_INPUTS or a plugin's) the caller must give the sampler: every other parameter."""
        return tuple(p for p in self.parameters if p not in SAMPLER_INPUTS)

    @property
    def dynamic(self) -> bool:
        return self.observe is not None

    @property
    def per_period(self) -> bool:
        """Weights that depend on the period index, not only on the run's inputs and state."""
        return "period_index" in self.parameters

    def probabilities(self, n_layers: int, gamma: int, inputs: dict, state: dict | None = None,
                      period_index: int = 0, seed: int = 0) -> np.ndarray:
        """Per-draw probabilities p (sum 1) from the policy's weights."""
        given = {"n_layers": n_layers, "gamma": gamma, "state": state, "period_index": period_index, "seed": seed,
                 **inputs}
        weights = np.asarray(self.weights(**{p: given[p] for p in self.parameters}), dtype=np.float64)
        if weights.shape != (n_layers,):
            raise ValueError(f"policy {self.name!r} returned {weights.shape} weights for {n_layers} blocks")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"policy {self.name!r}: block weights must be finite and non-negative, got {weights.tolist()}")
        if not weights.sum() > 0:
            raise ValueError(f"policy {self.name!r}: all block weights are zero")
        return weights / weights.sum()


POLICIES: dict[str, Policy] = {}


def register_policy(name: str, observe: Callable[[nn.Module], dict] | None = None):
    """Decorator: register `weights` as the sampling policy `name` (dynamic when `observe` is given)."""

    def register(weights: Callable) -> Callable:
        if name in POLICIES:
            raise ValueError(f"sampling policy {name!r} is already registered")
        policy = Policy(name, weights, observe)
        if ("state" in policy.parameters) != policy.dynamic:
            raise ValueError(f"policy {name!r}: a weights function takes `state` exactly when observe is given")
        POLICIES[name] = policy
        return weights

    return register


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown sampling policy {name!r}; known: {', '.join(POLICIES)}")
    return POLICIES[name]


def check_inputs(policy: Policy, inputs: dict, n_layers: int) -> dict:
    """The run inputs a policy needs, the built-in ones validated and as plain lists (a plugin's input as its
    provider gave it); anything else given is an error."""
    unknown = sorted(set(inputs) - set(RUN_INPUTS) - set(policy.needs))
    if unknown:
        raise ValueError(f"unknown sampler input {', '.join(unknown)}; known: {', '.join(RUN_INPUTS)} "
                         f"and what the policy names")
    checked = {}
    for name in policy.needs:
        if inputs.get(name) is None:
            raise ValueError(f"sampling policy {policy.name!r} needs {RUN_INPUTS.get(name, name)}, got None")
        checked[name] = CHECKS[name](inputs[name], n_layers) if name in CHECKS else inputs[name]
    return checked


def _per_block(values: Sequence[float], n_layers: int, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (n_layers,):
        raise ValueError(f"expected {n_layers} {what} (one per block), got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what} contain NaN or inf: {v.tolist()}")
    return v


def _check_ratios(ratios: Sequence[float], n_layers: int) -> list[float]:
    d = _per_block(ratios, n_layers, "outlier ratios")
    if np.any(d < 0):
        raise ValueError(f"outlier ratios must be non-negative, got {d.tolist()}")
    return d.tolist()


def _check_alphas(alphas: Sequence[float], n_layers: int) -> list[float]:
    a = _per_block(alphas, n_layers, "HT-SR alphas")
    if np.any(a <= 1):
        raise ValueError(f"HT-SR alphas must be > 1 (a Hill estimate is 1 + a positive term), got {a.tolist()}")
    return a.tolist()


def _check_fixed(fixed_layers: Sequence[int], n_layers: int) -> list[int]:
    if not fixed_layers:
        raise ValueError("policy 'fixed' needs a non-empty fixed_layers list")
    if len(set(fixed_layers)) != len(fixed_layers) or not all(0 <= i < n_layers for i in fixed_layers):
        raise ValueError(f"fixed_layers must be distinct block indices in [0, {n_layers}), got {list(fixed_layers)}")
    return sorted(int(i) for i in fixed_layers)


CHECKS = {"ratios": _check_ratios, "alphas": _check_alphas, "fixed_layers": _check_fixed}


# The paper's policies (OwLore Table 5 and its ablations) and LISA's uniform one.

@register_policy("owlore")
def owlore(ratios: list[float]) -> np.ndarray:
    """p_l ∝ D_l: blocks with more outliers train more often."""
    return np.asarray(ratios)


@register_policy("owlore_reverse")
def owlore_reverse(ratios: list[float]) -> np.ndarray:
    """p_l ∝ max(p) - p_l with p = D / sum(D): the ablation that favours the fewest outliers."""
    d = np.asarray(ratios)
    if not d.sum() > 0:
        return np.zeros_like(d)
    p = d / d.sum()
    return p.max() - p


@register_policy("uniform")
def uniform(n_layers: int) -> np.ndarray:
    return np.ones(n_layers)


@register_policy("decrease")
def decrease(n_layers: int) -> np.ndarray:
    return np.arange(n_layers, 0, -1, dtype=np.float64)


@register_policy("increase")
def increase(n_layers: int) -> np.ndarray:
    return np.arange(1, n_layers + 1, dtype=np.float64)


@register_policy("fixed")
def fixed(fixed_layers: list[int], n_layers: int, gamma: int) -> np.ndarray:
    """Always the same blocks."""
    if gamma != len(fixed_layers):
        raise ValueError(f"policy 'fixed': gamma ({gamma}) must equal the number of fixed_layers ({len(fixed_layers)})")
    weights = np.zeros(n_layers)
    weights[fixed_layers] = 1.0
    return weights


# Beyond the paper: sampling by heavy-tailedness of the weight spectra (HT-SR, sampling/htsr.py).

def heavy_tail_weights(alphas: list[float]) -> np.ndarray:
    """w_l = 1 / (alpha_l - 1): lower alpha (a heavier-tailed spectrum) -> a higher probability.

    1 / (alpha - 1) is the Hill statistic itself: the mean log-excess ln(lambda_i / lambda_(N-k)) of
    the upper half of the spectrum, averaged over the block's matrices by way of alpha. It needs no
    temperature and is positive for every block, so every block keeps a chance to be drawn.
    """
    return 1.0 / (np.asarray(alphas, dtype=np.float64) - 1.0)


@register_policy("htsr")
def htsr(alphas: list[float]) -> np.ndarray:
    """Static: the alphas of the pre-trained weights."""
    return heavy_tail_weights(alphas)


def observe_alphas(model: nn.Module) -> dict[str, list[float]]:
    """The current per-block alphas (SVD of every block matrix; deterministic for given weights)."""
    return {"alphas": _check_alphas(block_alphas(model)[0], len(model.layers))}


@register_policy("htsr_dynamic", observe=observe_alphas)
def htsr_dynamic(state: dict) -> np.ndarray:
    """Dynamic: alphas recomputed from the current weights at every period boundary."""
    return heavy_tail_weights(state["alphas"])
