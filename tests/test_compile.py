"""--compile: compiled decoder blocks give eager's losses, and redrawing the trainable blocks every period
compiles at most the trainable and the frozen variant once (counted by a Dynamo backend)."""
import copy
from functools import partial

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import train
from common.errors import UserError
from model import Transformer, get_config
from training.args import parse_args, step_config
from training.compile import compile_blocks, use_compile
from training.step import apply_gradients, backward_micro_batches, build_optimizer, start_period
from tests.helpers import run


def train_periods(model, method: str, periods: int, draws: list[list[int]]) -> list[float]:
    """One step per period (owlore: a new draw of blocks each), the summed loss of each."""
    config = step_config(parse_args(["--model", "tiny", "--method", method, "--gamma", "2", "--period", "1",
                                     "--rank", "4", "--lr", "1e-3", "--svd", "exact"]))
    _, optimizer, _ = build_optimizer(model, config)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    losses = []
    for period in range(periods):
        if method == "owlore":
            start_period(model, optimizer, draws[period % len(draws)], config)
        losses.append(backward_micro_batches(model, ids, ids, n_targets=2 * 15, grad_accum=1, chunked_ce=False))
        apply_gradients(optimizer)
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("method,grad_ckpt", [("full", False), ("owlore", False), ("owlore", True)])
def test_compiled_blocks_match_eager_and_compile_each_variant_once(method, grad_ckpt):
    torch.manual_seed(0)
    eager = Transformer(get_config("tiny", n_layers=4))
    compiled = copy.deepcopy(eager)
    eager.gradient_checkpointing = compiled.gradient_checkpointing = grad_ckpt
    counter = CompileCounterWithBackend("aot_eager")  # traces forward and backward like inductor, runs them eagerly
    torch._dynamo.reset()
    compile_blocks(compiled, backend=counter)
    draws = [[0, 1], [2, 3], [1, 3], [0, 2]]
    first = train_periods(compiled, method, 2, draws)
    graphs_after_two_periods = counter.frame_count
    later = train_periods(compiled, method, 8, draws)  # 8 more redraws (with a new optimizer)
    assert first + later == pytest.approx(train_periods(eager, method, 2, draws) + train_periods(eager, method, 8, draws),
                                          rel=1e-5)
    assert graphs_after_two_periods == (1 if method == "full" else 2)  # full: trainable only; owlore: + frozen
    assert counter.frame_count == graphs_after_two_periods  # no recompile per period


def test_compile_default_and_refusals():
    assert use_compile(None, torch.device("cuda"), distributed=False)
    assert not use_compile(None, torch.device("cpu"), distributed=False)
    assert not use_compile(None, torch.device("cuda"), distributed=True)
    assert use_compile(True, torch.device("cpu"), distributed=False)
    with pytest.raises(UserError, match="--compile: not with --fsdp"):
        use_compile(True, torch.device("cuda"), distributed=True)
    with pytest.raises(UserError, match="--compile: not with --fsdp"):
        parse_args(["--model", "tiny", "--fsdp", "--compile"])


@pytest.mark.slow
def test_train_py_compiles_the_blocks(tiny_dir, data_file, tmp_path, monkeypatch):
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(train, "compile_blocks", partial(compile_blocks, backend=counter))
    torch._dynamo.reset()
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "6", "--gamma", "1",
                  "--period", "2", "--sampling", "uniform", "--compile", "--grad-ckpt")
    assert len(metrics) == 6 and len({tuple(m["active_blocks"]) for m in metrics}) > 1
    assert counter.frame_count == 2
