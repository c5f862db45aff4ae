"""Settings and fixtures shared by every test module (helpers: tests/helpers.py)."""
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from common.assets import asset_path
from helpers import built_once
from model import Transformer, get_config, save_model

# Under pytest-xdist several workers share the cores: one thread each (and in the subprocesses they start),
# as OpenMP pools that outnumber the cores spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)

QA = [("What colour is the sky on a clear day?", "Blue."), ("How many legs does a spider have?", "Eight."),
      ("What is two plus three?", "Five."), ("Which animal says moo?", "A cow."),
      ("What do bees make?", "Honey."), ("What is frozen water called?", "Ice."),
      ("Which planet do we live on?", "Earth."), ("What falls from clouds when it rains?", "Water.")]

# CI (HYPOTHESIS_PROFILE=ci, set by .ci/run) draws the same examples every run and keeps no example
# database, so a run's result depends on the code alone; elsewhere hypothesis draws anew each run
# (pass --hypothesis-seed=N to repeat one).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random LLaMA (4 blocks) in Meta format with the real Mistral v1 tokenizer; read-only, one folder
    for every pytest-xdist worker (runs made from it record its path)."""
    def build(out: Path) -> None:
        torch.manual_seed(0)
        config = get_config("tiny", n_layers=4, vocab_size=32000, max_seq_len=256)
        save_model(Transformer(config), out, format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    return built_once(tmp_path_factory, "tiny-model", build)


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> Path:
    """A small instruction data set (alpaca JSON); read-only, one file for every worker."""
    rows = [{"instruction": q, "input": "", "output": a} for q, a in QA]
    return built_once(tmp_path_factory, "data", lambda out: (out / "train.json").write_text(json.dumps(rows))) / "train.json"


def pytest_collection_modifyitems(config, items) -> None:
    """The heaviest tests (torchrun, then slow) first: under pytest-xdist no long test starts when the rest is
    done. (Fixtures that several workers would each build are shared: tests/helpers.py, built_once.)"""
    items.sort(key=lambda item: 0 if item.get_closest_marker("distributed") else 1 if item.get_closest_marker("slow") else 2)
