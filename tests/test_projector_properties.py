"""Property tests of the GaLore projection math (docs/method.md, "GaLore") over random shapes, ranks, types, scales."""
from unittest import mock

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optim.galore_adamw as galore_adamw
from optim import GaLoreAdamW, compute_projection, projection_side
from optim.projector import PROJ_TYPES

SETTINGS = settings(max_examples=40, deadline=None)
dims = st.integers(1, 12)
proj_types = st.sampled_from(PROJ_TYPES)
svds = st.sampled_from(["exact", "randomized"])
seeds = st.integers(0, 2**31 - 1)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@st.composite
def cases(draw, with_svd=True):
    """(G, rank, proj_type, svd); rank covers below, at and above min(m, n)."""
    m, n = draw(dims), draw(dims)
    rank = draw(st.integers(1, min(m, n) + 3))
    svd = draw(svds) if with_svd else "exact"
    return _randn(m, n, seed=draw(seeds)), rank, draw(proj_types), svd


def _roundtrip(projection, x):
    return projection.project_back(projection.project(x))


def _sq(x):
    return float(x.double().pow(2).sum())


def _tol(*tensors):
    return 1e-4 * (1.0 + sum(_sq(t) for t in tensors))


@SETTINGS
@given(cases())
def test_shapes_follow_the_stored_side(case):
    g, rank, proj_type, svd = case
    m, n = g.shape
    r = min(rank, m, n)
    p = compute_projection(g, rank, proj_type, svd=svd)
    assert p.side == projection_side(g.shape, proj_type)
    expected_low = {"left": (r, n), "right": (m, r), "full": (r, r)}[p.side]
    assert p.project(g).shape == expected_low
    assert p.project_back(p.project(g)).shape == (m, n)
    assert (p.u is None) == (p.side == "right") and (p.vh is None) == (p.side == "left")
    if p.u is not None:
        assert p.u.shape == (m, r)
    if p.vh is not None:
        assert p.vh.shape == (r, n)


@SETTINGS
@given(cases())
def test_bases_are_orthonormal(case):
    g, rank, proj_type, svd = case
    p = compute_projection(g, rank, proj_type, svd=svd)
    for gram in ([p.u.mT @ p.u] if p.u is not None else []) + ([p.vh @ p.vh.mT] if p.vh is not None else []):
        torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)


@SETTINGS
@given(cases(with_svd=False), seeds)
def test_roundtrip_is_the_best_rank_r_approximation(case, seed):
    g, rank, proj_type, _ = case
    m, n = g.shape
    r = min(rank, m, n)
    singular = torch.linalg.svdvals(g.double())
    residual = _sq(g - _roundtrip(compute_projection(g, rank, proj_type), g))
    optimum = float(singular[r:].pow(2).sum())
    assert abs(residual - optimum) <= _tol(g)
    # Eckart-Young: no other rank-r' matrix gets closer, neither a random product nor a random subspace.
    other = _randn(m, r, seed=seed) @ _randn(r, n, seed=seed + 1)
    assert _sq(g - other) >= residual - _tol(g)
    q = torch.linalg.qr(_randn(m, r, seed=seed + 2)).Q
    assert _sq(g - q @ q.mT @ g) >= residual - _tol(g)


@SETTINGS
@given(cases(), seeds)
def test_roundtrip_is_an_orthogonal_projector(case, seed):
    """Idempotent, self-adjoint, Pythagoras and norm never grows, for any X once P is fixed."""
    g, rank, proj_type, svd = case
    p = compute_projection(g, rank, proj_type, svd=svd)
    x, y = _randn(*g.shape, seed=seed), _randn(*g.shape, seed=seed + 1)
    px, py = _roundtrip(p, x), _roundtrip(p, y)
    torch.testing.assert_close(_roundtrip(p, px), px, atol=1e-5, rtol=1e-4)
    assert abs(float((px * y).sum()) - float((x * py).sum())) <= _tol(x, y)
    assert abs(_sq(x) - _sq(px) - _sq(x - px)) <= _tol(x)
    assert _sq(px) <= _sq(x) + _tol(x)


