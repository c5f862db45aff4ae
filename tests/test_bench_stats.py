"""bench.stats on synthetic results with a planted effect: the paired bootstrap finds a real difference,
covers a null one at about the nominal rate, and pairs rows by position within a seed."""
import numpy as np
import pytest

from bench.stats import Arm, forest_plot, paired_difference, verdict

TASK_SIZES = (300, 300, 150, 150, 250, 285, 150, 250)  # the small tasks of the real split are small here too


def synthetic(rng, effect: float, seeds=(1, 2, 3, 4), sizes=TASK_SIZES):
    """Two arms on the same rows: a row's difficulty is shared, the arms differ by `effect` in probability."""
    task = np.repeat(np.arange(len(sizes)), sizes)
    p = rng.uniform(0.3, 0.8, len(task))
    u = rng.uniform(size=(len(seeds), len(task)))  # the same draw for both arms: a paired design
    base = (u < p).astype(float)
    better = (u < p + effect).astype(float)
    ntok = rng.integers(1, 4, len(task)).astype(float)
    nll_b = rng.gamma(2.0, 1.0, (len(seeds), len(task))) * ntok
    arm = lambda acc, nll: Arm(acc, nll, ntok, tuple(seeds))  # noqa: E731
    return task, arm(better, nll_b - effect * 10 * ntok), arm(base, nll_b)


def test_a_planted_two_point_gain_is_found_on_every_metric():
    task, a, b = synthetic(np.random.default_rng(0), 0.02)
    for metric in ("mean8", "pooled"):
        iv = paired_difference(metric, a, b, task, n_boot=500)
        assert 1.0 < iv.estimate < 3.0 and iv.low > 0, (metric, iv)
        assert verdict(metric, iv) == "supported"
        assert verdict(metric, paired_difference(metric, b, a, task, n_boot=500)) == "refuted"
    nll = paired_difference("nll", a, b, task, n_boot=500)
    assert nll.high < 0 and verdict("nll", nll) == "supported"  # lower NLL is better


def test_a_null_difference_is_covered_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(60):
        task = np.repeat(np.arange(4), 100)
        p = rng.uniform(0.3, 0.8, len(task))
        a = Arm((rng.uniform(size=(3, len(task))) < p).astype(float), np.zeros((3, len(task))), np.ones(len(task)), (1, 2, 3))
        b = Arm((rng.uniform(size=(3, len(task))) < p).astype(float), np.zeros((3, len(task))), np.ones(len(task)), (1, 2, 3))
        iv = paired_difference("pooled", a, b, task, n_boot=400, seed=int(rng.integers(1 << 30)))
        covered += iv.low <= 0 <= iv.high
    assert 0.85 <= covered / 60 <= 1.0, covered


def test_only_common_seeds_are_paired_and_their_order_does_not_matter():
    task, a, b = synthetic(np.random.default_rng(2), 0.02)
    shuffled = Arm(a.acc[::-1], a.nll[::-1], a.ntok, a.seeds[::-1])
    assert paired_difference("mean8", shuffled, b, task, n_boot=200) == paired_difference("mean8", a, b, task, n_boot=200)
    extra = Arm(np.vstack([a.acc, np.ones_like(a.acc[:1])]), np.vstack([a.nll, a.nll[:1]]), a.ntok, (*a.seeds, 9))
    assert paired_difference("pooled", extra, b, task, n_boot=200) == paired_difference("pooled", a, b, task, n_boot=200)
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference("pooled", a, Arm(b.acc, b.nll, b.ntok, (11, 12, 13, 14)), task)


def test_the_unweighted_task_mean_differs_from_the_pooled_mean():
    task = np.repeat(np.arange(2), (10, 90))
    acc_a = np.zeros((1, 100)); acc_a[0, :10] = 1  # a gains all 10 rows of the small task  # noqa: E702
    zeros = np.zeros((1, 100))
    a, b = Arm(acc_a, zeros, np.ones(100), (1,)), Arm(zeros, zeros, np.ones(100), (1,))
    assert paired_difference("mean8", a, b, task, n_boot=50).estimate == pytest.approx(50.0)
    assert paired_difference("pooled", a, b, task, n_boot=50).estimate == pytest.approx(10.0)


def test_forest_plot_writes_a_png(tmp_path):
    task, a, b = synthetic(np.random.default_rng(3), 0.02)
    iv = paired_difference("mean8", a, b, task, n_boot=100)
    forest_plot([("owlore - full", iv), ("lisa - full", iv)], tmp_path / "f.png", "points", {"owlore - full": 1.1})
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
