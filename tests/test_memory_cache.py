"""The memory report's cache: a repeated start reads what the simulation gave, and nothing else."""
from dataclasses import replace

import pytest
import torch

from bench.memory import train_args
from model.config import get_config
from training.memory import simulate_memory
from training.memory_cache import memory_report, report_key

CONFIG = get_config("tiny", dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=128)
pytestmark = pytest.mark.slow  # memory simulations

ARGS = train_args(["--method", "owlore", "--batch-size", "2", "--seq-len", "8", "--gamma", "1", "--rank", "4"])


def without_seconds(report) -> dict:
    return {k: v for k, v in report.as_dict().items() if k != "seconds"}


def test_a_repeated_start_reads_the_simulated_report(tmp_path):
    first, cached = memory_report(CONFIG, ARGS, torch.float32, folder=tmp_path)
    assert not cached and len(list(tmp_path.iterdir())) == 1
    again, cached = memory_report(CONFIG, ARGS, torch.float32, folder=tmp_path)
    assert cached and without_seconds(again) == without_seconds(first)
    assert without_seconds(first) == without_seconds(simulate_memory(CONFIG, ARGS, torch.float32))


def test_every_input_of_the_simulation_is_in_the_key():
    key = report_key(CONFIG, ARGS, torch.float32, 1, None)
    others = [report_key(replace(CONFIG, ffn_dim=96), ARGS, torch.float32, 1, None),
              report_key(CONFIG, replace(ARGS, rank=8), torch.float32, 1, None),
              report_key(CONFIG, replace(ARGS, keep_inactive_state=not ARGS.keep_inactive_state), torch.float32, 1, None),
              report_key(CONFIG, ARGS, torch.bfloat16, 1, None),
              report_key(CONFIG, ARGS, torch.float32, 2, None),
              report_key(CONFIG, ARGS, torch.float32, 1, 2)]
    assert len({key, *others}) == 1 + len(others)
    assert report_key(CONFIG, ARGS, torch.float32, 1, None) == key


def test_a_damaged_cache_file_is_simulated_again_and_replaced(tmp_path):
    first, _ = memory_report(CONFIG, ARGS, torch.float32, folder=tmp_path)
    (path,) = tmp_path.iterdir()
    for damage in ("", "{\"peak\": {\"total\": 1}}", "{\"peak\": {\"nope\": 1}, \"phases\": {}, \"seconds\": 0}", "\xff"):
        path.write_text(damage, encoding="latin-1")
        report, cached = memory_report(CONFIG, ARGS, torch.float32, folder=tmp_path)
        assert not cached and without_seconds(report) == without_seconds(first)
        assert memory_report(CONFIG, ARGS, torch.float32, folder=tmp_path)[1]  # replaced by a good one
