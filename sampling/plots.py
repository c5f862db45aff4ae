"""Per-block pictures: outlier ratio, sampling probability and HT-SR alpha; realised sampling counts."""
from __future__ import annotations

from pathlib import Path

from common.io import atomic_write


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # imported here: matplotlib costs 0.5 s; no pyplot, no global GUI state

    return Figure(figsize=(width, height), layout="constrained")


def plot_layer_profile(path: str | Path, ratios: list[float], probabilities: list[float],
                       inclusion: list[float] | None = None, alphas: list[float] | None = None,
                       title: str = "", M: float | None = None, gamma: int | None = None,
                       rho: float | None = None) -> None:
    """Stacked panels over block index: D_l, per-draw p_l (and inclusion probability), alpha_l."""
    n = len(ratios)
    if len(probabilities) != n or (inclusion is not None and len(inclusion) != n) or (alphas is not None and len(alphas) != n):
        raise ValueError("ratios, probabilities, inclusion and alphas must have one value per block")
    blocks = list(range(n))
    panels = 3 if alphas is not None else 2
    fig = _figure(max(7.0, 0.28 * n + 3), 2.6 * panels + 0.6)
    axes = fig.subplots(panels, 1, sharex=True)
    axes[0].bar(blocks, ratios, color="tab:red")
    axes[0].set_ylabel("outlier ratio D (%)")
    axes[0].set_title(f"{title}  (M = {M:g})" if M is not None else title)
    axes[1].bar(blocks, probabilities, color="tab:blue", label="per-draw p")
    if inclusion is not None:
        axes[1].plot(blocks, inclusion, "o-", color="tab:orange", ms=3,
                     label=f"P(active), gamma = {gamma}" if gamma else "P(active)")
    axes[1].set_ylabel("probability")
    axes[1].legend(fontsize=8)
    if alphas is not None:
        axes[2].plot(blocks, alphas, "s-", color="tab:green", ms=3)
        axes[2].set_ylabel("HT-SR alpha (mean)")
        if rho is not None:
            axes[2].set_title(f"Spearman rho(D, alpha) = {rho:+.3f}", fontsize=9)
    axes[-1].set_xlabel("decoder block")
    axes[-1].set_xticks(blocks[:: max(1, n // 16)])
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))


def plot_sampling_counts(path: str | Path, counts: list[int], inclusion: list[float] | None = None,
                         title: str = "realised sampling counts") -> None:
    """Periods each block was active, with the expected count n_periods * P(active) when given."""
    n = len(counts)
    fig = _figure(max(7.0, 0.28 * n + 3), 3.2)
    ax = fig.subplots()
    ax.bar(range(n), counts, color="tab:purple", label="realised")
    if inclusion is not None:
        if len(inclusion) != n:
            raise ValueError(f"{len(inclusion)} inclusion probabilities for {n} blocks")
        periods = sum(counts) / max(1e-12, sum(inclusion))
        ax.plot(range(n), [periods * q for q in inclusion], "o-", color="black", ms=3, label="expected")
        ax.legend(fontsize=8)
    ax.set_xlabel("decoder block")
    ax.set_ylabel("periods active")
    ax.set_title(title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
