"""GaLoreAdamW: the original update rule, skipping, drop_state, serialisation, LR schedules, options."""
import copy
import io
import math

import pytest
import torch

from optim import GaLoreAdamW, RandomProjector, SVDProjector, lr_lambda, measured_state_bytes


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def weights_only_round_trip(state_dict: dict) -> dict:
    """What a checkpoint gives back: torch.save, then torch.load(..., weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_two_adam_steps_on_4x3_match_hand_computation():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-6, 0.01
    w0 = [[0.5 * i - 0.3 * j for j in range(3)] for i in range(4)]
    grads = [[[0.1 * (i + 1) - 0.2 * j for j in range(3)] for i in range(4)],
             [[-0.3 + 0.05 * i * j for j in range(3)] for i in range(4)]]
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = GaLoreAdamW([w], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    expected = [row[:] for row in w0]
    m = [[0.0] * 3 for _ in range(4)]
    v = [[0.0] * 3 for _ in range(4)]
    for t, g in enumerate(grads, start=1):
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        for i in range(4):
            for j in range(3):
                m[i][j] = b1 * m[i][j] + (1 - b1) * g[i][j]
                v[i][j] = b2 * v[i][j] + (1 - b2) * g[i][j] ** 2
                expected[i][j] -= step_size * m[i][j] / (math.sqrt(v[i][j]) + eps)
                expected[i][j] -= lr * wd * expected[i][j]  # decay after the update, on the new weight
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    assert opt.state[w]["step"] == 2


def test_galore_steps_match_reference_with_refresh_and_kept_moments():
    lr, b1, b2, eps, scale, gap = 0.05, 0.8, 0.99, 1e-6, 0.5, 2
    w = torch.nn.Parameter(_randn(6, 4, seed=0).double())
    ref = w.detach().clone()
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": gap, "scale": scale}], lr=lr, betas=(b1, b2))
    m = v = p = None
    for t in range(1, 6):
        g = _randn(6, 4, seed=t).double()
        if (t - 1) % gap == 0:  # tall matrix, std: P = Vh[:r], R = G P^T; moments survive the refresh
            p = torch.linalg.svd(g.float(), full_matrices=False).Vh[:2].double()
        low = g @ p.T
        m = (1 - b1) * low if m is None else b1 * m + (1 - b1) * low
        v = (1 - b2) * low**2 if v is None else b2 * v + (1 - b2) * low**2
        ref -= lr * math.sqrt(1 - b2**t) / (1 - b1**t) * scale * (m / (v.sqrt() + eps)) @ p
        w.grad = g
        opt.step()
        torch.testing.assert_close(w.detach(), ref, atol=1e-10, rtol=0)


def test_full_rank_galore_with_sgd_equals_unprojected_sgd_but_adam_does_not():
    target = _randn(5, 7, seed=1)
    plain = _randn(5, 7, seed=2)
    galore = plain.clone()
    projector, state = SVDProjector(rank=5), None
    for step in range(6):
        grad_plain, grad_galore = plain - target, galore - target
        plain = plain - 0.3 * grad_plain
        if step % 3 == 0:
            state = projector.make(grad_galore, seed=0)
        galore = galore - 0.3 * projector.project_back(state, projector.project(state, grad_galore))
    torch.testing.assert_close(galore, plain, atol=1e-5, rtol=1e-5)
    # Adam is not rotation invariant: the same full-rank projection changes its step.
    a, b = torch.nn.Parameter(_randn(5, 7, seed=3)), torch.nn.Parameter(_randn(5, 7, seed=3))
    a.grad = b.grad = _randn(5, 7, seed=4)
    GaLoreAdamW([a], lr=0.1).step()
    GaLoreAdamW([{"params": [b], "rank": 5}], lr=0.1).step()
    assert not torch.allclose(a, b, atol=1e-3)


def test_parameter_without_grad_or_frozen_takes_no_step_and_gets_no_state():
    used, unused, frozen = (torch.nn.Parameter(_randn(4, 3, seed=i)) for i in range(3))
    before_unused, before_frozen = unused.detach().clone(), frozen.detach().clone()
    opt = GaLoreAdamW([{"params": [used, unused], "rank": 2}, {"params": [frozen]}], lr=0.1, weight_decay=0.1)
    frozen.requires_grad_(False)
    frozen.grad = torch.ones(4, 3)
    used.grad = torch.ones(4, 3)
    opt.step()
    assert torch.equal(unused, before_unused) and torch.equal(frozen, before_frozen)
    assert set(opt.state) == {used}


def test_drop_state_frees_memory_and_reactivated_parameter_starts_fresh():
    a, b = torch.nn.Parameter(_randn(8, 6, seed=0)), torch.nn.Parameter(_randn(8, 6, seed=0))
    opt = GaLoreAdamW([{"params": [a], "rank": 3, "update_proj_gap": 5}], lr=0.1)
    for i in range(3):
        a.grad = _randn(8, 6, seed=10 + i)
        opt.step()
    assert measured_state_bytes(opt) > 0
    opt.drop_state([a])
    assert measured_state_bytes(opt) == 0 and a not in opt.state
    fresh = GaLoreAdamW([{"params": [b], "rank": 3, "update_proj_gap": 5}], lr=0.1)
    b.data.copy_(a.detach())
    a.grad = b.grad = _randn(8, 6, seed=99)
    opt.step()
    fresh.step()
    assert opt.state[a]["step"] == 1
    assert torch.equal(a, b)


GROUP_VARIANTS = [
    dict(rank=3, update_proj_gap=2, proj_type="std", scale=0.25),
    dict(rank=2, update_proj_gap=2, proj_type="full", reproject_moments=True),
    dict(projector=SVDProjector(3, "reverse_std", svd="randomized", oversample=2, power_iters=1), update_proj_gap=2),
    dict(projector=RandomProjector(2, "left"), update_proj_gap=2),
]


@pytest.mark.parametrize("options", GROUP_VARIANTS)
def test_state_dict_round_trip_gives_bit_identical_next_steps(options):
    def build(seed):
        w, b = torch.nn.Parameter(_randn(7, 5, seed=seed)), torch.nn.Parameter(_randn(5, seed=seed))
        opt = GaLoreAdamW([{"params": [w], **options}, {"params": [b], "lr": 0.02}], lr=0.1, weight_decay=0.01)
        return w, b, opt

    w, b, opt = build(0)
    for i in range(3):
        w.grad, b.grad = _randn(7, 5, seed=i), _randn(5, seed=i)
        opt.step()
    w2, b2, opt2 = build(1)
    w2.data.copy_(w.detach())
    b2.data.copy_(b.detach())
    opt2.load_state_dict(weights_only_round_trip(opt.state_dict()))
    for i in range(3, 6):  # crosses a refresh at step 4
        w.grad = w2.grad = _randn(7, 5, seed=i)
        b.grad = b2.grad = _randn(5, seed=i)
        opt.step()
        opt2.step()
        assert torch.equal(w, w2) and torch.equal(b, b2)


def test_reproject_moments_moves_first_moment_into_new_subspace():
    """Two steps of a wide 6 x 9 weight (left side, P = U_r) refreshed every step, against the update
    computed by hand with M <- P2^T P1 M at the refresh; v is not carried over, only decayed."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-6
    grads = [_randn(6, 9, seed=1).double(), _randn(6, 9, seed=2).double()]
    weights = {}
    for reproject in (True, False):
        w = torch.nn.Parameter(_randn(6, 9, seed=0).double())
        opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 1, "reproject_moments": reproject}],
                          lr=lr, betas=(b1, b2), eps=eps)
        for g in grads:
            w.grad = g
            opt.step()
        weights[reproject] = w.detach()
    ref, m, v, p_old = _randn(6, 9, seed=0).double(), None, None, None
    for t, g in enumerate(grads, start=1):
        p = torch.linalg.svd(g.float(), full_matrices=False).U[:, :2].double()
        low = p.T @ g
        m = (1 - b1) * low if m is None else b1 * (p.T @ p_old @ m) + (1 - b1) * low
        v = (1 - b2) * low**2 if v is None else b2 * v + (1 - b2) * low**2
        ref -= lr * math.sqrt(1 - b2**t) / (1 - b1**t) * p @ (m / (v.sqrt() + eps))
        p_old = p
    torch.testing.assert_close(weights[True], ref, atol=1e-10, rtol=0)
    assert not torch.allclose(weights[False], ref, atol=1e-4)


