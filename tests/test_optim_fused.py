"""Fused per-parameter steps from post-accumulate-grad hooks."""
import copy

import pytest
import torch
from torch import nn

from optim import GaLoreAdamW, attach_fused_step


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4))
    return model, _optimizer(model)


def _optimizer(model):
    matrices = [p for p in model.parameters() if p.dim() == 2]
    vectors = [p for p in model.parameters() if p.dim() == 1]
    return GaLoreAdamW(
        [{"params": matrices, "rank": 3, "update_proj_gap": 2, "scale": 0.5}, {"params": vectors}],
        lr=0.05,
        weight_decay=0.01,
    )


def _loss(model, seed):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(5, 6, generator=gen), torch.randn(5, 4, generator=gen)
    return (model(x) - y).pow(2).mean()


def test_fused_step_equals_global_step_and_frees_gradients():
    fused_model, fused_opt = _model_and_optimizer()
    plain_model = copy.deepcopy(fused_model)
    plain_opt = _optimizer(plain_model)
    attach_fused_step(fused_opt)
    for step in range(5):
        _loss(fused_model, step).backward()
        assert all(p.grad is None for p in fused_model.parameters())
        _loss(plain_model, step).backward()
        plain_opt.step()
        plain_opt.zero_grad()
        for a, b in zip(fused_model.parameters(), plain_model.parameters()):
            assert torch.equal(a, b)


def test_hooks_survive_freezing_so_a_sampler_can_toggle_blocks():
    model, opt = _model_and_optimizer()
    first = model[0]
    for p in first.parameters():
        p.requires_grad_(False)
    attach_fused_step(opt)
    frozen_before = first.weight.detach().clone()
    _loss(model, 0).backward()
    assert torch.equal(first.weight, frozen_before) and first.weight not in opt.state
    for p in first.parameters():
        p.requires_grad_(True)
    _loss(model, 1).backward()
    assert not torch.equal(first.weight, frozen_before) and opt.state[first.weight]["step"] == 1


def test_remove_detaches_the_hooks():
    model, opt = _model_and_optimizer()
    handle = attach_fused_step(opt)
    handle.remove()
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, 0).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(grad_accum_steps=4), "accumulate"), (dict(max_grad_norm=1.0), "global gradient norm")],
)
def test_accumulation_and_clipping_are_refused(kwargs, message):
    _, opt = _model_and_optimizer()
    with pytest.raises(ValueError, match=message):
        attach_fused_step(opt, **kwargs)


def test_unknown_parameter_and_optimizer_without_step_param_are_refused():
    model, opt = _model_and_optimizer()
    with pytest.raises(ValueError, match="not in the optimizer"):
        attach_fused_step(opt, [nn.Parameter(torch.zeros(3))])
    with pytest.raises(TypeError, match="step_param"):
        attach_fused_step(torch.optim.SGD(model.parameters(), lr=0.1))
