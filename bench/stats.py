"""Paired comparisons of fine-tuned models scored on the same held-out rows: bootstrap confidence intervals
and verdicts decided by rules fixed before the numbers are seen (bench/reproduce.py states them in its report).

An arm's result is, per seed, one value per held-out row (correct or not, the answer's NLL and token count).
Two arms trained with the same seed saw the same data order, so the difference is taken row by row within a
seed. The bootstrap resamples seeds and, independently, rows within each task (the tasks' sizes fixed), so the
interval carries both sources of noise: which training run, and which test questions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("mean8", "pooled", "nll")  # unweighted mean of the task accuracies; row-pooled accuracy; answer NLL/token
HIGHER_IS_BETTER = {"mean8": True, "pooled": True, "nll": False}
VERDICTS = ("supported", "refuted", "inconclusive")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    seeds: int


@dataclass(frozen=True)
class Arm:
    """Per-seed row values of one arm, rows in one fixed order shared by every arm."""
    acc: np.ndarray  # (seeds, rows) 0/1
    nll: np.ndarray  # (seeds, rows) summed NLL of the answer tokens
    ntok: np.ndarray  # (rows,) answer tokens per row
    seeds: tuple[int, ...]


def _statistic(metric: str, a: Arm, b: Arm, seed_w: np.ndarray, row_w: np.ndarray, task: np.ndarray,
               n_tasks: int) -> np.ndarray:
    """The metric of a minus b under bootstrap weights: seed_w (B, S), row_w (B, R) -> (B,)."""
    if metric == "nll":
        per_token = lambda arm: (seed_w @ arm.nll * row_w).sum(1) / (seed_w.sum(1) * (row_w @ arm.ntok))  # noqa: E731
        return per_token(a) - per_token(b)
    weighted = seed_w @ (a.acc - b.acc) * row_w / seed_w.sum(1, keepdims=True)  # (B, R): seed-averaged, row-weighted
    if metric == "pooled":
        return weighted.sum(1) / row_w.sum(1)
    by_task = np.stack([weighted[:, task == t].sum(1) / row_w[:, task == t].sum(1) for t in range(n_tasks)], 1)
    return by_task.mean(1)


def paired_difference(metric: str, a: Arm, b: Arm, task: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> Interval:
    """Estimate and percentile bootstrap interval of `metric`(a) - `metric`(b) over their common seeds.

    `task` (rows,) holds each row's task index 0..T-1. Accuracies are in points (x100), NLL in nats/token.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    common = sorted(set(a.seeds) & set(b.seeds))
    if not common:
        raise ValueError("the two arms share no seed: nothing to pair")
    a, b = (Arm(x.acc[[x.seeds.index(s) for s in common]], x.nll[[x.seeds.index(s) for s in common]], x.ntok,
                tuple(common)) for x in (a, b))
    n_tasks, n_seeds = int(task.max()) + 1, len(common)
    scale = 1.0 if metric == "nll" else 100.0
    ones = np.ones((1, n_seeds)), np.ones((1, len(task)))
    estimate = float(_statistic(metric, a, b, *ones, task, n_tasks)[0]) * scale
    rng = np.random.default_rng(seed)
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot).astype(float)
    row_w = np.zeros((n_boot, len(task)))
    for t in range(n_tasks):
        rows = np.flatnonzero(task == t)
        row_w[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=n_boot)
    draws = _statistic(metric, a, b, seed_w, row_w, task, n_tasks) * scale
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), n_seeds)


def verdict(metric: str, interval: Interval) -> str:
    """The claim "arm a is better than arm b": supported when the whole interval says better, refuted when the
    whole interval says worse, inconclusive when it holds zero."""
    better = (interval.low > 0) if HIGHER_IS_BETTER[metric] else (interval.high < 0)
    worse = (interval.high < 0) if HIGHER_IS_BETTER[metric] else (interval.low > 0)
    return "supported" if better else "refuted" if worse else "inconclusive"


def forest_plot(rows: list[tuple[str, Interval]], path, xlabel: str, claimed: dict[str, float] | None = None) -> None:
    """One line per contrast: its estimate and interval; zero marked, and the paper's claimed value if given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for y, (label, iv) in enumerate(reversed(rows)):
        ax.plot([iv.low, iv.high], [y, y], color="tab:blue", lw=2)
        ax.plot([iv.estimate], [y], "o", color="tab:blue")
        if claimed and label in claimed:
            ax.plot([claimed[label]], [y], "x", color="tab:red")
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(range(len(rows)), [f"{label} (S={iv.seeds})" for label, iv in reversed(rows)])
    ax.set_xlabel(xlabel + ("; x: the paper's claim" if claimed else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
