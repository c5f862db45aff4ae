"""train.py end to end on a tiny random model (real Mistral v1 tokenizer, 4 blocks) and a small
instruction data set written in the test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from data.assets import asset_path
from model import Transformer, get_config, save_model

ROOT = Path(__file__).resolve().parents[1]
QA = [("What colour is the sky on a clear day?", "Blue."), ("How many legs does a spider have?", "Eight."),
      ("What is two plus three?", "Five."), ("Which animal says moo?", "A cow."),
      ("What do bees make?", "Honey."), ("What is frozen water called?", "Ice."),
      ("Which planet do we live on?", "Earth."), ("What falls from clouds when it rains?", "Water.")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = get_config("tiny", n_layers=4, vocab_size=32000, max_seq_len=256)
    out = tmp_path_factory.mktemp("tiny-model")
    save_model(Transformer(config), out, format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps([{"instruction": q, "input": "", "output": a} for q, a in QA]))
    return path


def run(tiny_dir: Path, data_file: Path, out: Path, *extra: str) -> list[dict]:
    train.main(["--model", str(tiny_dir), "--data", str(data_file), "--out", str(out), "--seq-len", "64", "--no-pack",
                "--batch-size", "8", "--lr", "3e-3", "--save-format", "none", "--seed", "1", "--rank", "8",
                "--update-proj-gap", "2", "--gamma", "2", "--period", "2", "--calib-windows", "2",
                "--calib-seq-len", "16", *extra])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = [p for p in out.iterdir() if p.name.startswith("step-")]
    return torch.load(ckpt / "model.pt", weights_only=True)


@pytest.mark.parametrize("method", ["full", "lora", "galore", "lisa", "owlore", "owlore-fullrank"])
def test_every_method_lowers_the_loss(tiny_dir, data_file, tmp_path, method):
    extra = ["--lr", "1e-2"] if method == "lora" else []
    metrics = run(tiny_dir, data_file, tmp_path, "--method", method, "--max-steps", "8", "--period", "4",
                  "--gamma", "4", "--schedule", "constant", *extra)
    losses = [m["loss"] for m in metrics]
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses
