"""The composed memory simulation (one block per run of identical blocks) against the full one (every block),
on scaled-down shapes of the four model structures: LLaMA-2 (MHA), LLaMA-3 (GQA, a vocabulary much larger than
dim), Mistral (sliding window), tied embeddings (SmolLM2)."""
import pytest
import torch

from bench.memory import preset_flags, train_args
from model.config import get_config
from training.memory import active_sets, plan_blocks, setup_sets, simulate_memory

pytestmark = pytest.mark.slow

SHAPE = dict(dim=64, n_layers=6, n_heads=4, max_seq_len=64)
CONFIGS = {
    "llama2": get_config("llama2-7b", **SHAPE, n_kv_heads=4, ffn_dim=172, vocab_size=320),
    "llama3": get_config("llama3-8b", **SHAPE, n_kv_heads=1, ffn_dim=224, vocab_size=1283),
    "mistral": get_config("mistral-7b", **SHAPE, n_kv_heads=1, ffn_dim=224, vocab_size=320, sliding_window=16),
    "tied": get_config("smollm2-135m", **{**SHAPE, "dim": 48, "n_heads": 3}, n_kv_heads=1, ffn_dim=128, vocab_size=490),
}


def flags(method: str, preset: str, *extra: str) -> list[str]:
    return ["--method", method, "--batch-size", "4", "--seq-len", "32", "--gamma", "2", "--rank", "8",
            *preset_flags(method, preset), *extra]


def assert_composed_is_full(config, args, steps: int = 2) -> None:
    plan = plan_blocks(config.n_layers, setup_sets(config, args) + active_sets(config, args, steps),
                       not args.freeze_embeddings)
    assert plan.n_layers < config.n_layers and sum(plan.repeat) == config.n_layers
    full = simulate_memory(config, args, torch.float32, steps, composed=False)
    composed = simulate_memory(config, args, torch.float32, steps)
    assert abs(composed.peak.total / full.peak.total - 1) < 0.005, (composed.peak, full.peak)
    assert full.phases[composed.peak.phase].total == full.peak.total  # a phase where the full one peaks (ties)
    assert list(composed.phases) == list(full.phases)
    for name, peak in full.phases.items():
        assert abs(composed.phases[name].total / peak.total - 1) < 0.005, name
        for field in ("parameters", "gradients", "optimizer"):
            assert abs(getattr(composed.phases[name], field) - getattr(peak, field)) <= 0.005 * peak.total, (name, field)


@pytest.mark.parametrize("preset", ["paper", "lean"])
@pytest.mark.parametrize("model", sorted(CONFIGS))
@pytest.mark.parametrize("method", ["owlore", "full"])
def test_composed_simulation_equals_the_full_one(model, method, preset):
    assert_composed_is_full(CONFIGS[model], train_args(flags(method, preset)))


@pytest.mark.parametrize("method, extra", [("lora", ()), ("galore", ()), ("lisa", ("--keep-inactive-state",)),
                                           ("owlore", ("--grad-accum", "2")), ("full", ("--grad-accum", "2")),
                                           ("owlore", ("--freeze-embeddings",))])
def test_composed_simulation_equals_the_full_one_for_other_settings(method, extra):
    assert_composed_is_full(CONFIGS["llama2"], train_args(flags(method, "paper", *extra)))


def test_plan_keeps_the_first_block_and_one_per_run():
    plan = plan_blocks(10, [[2, 3, 7], None])
    assert plan.full_index == [0, 1, 2, 4, 7, 8] and plan.repeat == [1, 1, 2, 3, 1, 2]
    assert plan.sets == [[2, 4], None]
    assert plan_blocks(10, [None, None]).repeat == [1, 9]
    assert plan_blocks(10, [[2, 3, 7], None], composed=False).repeat == [1] * 10
    # frozen embeddings: the blocks below the lowest trained one get no input gradient, the lowest gets none either
    assert plan_blocks(10, [[2, 3, 7], None], outer_trained=False).repeat == [1, 1, 1, 1, 3, 1, 2]


def test_the_simulated_draw_has_the_largest_peak_of_all_draws(monkeypatch):
    import itertools

    import training.memory as memory
    config = get_config("llama2-7b", **{**SHAPE, "n_layers": 4}, n_kv_heads=4, ffn_dim=172, vocab_size=320)
    for preset in ("official",):
        args = train_args(flags("owlore", preset))
        chosen = simulate_memory(config, args, torch.float32).peak.total
        for draw in itertools.combinations(range(config.n_layers), 2):
            monkeypatch.setattr(memory, "active_sets", lambda c, a, steps, d=list(draw): [d] + [None] * (steps - 1))
            assert simulate_memory(config, args, torch.float32).peak.total <= chosen, (preset, draw)
            monkeypatch.undo()
