"""A new projector is one registered class (tests/sketch_projector.py, the one of docs/design.md): it trains, is
counted by the memory accounting, survives a weights_only checkpoint round trip and is selectable from train.py's
--projector; a projector whose state does not match its declaration is stopped at its first refresh."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from optim import PROJECTORS, GaLoreAdamW, measured_state_bytes, state_bytes
from optim.projector import StateSpec, register_projector
from sketch_projector import SketchProjector
from test_galore_adamw import weights_only_round_trip
from helpers import run
from training.checkpoint import read_optimizer


def _teacher_problem(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 12, generator=gen)
    return x, x @ torch.randn(12, 10, generator=gen)


def test_new_projector_trains_is_counted_and_round_trips():
    x, y = _teacher_problem(0)

    def build():
        w = torch.nn.Parameter(torch.zeros(12, 10))
        opt = GaLoreAdamW([{"params": [w], "projector": SketchProjector(rank=4), "update_proj_gap": 3}], lr=0.2)
        return w, opt

    def step(w, opt):
        w.grad = None
        loss = (x @ w - y).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    w, opt = build()
    losses = [step(w, opt) for _ in range(60)]
    assert losses[-1] < 0.3 * losses[0], losses
    assert measured_state_bytes(opt) == state_bytes((12, 10), SketchProjector(rank=4)) == 2 * 12 * 4 * 4
    w2, opt2 = build()
    w2.data.copy_(w.detach())
    opt2.load_state_dict(weights_only_round_trip(opt.state_dict()))
    assert opt2.param_groups[0]["projector"] == SketchProjector(rank=4)
    for _ in range(4):  # crosses a refresh
        step(w, opt)
        step(w2, opt2)
        assert torch.equal(w, w2)


def test_unregistered_projector_cannot_be_saved():
    @dataclass(frozen=True)
    class Unregistered(SketchProjector):
        pass

    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = GaLoreAdamW([{"params": [w], "projector": Unregistered(rank=1)}])
    with pytest.raises(KeyError, match="not registered"):
        opt.state_dict()


def test_registration_checks_name_and_class():
    assert PROJECTORS["sketch"] is SketchProjector
    with pytest.raises(ValueError, match="'sketch' is already registered"):
        register_projector("sketch")(SketchProjector)
    with pytest.raises(TypeError, match="not a dataclass subclass"):
        register_projector("not-a-projector")(int)
    assert "not-a-projector" not in PROJECTORS


@pytest.mark.parametrize("declared, match", [
    ({}, r"holds tensors \['basis'\] but state_specs declares \[\]"),
    ({"basis": StateSpec((4, 2))}, r"'basis' is \(2, 4\) torch.float32, declared \(4, 2\)"),
    ({"basis": StateSpec((2, 4), torch.bfloat16)}, r"declared \(2, 4\) torch.bfloat16"),
    ({"basis": StateSpec((2, 4)), "norm": StateSpec(())}, r"holds tensors \['basis'\] but state_specs declares \['basis', 'norm'\]"),
])
def test_state_that_differs_from_its_declaration_is_a_programming_error(declared, match):
    """Not a user error (TypeError, not in common.cli.USER_ERRORS): the traceback points at the projector."""

    @dataclass(frozen=True)
    class Declared(SketchProjector):
        def make(self, grad, seed):
            return {"basis": torch.ones(self.rank, grad.shape[1])}

        def state_specs(self, shape):
            return declared

    w = torch.nn.Parameter(torch.zeros(3, 4))
    w.grad = torch.ones(3, 4)
    with pytest.raises(TypeError, match=match):
        GaLoreAdamW([{"params": [w], "projector": Declared(rank=2)}]).step()


@pytest.mark.slow
def test_new_projector_is_selectable_from_train_py(tiny_dir, data_file, tmp_path):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "galore", "--max-steps", "4", "--schedule", "constant",
                  "--projector", "sketch")
    losses = [m["loss"] for m in metrics]
    assert losses[-1] < losses[0], losses
    _, groups = read_optimizer(next(tmp_path.glob("step-*")))
    assert {g["projector"]["name"] for g in groups if g["projector"]} == {"sketch"}