def test_linear_schedule_drives_group_lr_and_zero_lr_freezes_weights():
    w = torch.nn.Parameter(_randn(4, 4, seed=0))
    opt = GaLoreAdamW([{"params": [w], "rank": 2}], lr=0.1, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("linear", warmup=0, total=2))
    lrs = []
    for i in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        before = w.detach().clone()
        w.grad = _randn(4, 4, seed=i)
        opt.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1, 0.05, 0.0])
    assert torch.equal(w, before)  # lr 0: neither the update nor the decay moves the weight


@pytest.mark.parametrize(
    "group, message",
    [
        (lambda: dict(rank=4), "2-D weights only"),
        (lambda: dict(rank=0), "rank must be"),
        (lambda: dict(rank=2, proj_type="diagonal"), "unknown proj_type"),
        (lambda: dict(projector=SVDProjector(2, svd="lanczos")), "unknown svd"),
        (lambda: dict(projector="svd"), "projector must be"),
        (lambda: dict(rank=2, svd="randomized"), "unknown param-group options"),
        (lambda: dict(rank=2, update_proj_gap=0), "update_proj_gap"),
        (lambda: dict(betas=(0.9, 1.0)), "betas"),
    ],
)
def test_bad_group_options_are_clear_errors(group, message):
    bias = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match=message):
        GaLoreAdamW([{"params": [bias], **group()}])


