"""APOLLO / APOLLO-Mini (optim/apollo.py) equal apollo-torch 1.0.3 (dev-only) on the same gradients."""
from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from optim import ApolloMiniProjector, ApolloProjector, GaLoreAdamW, attach_fused_step, measured_state_bytes, state_bytes
from optim.apollo import _Apollo
from optim.projector import check_state
from test_galore_adamw import weights_only_round_trip

SHAPES = [(12, 5), (5, 12)]  # tall: P (r x n) on the right; wide: P (m x r) on the left


@pytest.fixture
def apollo_torch(monkeypatch):
    """apollo_torch.apollo, imported without the package's __init__, which also imports its 8-bit optimizers
    and so bitsandbytes (a CUDA library this CPU venv does not hold); apollo.py itself does not need it."""
    spec = importlib.util.find_spec("apollo_torch")
    package = types.ModuleType("apollo_torch")
    package.__path__ = list(spec.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "apollo_torch", package)
    return importlib.import_module("apollo_torch.apollo")


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen).to(dtype)) for shape in SHAPES]


def _grad(w, step, i):
    """The same gradient for both optimizers: noise plus a pull towards 0, so it follows the trajectory."""
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(100 * step + i)).to(w.dtype)
    return noise + 0.5 * w.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("projector, options", [
    (ApolloProjector(rank=3), dict(rank=3, scale=1.0, scale_type="channel")),
    (ApolloProjector(rank=2, scale=4.0), dict(rank=2, scale=4.0, scale_type="channel")),
    (ApolloMiniProjector(), dict(rank=1, scale=128.0, scale_type="tensor")),
])
def test_equal_to_apollo_torch_over_20_steps(apollo_torch, monkeypatch, projector, options, dtype):
    gap, seeds = 7, []
    real_make = _Apollo.make
    monkeypatch.setattr(_Apollo, "make", lambda self, grad, seed: seeds.append(seed) or real_make(self, grad, seed))
    ours, theirs = _params(dtype), _params(dtype)
    hyper = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    opt = GaLoreAdamW([{"params": ours, "projector": projector, "update_proj_gap": gap, "scale": 1.0}], **hyper)
    ref = apollo_torch.AdamW([{"params": theirs, "proj": "random", "proj_type": "std", "update_proj_gap": gap,
                               **options}], **hyper)
    for step in range(20):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            a.grad, b.grad = _grad(a, step, i), _grad(b, step, i)
        opt.step()
        if step % gap == 0:  # apollo-torch chains its own seeds; give it the ones GaLoreAdamW drew with
            for b, seed in zip(theirs, seeds[-2:]):
                state = ref.state[b]
                if "projector" in state:
                    state["projector"].seed = seed
                else:  # its projector is made at the first step, from this
                    state["seed"] = seed
        ref.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b), (step, (a - b).abs().max())
    assert len(seeds) == 2 * 3  # refreshes at steps 0, 7, 14
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(opt.state[a]["projection"]["last_norm"], ref.state[b]["scaled_grad"], rtol=0, atol=0)


@pytest.mark.parametrize("projector", [ApolloProjector(rank=3), ApolloMiniProjector()])
def test_state_is_as_declared_and_counted(projector):
    for dtype, fp32_moments in [(torch.float32, False), (torch.bfloat16, True)]:
        params = _params(dtype)
        opt = GaLoreAdamW([{"params": params, "projector": projector, "update_proj_gap": 2}], fp32_moments=fp32_moments)
        for step in range(3):  # crosses a refresh: the limiter's norm is kept
            for i, w in enumerate(params):
                w.grad = _grad(w, step, i)
            opt.step()
        for w in params:
            check_state(projector, opt.state[w]["projection"], w.grad)
            assert set(opt.state[w]["projection"]) == {"p", "right", "last_norm"}
        moments = torch.float32 if fp32_moments else None
        assert measured_state_bytes(opt) == sum(state_bytes(s, projector, dtype, moments) for s in SHAPES)
    m, n = 4096, 11008  # a 7B MLP matrix, bf16: P m r + moments 2 r n + the limiter's scalar
    assert state_bytes((m, n), ApolloMiniProjector(), torch.bfloat16) == 2 * (m + 2 * n + 1)


def test_fused_accumulation_sums_the_full_gradient():
    """The limiter needs the whole step's gradient: with fused micro-batches APOLLO steps from the summed
    full-rank gradient, exactly as an unfused step on the sum."""
    projector = ApolloProjector(rank=2)
    fused, plain = _params(torch.float32), _params(torch.float32)
    opt_f = GaLoreAdamW([{"params": fused, "projector": projector}], lr=1e-2)
    opt_p = GaLoreAdamW([{"params": plain, "projector": projector}], lr=1e-2)
    attach_fused_step(opt_f, grad_accum_steps=2)
    for step in range(3):
        for micro in range(2):
            loss = sum((w * _grad(w, step, 10 * micro + i)).sum() for i, w in enumerate(fused))
            loss.backward()
        opt_f.step()
        opt_f.zero_grad(set_to_none=True)
        for i, w in enumerate(plain):
            w.grad = _grad(w, step, i) + _grad(w, step, 10 + i)
        opt_p.step()
        for a, b in zip(fused, plain):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_options_are_checked():
    with pytest.raises(ValueError, match="proj_type must be one of"):
        ApolloProjector(rank=2, proj_type="full")
    with pytest.raises(ValueError, match="scale_type"):
        ApolloProjector(rank=2, scale_type="row")
    with pytest.raises(ValueError, match="rank must be a positive int"):
        ApolloProjector(rank=0)
    assert ApolloMiniProjector().spec() == {"name": "apollo-mini", "proj_type": "std", "scale": 128.0}


@pytest.mark.parametrize("projector", [ApolloProjector(rank=3), ApolloMiniProjector()])
def test_resume_from_a_weights_only_checkpoint_is_exact(projector):
    """The limiter's norm and the projection travel in the optimizer's state_dict; a resumed optimizer draws
    the same P at the next refresh (its seed is a function of parameter and step)."""
    def build():
        params = _params(torch.float32)
        return params, GaLoreAdamW([{"params": params, "projector": projector, "update_proj_gap": 3}], lr=1e-2)

    def step(params, opt, k):
        for i, w in enumerate(params):
            w.grad = _grad(w, k, i)
        opt.step()

    params, opt = build()
    for k in range(5):
        step(params, opt, k)
    resumed, opt2 = build()
    for a, b in zip(resumed, params):
        a.data.copy_(b.detach())
    opt2.load_state_dict(weights_only_round_trip(opt.state_dict()))
    assert opt2.param_groups[0]["projector"] == projector
    for k in range(5, 9):  # crosses the refresh at step 6
        step(params, opt, k)
        step(resumed, opt2, k)
        assert all(torch.equal(a, b) for a, b in zip(params, resumed))
