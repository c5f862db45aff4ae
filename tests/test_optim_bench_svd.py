"""The SVD benchmark runs end to end (timings are reported, never asserted)."""
import torch

from bench.svd import gradient_like, main


def test_gradient_like_matrix_has_the_requested_spectrum():
    g, s = gradient_like(40, 30, decay=1.0, seed=0)
    torch.testing.assert_close(torch.linalg.svdvals(g), s, atol=1e-5, rtol=1e-4)
    assert s[0] == 1.0 and s[9] == 0.1


def test_small_benchmark_reports_both_shapes_with_near_optimal_energy(capsys):
    rows = main(["--small", "--repeats", "1"])
    assert [row["shape"] for row in rows] == ["256x688", "256x256"]
    for row in rows:
        assert abs(row["exact_energy"] - 1.0) < 1e-4 and row["randomized_energy"] >= 0.99
        assert row["exact_s"] > 0 and row["randomized_s"] > 0
    assert "| 256x688 | 16 |" in capsys.readouterr().out