def test_nan_gradient_at_refresh_is_a_clear_error():
    w = torch.nn.Parameter(torch.zeros(4, 3))
    w.grad = torch.full((4, 3), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        GaLoreAdamW([{"params": [w], "rank": 2}]).step()


def test_state_follows_parameter_dtype():
    w = torch.nn.Parameter(_randn(6, 4, seed=0).bfloat16())
    w.grad = _randn(6, 4, seed=1).bfloat16()
    opt = GaLoreAdamW([{"params": [w], "rank": 2}])
    opt.step()
    assert all(t.dtype == torch.bfloat16 for t in _tensors(opt.state[w]))
    copy.deepcopy(opt.state_dict())


def _tensors(state: dict) -> list[torch.Tensor]:
    """Every tensor of one parameter's state, the projector's nested state included."""
    nested = [_tensors(v) for v in state.values() if isinstance(v, dict)]
    return [v for v in state.values() if isinstance(v, torch.Tensor)] + [t for ts in nested for t in ts]


def test_bf16_second_moment_cannot_decay_but_fp32_moments_do():
    """v * 0.999 in bf16 rounds back to v (8-bit mantissa: a relative change of 1e-3 < 2^-9 is lost)."""
    steps, second_moments = 200, {}
    for fp32 in (False, True):
        w = torch.nn.Parameter(torch.zeros(4, 3, dtype=torch.bfloat16))
        opt = GaLoreAdamW([w], lr=1e-3, fp32_moments=fp32)
        w.grad = torch.ones(4, 3, dtype=torch.bfloat16)
        opt.step()
        first = opt.state[w]["exp_avg_sq"].clone()
        for _ in range(steps):
            w.grad = torch.zeros(4, 3, dtype=torch.bfloat16)
            opt.step()
        second_moments[fp32] = (first, opt.state[w]["exp_avg_sq"])
    first, last = second_moments[False]
    assert last.dtype == torch.bfloat16 and torch.equal(last, first)  # stuck at 1e-3 forever
    first, last = second_moments[True]
    assert last.dtype == torch.float32
    torch.testing.assert_close(last, first * 0.999**steps, rtol=1e-5, atol=0)


@pytest.mark.parametrize("projected", [False, True])
def test_fp32_moments_of_a_bf16_weight_survive_a_weights_only_round_trip(projected):
    def build():
        w = torch.nn.Parameter(_randn(6, 4, seed=0).bfloat16())
        group = {"params": [w], "rank": 2, "update_proj_gap": 2} if projected else {"params": [w]}
        return w, GaLoreAdamW([group], lr=0.01, fp32_moments=True)

    w, opt = build()
    for i in range(3):
        w.grad = _randn(6, 4, seed=i).bfloat16()
        opt.step()
    w2, opt2 = build()
    w2.data.copy_(w.detach())
    opt2.load_state_dict(weights_only_round_trip(opt.state_dict()))
    assert opt2.state[w2]["exp_avg_sq"].dtype == torch.float32
    assert torch.equal(opt2.state[w2]["exp_avg_sq"], opt.state[w]["exp_avg_sq"])
    for i in range(3, 6):
        w.grad = w2.grad = _randn(6, 4, seed=i).bfloat16()
        opt.step()
        opt2.step()
        assert torch.equal(w, w2)


def test_state_of_another_optimizer_is_refused_clearly():
    w = torch.nn.Parameter(torch.zeros(3, 2))
    other = torch.optim.AdamW([w])
    with pytest.raises(ValueError, match="without a 'projector'"):
        GaLoreAdamW([w]).load_state_dict(other.state_dict())
