"""training.memory against what really exists: counted parameters, the optimizer's own state bytes after
a real step, and the bytes autograd saves for backward (saved-tensor hooks); bench CLIs end to end."""
from __future__ import annotations

import json

import pytest
import torch

import bench.memory
import bench.step_compare
from model import Transformer, get_config
from optim import GaLoreAdamW, measured_state_bytes
from sampling import set_trainable
from training.memory import MemorySettings, activation_bytes, estimate_memory, parameter_count
from common.errors import UserError


def saved_activation_bytes(model: Transformer, tokens: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward, parameters excluded, each storage once."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.forward_hidden(tokens)
    return sum(saved.values())


@pytest.mark.parametrize("name", ["tiny", "tiny-tied"])
def test_parameter_count_matches_a_real_model(name):
    model = Transformer(get_config(name))
    assert parameter_count(model.config) == sum(p.numel() for p in model.parameters())


def one_step(model: Transformer, groups: list[dict]) -> GaLoreAdamW:
    optimizer = GaLoreAdamW(groups, lr=1e-3)
    model(torch.randint(0, model.config.vocab_size, (2, 16))).sum().backward()
    optimizer.step()
    return optimizer


@pytest.mark.parametrize("method", ["full", "galore", "lisa", "owlore"])
def test_optimizer_bytes_match_the_optimizers_own_accounting(method):
    torch.manual_seed(0)
    config = get_config("tiny", n_layers=4)
    model = Transformer(config)
    if method in ("lisa", "owlore"):
        set_trainable(model, [1, 3], True)
    low_rank = method in ("galore", "owlore")
    matrices = [p for block in model.layers for p in block.parameters() if p.ndim == 2] if low_rank else []
    rest = [p for p in model.parameters() if all(p is not m for m in matrices)]
    groups = [{"params": rest}] + ([{"params": matrices, "rank": 8, "update_proj_gap": 10, "scale": 0.25,
                                     "proj_type": "std"}] if matrices else [])
    optimizer = one_step(model, groups)
    settings = MemorySettings(method, 2, 16, dtype=torch.float32, gamma=2, rank=8)
    estimate = estimate_memory(config, settings)
    assert estimate.optimizer == measured_state_bytes(optimizer)
    grads = sum(p.grad.numel() * 4 for p in model.parameters() if p.grad is not None)
    assert estimate.gradients == grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["full", "lisa"])
def test_activation_model_matches_saved_tensors(method, dtype):
    torch.manual_seed(0)
    config = get_config("tiny", n_layers=4, dim=128, ffn_dim=352)
    model = Transformer(config).to(dtype)
    if method == "lisa":
        set_trainable(model, [2], True)
    measured = saved_activation_bytes(model, torch.randint(0, 256, (2, 64)))
    estimate = activation_bytes(config, MemorySettings(method, 2, 64, dtype=dtype, gamma=1))
    assert abs(estimate / measured - 1) < 0.01, (estimate, measured)


def test_checkpointing_keeps_block_inputs_only():
    config = get_config("tiny", n_layers=4)
    full = activation_bytes(config, MemorySettings("full", 2, 64, dtype=torch.float32))
    ckpt = activation_bytes(config, MemorySettings("full", 2, 64, dtype=torch.float32, grad_ckpt=True))
    assert ckpt < full / 2


def test_bench_memory_json_is_the_estimator(capsys):
    rows = bench.memory.main(["--model", "tiny", "--dtype", "fp32", "--batch-size", "2", "--seq-len", "16",
                              "--gamma", "1", "--rank", "8", "--runtime-gib", "0.5", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in printed] == list(rows) and len(printed) == 6
    for row in printed:
        settings = MemorySettings(row["method"], 2, 16, dtype=torch.float32, gamma=1, rank=8, runtime_bytes=2**29)
        assert row["total_bytes"] == estimate_memory(get_config("tiny"), settings).total
        assert row["runtime"] == 2**29


def test_lean_estimate_is_below_paper_faithful():
    paper = bench.memory.main(["--method", "owlore", "--grad-ckpt"])["owlore"]
    lean = bench.memory.main(["--method", "owlore", "--lean"])["owlore"]
    assert lean.gradients < paper.gradients and lean.logits < paper.logits and lean.total < paper.total


def test_bench_memory_rejects_bad_gamma():
    with pytest.raises(UserError, match="gamma 9"):
        bench.memory.main(["--model", "tiny", "--gamma", "9"])


def test_step_compare_runs_end_to_end(tmp_path):
    rows = bench.step_compare.main(["--tiny", "--methods", "owlore", "--json", str(tmp_path / "rows.json")])
    assert [r["method"] for r in rows] == ["owlore", "owlore --lean"]
    for row in rows:
        assert row["step_s"] > 0 and row["peak"] >= row["runtime_baseline"] > 0 and row["estimate"] > 0
    assert json.loads((tmp_path / "rows.json").read_text())[0]["peak"] == rows[0]["peak"]


def test_reproduce_runs_end_to_end_on_a_tiny_model(tmp_path):
    import bench.reproduce
    from common.assets import asset_path
    from model import save_model

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    save_model(Transformer(get_config("tiny", vocab_size=32000, max_seq_len=256)), model_dir, format="meta",
               tokenizer=asset_path("mistral-v1-tokenizer"))
    best = bench.reproduce.main(["--model", str(model_dir), "--methods", "lisa", "--tasks", "boolq,piqa",
                                 "--steps", "2", "--batch-size", "2", "--seq-len", "256", "--heldout", "3",
                                 "--train-per-task", "8", "--gamma", "1", "--rank", "8", "--out", str(tmp_path / "r")])
    assert set(best["lisa"]["acc"]) == {"boolq", "piqa"}
    assert all(0.0 <= acc <= 1.0 for acc in best["lisa"]["acc"].values())
    table = (tmp_path / "r" / "table.md").read_text()
    assert "| lisa |" in table and "| pre-trained (no fine-tuning) |" in table and (tmp_path / "r" / "accuracy.png").is_file()
