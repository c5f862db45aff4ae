"""A new projector is one class plus one registry line: it trains, is counted by the memory accounting,
survives a weights_only checkpoint round trip and is selectable from train.py's --projector."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from optim import PROJECTORS, GaLoreAdamW, Projector, measured_state_bytes, state_bytes
from test_galore_adamw import weights_only_round_trip
from helpers import run


@dataclass(frozen=True)
class SketchProjector(Projector):
    """A Gaussian sketch S (n x r, E[S S^T] = I) regenerated from a stored seed: no tensor state at all."""

    rank: int

    def _sketch(self, state, like):
        gen = torch.Generator(device=like.device).manual_seed(state["seed"])
        return torch.randn(state["cols"], self.rank, generator=gen, dtype=like.dtype) / self.rank**0.5

    def make(self, grad, seed):
        return {"seed": seed, "cols": grad.shape[1]}

    def project(self, state, grad):
        return grad @ self._sketch(state, grad)

    def project_back(self, state, low):
        return low @ self._sketch(state, low).mT

    def low_shape(self, shape):
        return (shape[0], self.rank)

    def state_numel(self, shape):
        return 0


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(PROJECTORS, "sketch", SketchProjector)  # the one registry line


def _teacher_problem(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 12, generator=gen)
    return x, x @ torch.randn(12, 10, generator=gen)


def test_new_projector_trains_is_counted_and_round_trips(registered):
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
    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = GaLoreAdamW([{"params": [w], "projector": SketchProjector(rank=1)}])
    with pytest.raises(KeyError, match="not registered"):
        opt.state_dict()


@pytest.mark.slow
def test_new_projector_is_selectable_from_train_py(registered, tiny_dir, data_file, tmp_path):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "galore", "--max-steps", "4", "--schedule", "constant",
                  "--projector", "sketch")
    losses = [m["loss"] for m in metrics]
    assert losses[-1] < losses[0], losses
    state = torch.load(next(tmp_path.glob("step-*")) / "optimizer.pt", weights_only=True)
    assert {g["projector"]["name"] for g in state["param_groups"] if g["projector"]} == {"sketch"}
