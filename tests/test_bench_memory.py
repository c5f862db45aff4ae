"""training.memory's fake-tensor simulation against real tensors: the peak of live tensor bytes the torch
profiler records on CPU, the optimizer's own state bytes, the parameters; bench CLIs end to end."""
from __future__ import annotations

import json

import pytest
import torch

from common.errors import UserError
import bench.memory
import bench.step_compare
from bench.memory import measure_memory, preset_flags, train_args
from model import get_config
from optim import measured_state_bytes
from training.memory import prepare, reach_steady_state, run_steps, simulate_memory

pytestmark = pytest.mark.slow

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512)


def flags(method: str, preset: str, *extra: str) -> list[str]:
    return ["--method", method, "--batch-size", "2", "--seq-len", "16", "--gamma", "1", "--rank", "8",
            *preset_flags(method, preset), *extra]


@pytest.mark.parametrize("method, preset", [(m, "paper") for m in ("full", "lora", "galore", "lisa", "owlore",
                                                                    "owlore-fullrank")]
                         + [(m, "lean") for m in ("full", "lora", "owlore")])
def test_simulated_peak_is_the_measured_live_peak(method, preset):
    config = get_config("tiny", **TINY)
    args = train_args(flags(method, preset))
    simulated = simulate_memory(config, args, torch.float32).peak.total
    measured = measure_memory(config, args, torch.float32)
    assert abs(simulated / measured - 1) < 0.05, (simulated, measured)


def test_accumulation_and_inactive_state_are_simulated_like_real_steps():
    config = get_config("tiny", **TINY)
    for extra in (["--grad-accum", "2", "--batch-size", "4"], ["--keep-inactive-state"], ["--freeze-embeddings"]):
        args = train_args(flags("owlore", "paper", *extra))
        simulated = simulate_memory(config, args, torch.float32, steps=3).peak.total
        assert abs(simulated / measure_memory(config, args, torch.float32, steps=3) - 1) < 0.05, extra


def test_categories_are_the_real_parameters_and_optimizer_state():
    config = get_config("tiny", **TINY)
    args = train_args(flags("owlore", "paper"))
    report = simulate_memory(config, args, torch.bfloat16)
    session = prepare(config, args, torch.bfloat16)
    reach_steady_state(session)
    run_steps(session, 2)
    params = sum(p.numel() * 2 for p in session.model.parameters()) + session.model.rope.numel() * 4
    steady = report.phases["step 2 forward (micro-batch 1)"]
    assert steady.parameters == params
    assert steady.optimizer == measured_state_bytes(session.optimizer) > 0
    assert steady.gradients == 0  # freed by zero_grad(set_to_none=True) after step 1
    assert report.phases["step 2 optimizer step"].gradients > 0


def test_exact_svd_scratch_is_part_of_the_refresh_peak():
    # one block whose up/gate matrices dominate: the refresh holds grad.float(), U and Vh of the largest, in fp32
    config = get_config("tiny", dim=64, n_layers=1, n_heads=4, n_kv_heads=4, ffn_dim=1024, vocab_size=64)
    args = train_args(["--method", "galore", "--batch-size", "1", "--seq-len", "8", "--rank", "8"])
    refresh = simulate_memory(config, args, torch.bfloat16, steps=1).phases["step 1 optimizer step"]
    m, n = 1024, 64
    assert refresh.temporaries >= 4 * (m * n + m * n + n * n)  # the bf16 gradient in fp32, U and Vh


def test_lean_is_below_paper_faithful_and_frees_the_logits():
    config = get_config("tiny", **{**TINY, "vocab_size": 4096})
    paper = simulate_memory(config, train_args(flags("owlore", "paper")), torch.bfloat16)
    lean = simulate_memory(config, train_args(flags("owlore", "lean")), torch.bfloat16)
    assert lean.peak.total < paper.peak.total
    forward = "step 2 forward (micro-batch 1)"
    logits = 2 * 15 * 4096 * 4  # the fp32 logits of the 2x15 targets: chunked cross-entropy never holds them whole
    assert paper.phases[forward].activations - lean.phases[forward].activations >= logits


def test_bench_memory_json_holds_every_row_and_its_command(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = bench.memory.main(["--model", "tiny", "--dtype", "fp32", "--batch-size", "2", "--seq-len", "16",
                              "--gamma", "1", "--rank", "8", "--methods", "lisa,owlore", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert [(r["method"], r["preset"]) for r in saved] == [(m, p) for m in ("lisa", "owlore")
                                                           for p in ("official", "paper", "lean")]
    assert saved[0]["report"]["peak"]["total"] == rows[0]["report"]["peak"]["total"] > 0
    assert "--methods lisa --presets official" in saved[0]["command"]
    official, paper = (r["report"]["peak"]["total"] for r in saved[3:5])
    assert official > paper  # rank 256 and the state of every block ever drawn kept, against rank 128, state freed
    assert "| owlore | lean |" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--gamma", "9"], ["--methods", "adam"], ["--flags", "--grad-accum 3"]])
def test_bench_memory_rejects_bad_input(argv):
    with pytest.raises(UserError):
        bench.memory.main(["--model", "tiny", "--batch-size", "2", "--seq-len", "16", "--rank", "8", *argv])


def test_step_compare_runs_end_to_end(tmp_path):
    rows = bench.step_compare.main(["--tiny", "--methods", "owlore", "--json", str(tmp_path / "rows.json")])
    assert [r["method"] for r in rows] == ["owlore", "owlore --lean"]
    for row in rows:
        assert row["step_s"] > 0 and row["peak"] >= row["runtime_baseline"] > 0 and row["estimate"] > row["runtime_baseline"]
    assert json.loads((tmp_path / "rows.json").read_text())[0]["peak"] == rows[0]["peak"]