@SETTINGS
@given(cases(), seeds, st.floats(-3, 3), st.floats(-3, 3), st.floats(0.05, 4.0))
def test_linear_for_fixed_projection_and_scale_is_linear(case, seed, a, b, scale):
    g, rank, proj_type, svd = case
    p = compute_projection(g, rank, proj_type, svd=svd)
    x, y = _randn(*g.shape, seed=seed), _randn(*g.shape, seed=seed + 1)
    torch.testing.assert_close(p.project(a * x + b * y), a * p.project(x) + b * p.project(y), atol=1e-4, rtol=1e-4)
    low = p.project(x)
    torch.testing.assert_close(p.project_back(low, scale), scale * p.project_back(low), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        p.project_back(a * low, scale), a * p.project_back(low, scale), atol=1e-4, rtol=1e-4
    )


@SETTINGS
@given(cases(), st.integers(0, 3))
def test_rank_at_least_min_dim_is_identity(case, extra):
    g, _, proj_type, svd = case
    rank = min(g.shape) + extra
    p = compute_projection(g, rank, proj_type, svd=svd)
    torch.testing.assert_close(_roundtrip(p, g), g, atol=1e-4, rtol=1e-4)


@SETTINGS
@given(dims, dims, st.integers(1, 12), seeds, proj_types, svds)
def test_rank_deficient_gradient_is_reconstructed_exactly(m, n, rank, seed, proj_type, svd):
    r = min(rank, m, n)
    inner = int(torch.randint(1, r + 1, (1,), generator=torch.Generator().manual_seed(seed)))
    g = _randn(m, inner, seed=seed) @ _randn(inner, n, seed=seed + 1)
    p = compute_projection(g, rank, proj_type, svd=svd)
    torch.testing.assert_close(_roundtrip(p, g), g, atol=1e-4, rtol=1e-4)


@SETTINGS
@given(dims, dims, st.integers(1, 12), proj_types, svds, st.sampled_from(["svd", "random"]))
def test_zero_gradient_gives_zero_update_and_finite_projection(m, n, rank, proj_type, svd, source):
    g = torch.zeros(m, n)
    p = compute_projection(g, rank, proj_type, svd=svd, source=source)
    for basis in (p.u, p.vh):
        assert basis is None or torch.isfinite(basis).all()
    assert torch.equal(p.project_back(p.project(g), 0.5), torch.zeros(m, n))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), seeds)
