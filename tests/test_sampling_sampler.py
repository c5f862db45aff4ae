import itertools
import json
import math

import numpy as np
import pytest

from sampling.sampler import LayerSampler, exact_inclusion, monte_carlo_inclusion

RATIOS = [0.30, 0.27, 0.10, 0.05, 0.02, 0.02, 0.03, 0.08]


def brute_force_inclusion(p, gamma):
    """Sum the probability of every ordered sequence of gamma distinct draws."""
    inclusion = np.zeros(len(p))
    for seq in itertools.permutations(range(len(p)), gamma):
        prob, used = 1.0, 0.0
        for j in seq:
            prob *= p[j] / (1.0 - used) if used < 1.0 else 0.0
            used += p[j]
        for j in seq:
            inclusion[j] += prob
    return inclusion


@pytest.mark.parametrize("p,gamma", [
    ([0.5, 0.2, 0.15, 0.1, 0.05], 2),
    ([0.4, 0.0, 0.3, 0.1, 0.1, 0.1], 3),
    (list(np.random.default_rng(3).dirichlet(np.ones(7) * 0.5)), 4),
])
def test_exact_inclusion_equals_enumeration(p, gamma):
    p = np.asarray(p) / np.sum(p)
    exact = exact_inclusion(p, gamma)
    assert np.allclose(exact, brute_force_inclusion(p, gamma), atol=1e-12)
    assert math.isclose(exact.sum(), gamma, rel_tol=1e-12)


def test_inclusion_is_not_p_times_gamma():
    sampler = LayerSampler("owlore", gamma=3, period=1, seed=0, n_layers=8, ratios=RATIOS)
    exact = np.array(sampler.inclusion_probabilities())
    naive = 3 * np.array(sampler.probabilities)
    assert np.abs(exact - naive).max() > 0.05  # the heavy blocks saturate, light ones gain


def test_empirical_frequencies_match_reported_inclusion():
    # 20000 periods: each frequency has std <= sqrt(0.25/20000) = 0.0035; tolerance 0.015 (> 4 std).
    sampler = LayerSampler("owlore", gamma=3, period=1, seed=11, n_layers=8, ratios=RATIOS)
    n = 20_000
    counts = np.zeros(8)
    for t in range(n):
        counts[sampler.draw(t)] += 1
    exact = np.array(sampler.inclusion_probabilities("exact"))
    mc = np.array(sampler.inclusion_probabilities("monte_carlo", n_draws=200_000))
    assert np.abs(counts / n - exact).max() < 0.015
    assert np.abs(mc - exact).max() < 0.006  # std <= 0.0011 at 200000 draws


def test_monte_carlo_is_fixed_seed():
    p = np.array(RATIOS) / sum(RATIOS)
    assert np.array_equal(monte_carlo_inclusion(p, 3, 5000, seed=4), monte_carlo_inclusion(p, 3, 5000, seed=4))


@pytest.mark.parametrize("mode", ["owlore", "uniform", "owlore_reverse", "decrease", "increase"])
def test_gamma_distinct_sorted_blocks_and_reproducible(mode):
    a = LayerSampler(mode, gamma=4, period=5, seed=7, n_layers=8, ratios=RATIOS)
    b = LayerSampler(mode, gamma=4, period=5, seed=7, n_layers=8, ratios=RATIOS)
    other = LayerSampler(mode, gamma=4, period=5, seed=8, n_layers=8, ratios=RATIOS)
    draws = [a.active_layers(step) for step in range(0, 500, 5)]
    for layers in draws:
        assert len(set(layers)) == 4 and layers == sorted(layers) and all(0 <= i < 8 for i in layers)
    assert draws == [b.draw(t) for t in range(100)]  # pure function of (seed, period)
    assert draws != [other.draw(t) for t in range(100)]
    assert a.active_layers(12) == a.active_layers(14) == a.draw(2)  # constant within a period


def test_mode_probabilities():
    L = 8
    assert LayerSampler("uniform", 2, 1, 0, L).probabilities == pytest.approx([1 / L] * L)
    assert LayerSampler("decrease", 2, 1, 0, L).probabilities == pytest.approx([(L - i) / 36 for i in range(L)])
    assert LayerSampler("increase", 2, 1, 0, L).probabilities == pytest.approx([(i + 1) / 36 for i in range(L)])
    p = np.array(RATIOS) / sum(RATIOS)
    assert LayerSampler("owlore", 2, 1, 0, L, ratios=RATIOS).probabilities == pytest.approx(p.tolist())
    reverse = (p.max() - p) / (p.max() - p).sum()
    assert LayerSampler("owlore_reverse", 2, 1, 0, L, ratios=RATIOS).probabilities == pytest.approx(reverse.tolist())


