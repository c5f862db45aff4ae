import dataclasses
import math

import numpy as np
import pytest
import torch

from model import Transformer, get_config
from sampling.htsr import block_alphas, hill_alpha, spearman, weight_alpha


def power_law_matrix(alpha, n=128, m=160, seed=0):
    """W = U diag(sqrt(lambda)) V^T with eigenvalues of W^T W at the quantiles of a Pareto
    density p(lambda) ∝ lambda^-alpha on [1, inf) (tail index alpha - 1)."""
    u = (np.arange(n) + 0.5) / n
    lam = (1.0 - u) ** (-1.0 / (alpha - 1.0))
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (U * torch.from_numpy(np.sqrt(lam))) @ V.T


def brute_force_hill(lam):
    lam = sorted(lam)
    N, k = len(lam), len(lam) // 2
    return 1 + k / sum(math.log(lam[N - i] / lam[N - k - 1]) for i in range(1, k + 1))


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_recovers_a_known_power_law_exponent(alpha):
    estimate = weight_alpha(power_law_matrix(alpha).float())
    assert estimate == pytest.approx(alpha, rel=0.01)


def test_hill_formula_matches_brute_force():
    lam = torch.rand(101, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10 + 0.01
    assert hill_alpha(lam) == pytest.approx(brute_force_hill(lam.tolist()), rel=1e-12)
    assert hill_alpha(lam[torch.randperm(101)]) == pytest.approx(hill_alpha(lam), rel=1e-12)


def test_alpha_is_invariant_to_scaling_the_weight():
    W = power_law_matrix(3.0, seed=1).float()
    assert weight_alpha(W * 17.0) == pytest.approx(weight_alpha(W), rel=1e-4)
    assert weight_alpha(-W * 0.01) == pytest.approx(weight_alpha(W), rel=1e-4)


def test_heavier_tail_gives_lower_alpha():
    assert weight_alpha(power_law_matrix(2.0).float()) < weight_alpha(power_law_matrix(4.0).float())


def test_bad_spectra_raise():
    with pytest.raises(ValueError, match="rank-deficient"):
        hill_alpha(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="flat"):
        hill_alpha(torch.ones(8))
    with pytest.raises(ValueError, match="finite"):
        hill_alpha(torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match="2-D"):
        weight_alpha(torch.ones(4))


def test_block_alphas_average_the_blocks_matrices():
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(get_config("tiny"), n_layers=2))
    means, per_matrix = block_alphas(model)
    assert len(means) == 2 and len(per_matrix[0]) == 7
    wq = model.layers[1].attention.wq.weight
    assert per_matrix[1]["attention.wq"] == pytest.approx(weight_alpha(wq))
    assert means[1] == pytest.approx(sum(per_matrix[1].values()) / 7)


def test_spearman_matches_the_no_ties_formula_and_handles_ties():
    rng = np.random.default_rng(0)
    x, y = rng.random(20).tolist(), rng.random(20).tolist()
    rank = lambda v: [sorted(v).index(a) + 1 for a in v]  # noqa: E731
    d2 = sum((a - b) ** 2 for a, b in zip(rank(x), rank(y)))
    assert spearman(x, y) == pytest.approx(1 - 6 * d2 / (20 * (20**2 - 1)), abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks of y are [1.5, 1.5, 3, 4]; Pearson of [1, 2, 3, 4] with them is 0.9486833
    assert spearman([1, 2, 3, 4], [5, 5, 6, 7]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    with pytest.raises(ValueError, match="constant"):
        spearman([1, 2, 3], [2, 2, 2])
    with pytest.raises(ValueError, match="equal-length"):
        spearman([1, 2, 3], [1, 2])
