"""LR multipliers for LambdaLR."""
import math

import pytest
import torch

from optim import lr_lambda


def test_linear_without_warmup_decays_from_one_to_zero():
    f = lr_lambda("linear", 0, 10)
    values = [f(s) for s in range(12)]
    assert values[0] == 1.0 and values[5] == pytest.approx(0.5) and values[10] == 0.0 and values[11] == 0.0
    assert all(a > b for a, b in zip(values[:10], values[1:11]))


def test_warmup_ramps_linearly_then_each_schedule_takes_over():
    for name in ("linear", "cosine", "constant"):
        f = lr_lambda(name, 4, 12)
        assert [f(s) for s in range(5)] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    cosine, constant = lr_lambda("cosine", 4, 12), lr_lambda("constant", 4, 12)
    assert cosine(8) == pytest.approx(0.5) and cosine(6) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine(12) == pytest.approx(0.0) and constant(1000) == 1.0


def test_multiplier_drives_lambda_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("linear", 0, 4))
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs == pytest.approx([0.2, 0.15, 0.1, 0.05])


@pytest.mark.parametrize("args", [("exponential", 0, 10), ("linear", 0, 0), ("linear", 11, 10), ("cosine", -1, 10)])
def test_bad_arguments_are_clear_errors(args):
    with pytest.raises(ValueError):
        lr_lambda(*args)
