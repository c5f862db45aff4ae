"""The literal command: no --data (the embedded commonsense set is built and used), --tokenizer override."""
import json

import pytest
import torch

import train
from common.assets import asset_path
from model import Transformer, get_config, load_model, save_model

pytestmark = pytest.mark.slow


def test_no_data_flag_trains_on_the_commonsense_set(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(Transformer(get_config("tiny", vocab_size=32000)), tmp_path / "m", format="meta")
    # The checkpoint has no tokenizer of its own: --tokenizer supplies it.
    train.main(["--model", str(tmp_path / "m"), "--tokenizer", str(asset_path("mistral-v1-tokenizer")),
                "--out", str(tmp_path / "run"), "--method", "full", "--max-steps", "1", "--batch-size", "2",
                "--seq-len", "32", "--save-format", "hf"])  # fmt: skip
    said = capsys.readouterr().out
    assert "no --data given; training on the commonsense set built in" in said
    records = json.loads((tmp_path / "run" / "commonsense" / "commonsense_train.json").read_text())
    assert {r["task"] for r in records} >= {"boolq", "piqa", "hellaswag"}
    assert (tmp_path / "run" / "training_curves.png").is_file()  # the end-of-run plot
    assert any((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    _, tokenizer = load_model(tmp_path / "run" / "final-hf")  # the export carries the --tokenizer it trained with
    assert tokenizer.encode("Hello world") == load_model(tmp_path / "m", tokenizer=asset_path("mistral-v1-tokenizer"))[1].encode("Hello world")