def test_uniform_mode_is_uniform():
    sampler = LayerSampler("uniform", gamma=3, period=1, seed=0, n_layers=10)
    assert sampler.inclusion_probabilities() == pytest.approx([0.3] * 10)
    counts = np.zeros(10)
    for t in range(10_000):
        counts[sampler.draw(t)] += 1
    assert np.abs(counts / 10_000 - 0.3).max() < 0.02  # std 0.0046


def test_fixed_mode_is_fixed():
    sampler = LayerSampler("fixed", gamma=2, period=3, seed=0, n_layers=6, fixed_layers=[4, 1])
    assert all(sampler.active_layers(s) == [1, 4] for s in range(50))
    assert sampler.inclusion_probabilities() == [0, 1, 0, 0, 1, 0]


@pytest.mark.parametrize("kwargs,message", [
    (dict(ratios=RATIOS, policy="owlore", gamma=9), "gamma must be in"),
    (dict(ratios=[0.0] * 8, policy="owlore", gamma=2), "all block weights are zero"),
    (dict(ratios=[0.1, -0.2] + [0.1] * 6, policy="owlore", gamma=2), "non-negative"),
    (dict(ratios=[0.1, float("nan")] + [0.1] * 6, policy="owlore", gamma=2), "NaN"),
    (dict(ratios=RATIOS[:5], policy="owlore", gamma=2), "expected 8 outlier ratios"),
    (dict(ratios=None, policy="owlore", gamma=2), "needs outlier ratios"),
    (dict(ratios=RATIOS, policy="lisa", gamma=2), "unknown sampling policy"),
    (dict(ratios=[0.3, 0.1] + [0.0] * 6, policy="owlore", gamma=3), "only 2 blocks"),
    (dict(ratios=[0.2] * 8, policy="owlore_reverse", gamma=2), "all block weights are zero"),
    (dict(fixed_layers=[1, 8], policy="fixed", gamma=2), "distinct block indices"),
    (dict(fixed_layers=[1, 2], policy="fixed", gamma=3), "must equal the number"),
    (dict(alphas=[2.0, 0.5] + [3.0] * 6, policy="htsr", gamma=2), "alphas must be > 1"),
    (dict(ratios=RATIOS, policy="owlore", gamma=2, period=0), "period"),
    (dict(ratioz=RATIOS, policy="owlore", gamma=2), "unknown sampler input ratioz"),
])
def test_bad_inputs_raise_clear_errors(kwargs, message):
    args = dict(period=1, seed=0, n_layers=8) | kwargs
    with pytest.raises(ValueError, match=message):
        LayerSampler(**args)


def test_exact_inclusion_refuses_huge_enumerations_but_monte_carlo_works():
    sampler = LayerSampler("decrease", gamma=6, period=1, seed=0, n_layers=80)
    with pytest.raises(ValueError, match="monte_carlo"):
        sampler.inclusion_probabilities("exact")
    assert sum(sampler.inclusion_probabilities("monte_carlo", n_draws=20_000)) == pytest.approx(6)


def test_state_dict_resume_gives_the_same_draws_and_counts():
    full = LayerSampler("owlore", gamma=3, period=4, seed=5, n_layers=8, ratios=RATIOS)
    first = LayerSampler("owlore", gamma=3, period=4, seed=5, n_layers=8, ratios=RATIOS)
    full_draws = [full.active_layers(s) for s in range(100)]
    head = [first.active_layers(s) for s in range(37)]
    state = json.loads(json.dumps(first.state_dict()))  # plain types
    resumed = LayerSampler("owlore", gamma=3, period=4, seed=5, n_layers=8, ratios=RATIOS)
    resumed.load_state_dict(state)
    assert head + [resumed.active_layers(s) for s in range(37, 100)] == full_draws
    assert resumed.counts == full.counts and sum(full.counts) == 3 * 25


def test_load_state_dict_refuses_another_configuration():
    state = LayerSampler("owlore", gamma=3, period=4, seed=5, n_layers=8, ratios=RATIOS).state_dict()
    with pytest.raises(ValueError, match="seed"):
        LayerSampler("owlore", gamma=3, period=4, seed=6, n_layers=8, ratios=RATIOS).load_state_dict(state)