def test_refresh_count_after_k_steps_is_ceil_k_over_gap(k, gap, seed):
    w = torch.nn.Parameter(_randn(5, 3, seed=seed))
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": gap}], lr=1e-2)
    with mock.patch.object(galore_adamw, "compute_projection", wraps=galore_adamw.compute_projection) as spy:
        for i in range(k):
            w.grad = _randn(5, 3, seed=seed + i)
            opt.step()
    assert spy.call_count == -(-k // gap)
    assert opt.state[w]["step"] == k


@SETTINGS
@given(st.integers(1, 8), st.integers(0, 6), st.integers(0, 4), seeds)
def test_reverse_std_on_wide_matrix_with_rank_at_least_rows(m, extra_cols, extra_rank, seed):
    """The original reverse_std crashed here; with the side stored it is a plain right projection."""
    n = m + 1 + extra_cols
    g = _randn(m, n, seed=seed)
    p = compute_projection(g, m + extra_rank, "reverse_std")
    assert p.side == "right" and p.project(g).shape == (m, m)
    torch.testing.assert_close(_roundtrip(p, g), g, atol=1e-4, rtol=1e-4)
    w = torch.nn.Parameter(torch.zeros(m, n))
    w.grad = g
    GaLoreAdamW([{"params": [w], "rank": m + extra_rank, "proj_type": "reverse_std"}], lr=0.1).step()
    assert torch.isfinite(w).all() and w.abs().sum() > 0


def _with_spectrum(s: torch.Tensor, m: int, n: int, seed: int) -> torch.Tensor:
    """U diag(s) V^T with Haar-random orthonormal U (m x k) and V (n x k), k = len(s)."""
    u = torch.linalg.qr(_randn(m, len(s), seed=seed)).Q
    v = torch.linalg.qr(_randn(n, len(s), seed=seed + 1)).Q
    return u * s @ v.mT


@settings(max_examples=20, deadline=None)
@given(st.integers(24, 64), st.integers(24, 64), st.integers(1, 8), st.integers(0, 8), seeds)
def test_randomized_svd_is_exact_when_the_rank_fits_the_sketch(m, n, rank, extra, seed):
    """A gradient of rank k <= rank + oversample lies in the sketch's range (almost surely), so the
    randomized top-r basis keeps exactly the energy of the exact one, whatever the spectrum."""
    k = min(rank + extra, m, n)
    s = 0.5 + _randn(k, seed=seed + 2).abs()  # any positive spectrum, flat ones included
    g = _with_spectrum(s, m, n, seed)
    optimal = float(s.double().sort(descending=True).values[:rank].pow(2).sum())
    for proj_type in ("std", "reverse_std"):
        captured = _sq(compute_projection(g, rank, proj_type, svd="randomized", seed=seed).project(g))
        assert abs(captured - optimal) <= 1e-4 * _sq(g)


@settings(max_examples=20, deadline=None)
@given(st.integers(24, 64), st.integers(24, 64), st.integers(1, 8), st.floats(0.2, 0.7), seeds)
def test_randomized_svd_captures_optimal_energy_on_geometric_spectrum(m, n, rank, ratio, seed):
    """s_i = ratio^i: with 2 power iterations the sketch sees the spectrum as s^5, so the tail beyond
    r + 8 oversamples is below ratio^40 <= 6e-7 of s_r and the captured energy is >= 99 % of the optimum
    (the top-r energy of the exact SVD). It is never more than the optimum (Ky Fan)."""
    k = min(m, n)
    s = torch.tensor([ratio] * k, dtype=torch.float64).pow(torch.arange(k)).float()
    g = _with_spectrum(s, m, n, seed)
    optimal = float(s.double()[:rank].pow(2).sum())
    for proj_type in ("std", "reverse_std"):
        captured = _sq(compute_projection(g, rank, proj_type, svd="randomized", seed=seed).project(g))
        assert 0.99 * optimal <= captured <= optimal * (1 + 1e-4)


def test_randomized_svd_on_the_flat_spectrum_that_broke_ci():
    """m=24, n=38, rank=4, s_i = (i+1)^-0.3125: the 0.99 bound is not guaranteed for a flat tail, but the
    randomized basis is still far better than a random one and never better than the exact one."""
    s = torch.arange(1, 25, dtype=torch.float32).pow(-0.3125)
    g = _with_spectrum(s, 24, 38, seed=1)
    optimal = float(s[:4].double().pow(2).sum())
    captured = _sq(compute_projection(g, 4, "std", svd="randomized", seed=1).project(g))
    random = _sq(compute_projection(g, 4, "std", source="random", seed=1).project(g))
    assert random < 0.5 * optimal < captured <= optimal * (1 + 1e-4)


def test_side_table_of_the_spec():
    expected = {
        "std": ("right", "right", "left"),
        "reverse_std": ("left", "left", "right"),
        "left": ("left",) * 3,
        "right": ("right",) * 3,
        "full": ("full",) * 3,
    }
    for proj_type, sides in expected.items():
        assert tuple(projection_side(shape, proj_type) for shape in [(5, 3), (4, 4), (3, 5)]) == sides
    tall = _randn(6, 3, seed=0)
    p = compute_projection(tall, 2, "std")
    torch.testing.assert_close(p.vh, torch.linalg.svd(tall).Vh[:2])  # P = Vh[:r'] for tall G
