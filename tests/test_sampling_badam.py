"""BAdam's block orders (sampling/badam.py) against the `badam` 1.4 package's BlockOptimizer (dev-only)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sampling import POLICIES, LayerSampler
from helpers import run

N_LAYERS, K, STEPS = 5, 3, 40  # 40 steps of 3: more than two sweeps of 5 blocks


def badam_blocks(switch_mode: str, seed: int, monkeypatch) -> list[int]:
    """The decoder block BAdam trains at each step, on a model named as HF's LLaMA."""
    from badam import BlockOptimizer, block_optim

    monkeypatch.setattr(block_optim.gc, "collect", lambda: 0)  # it collects at every switch: seconds, no effect here

    model = nn.ModuleDict({"model": nn.ModuleDict({"layers": nn.ModuleList(nn.Linear(2, 2) for _ in range(N_LAYERS))})})
    model.to(torch.bfloat16)  # what BAdam expects (it warns on fp32 weights)
    named = list(model.named_parameters())
    torch.manual_seed(seed)  # BAdam's random order draws from torch's global generator
    optimizer = BlockOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), named, switch_block_every=K,
                               switch_mode=switch_mode, verbose=0)
    blocks = []
    for _ in range(STEPS):
        active = [i for i, layer in enumerate(model["model"]["layers"]) if layer.weight.requires_grad]
        blocks.append(active)
        for p in model.parameters():
            p.grad = torch.ones_like(p) if p.requires_grad else None
        optimizer.step()
    assert all(len(a) == 1 for a in blocks)
    return [a[0] for a in blocks]


@pytest.mark.parametrize("mode", ["ascending", "descending", "random"])
@pytest.mark.parametrize("seed", [0, 7])
def test_block_order_equals_badam(mode, seed, monkeypatch):
    sampler = LayerSampler(f"badam_{mode}", gamma=1, period=K, seed=seed, n_layers=N_LAYERS)
    ours = [sampler.active_layers(step)[0] for step in range(STEPS + 1)]
    theirs = badam_blocks(mode, seed, monkeypatch)
    # BAdam switches once (steps + 1) % K == 0, so its first block trains K - 1 steps; every later step matches
    assert theirs == ours[1:], (theirs, ours)
    sweeps = [ours[K * N_LAYERS * s:K * N_LAYERS * (s + 1):K] for s in range(2)]
    assert all(sorted(sweep) == list(range(N_LAYERS)) for sweep in sweeps)  # every block once per sweep
    assert (sweeps[0] != sweeps[1]) == (mode == "random")


def test_order_is_a_pure_function_of_seed_and_period():
    """What resume relies on: a fresh sampler asked for a late period alone draws what a run that went
    through every period drew; another seed gives another random order."""
    straight = LayerSampler("badam_random", gamma=1, period=1, seed=3, n_layers=N_LAYERS)
    order = [straight.active_layers(t) for t in range(3 * N_LAYERS)]
    assert [LayerSampler("badam_random", 1, 1, 3, N_LAYERS).active_layers(t) for t in (13, 4)] == [order[13], order[4]]
    other = [LayerSampler("badam_random", 1, 1, 4, N_LAYERS).active_layers(t) for t in range(3 * N_LAYERS)]
    assert other != order
    assert straight.counts == [3] * N_LAYERS
    assert straight.inclusion_probabilities() == pytest.approx([1 / N_LAYERS] * N_LAYERS)


def test_one_block_at_a_time():
    assert not any(POLICIES[f"badam_{mode}"].dynamic for mode in ("ascending", "descending", "random"))
    with pytest.raises(ValueError, match="BAdam trains one block at a time: gamma must be 1, got 2"):
        LayerSampler("badam_ascending", gamma=2, period=K, seed=0, n_layers=N_LAYERS)


@pytest.mark.slow
def test_train_py_steps_the_blocks_in_order(tiny_dir, data_file, tmp_path):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "lisa", "--sampling", "badam_descending", "--gamma", "1",
                  "--period", "1", "--max-steps", "5")
    assert [m["active_blocks"] for m in metrics] == [[3], [2], [1], [0], [3]]
