"""A resume on other inputs than the checkpoint's (edited data of the same size, another tokenizer, other
weights, another calibration file) is refused unless --allow-changes; an old checkpoint resumes with a note.
The default outlier-ratio cache follows edited training data."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

import train
from common.errors import Stopped, UserError
from helpers import interrupt_after, run
from model import Transformer, get_config
from training.checkpoint import checkpoints
from training.fingerprints import NAMES, check_fingerprints, file_digest, run_fingerprints, tokenizer_digest

FULL = ("--method", "full", "--save-every", "1")


class Tok:
    """The tokenizer interface run_fingerprints reads."""

    def __init__(self, vocab_size=300, eos_id=2):
        self.vocab_size, self.bos_id, self.eos_id, self.pad_id = vocab_size, 1, eos_id, None
        self.special_tokens, self.chat_template = {"<s>": 1, "</s>": eos_id}, "alpaca"

    def encode(self, text):
        return [min(ord(ch), self.vocab_size - 1) for ch in text]


def tiny(seed=0):
    torch.manual_seed(seed)
    return Transformer(dataclasses.replace(get_config("tiny"), n_layers=2))


def test_file_digest_is_the_sha256_of_the_bytes_read_in_chunks(tmp_path, monkeypatch):
    import training.fingerprints as fp

    monkeypatch.setattr(fp, "CHUNK", 7)
    path = tmp_path / "d.json"
    path.write_bytes(bytes(range(256)) * 3)
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_input_changes_its_own_fingerprint_only(tmp_path):
    data, edited, calib, calib2 = (tmp_path / name for name in ("data.json", "edited.json", "calib.txt", "c2.txt"))
    data.write_text('[{"instruction": "a", "output": "b"}]')
    edited.write_text('[{"instruction": "a", "output": "c"}]')  # same row count, edited text
    calib.write_text("some text")
    calib2.write_text("other text")
    changed = tiny()
    with torch.no_grad():
        changed.layers[1].feed_forward.w2.weight[3, 101] += 0.01  # outside the strided sample
    base = run_fingerprints(data, calib, Tok(), tiny())
    changes = {"data": run_fingerprints(edited, calib, Tok(), tiny()),
               "calibration": run_fingerprints(data, calib2, Tok(), tiny()),
               "tokenizer": run_fingerprints(data, calib, Tok(eos_id=3), tiny()),
               "weights": run_fingerprints(data, calib, Tok(), changed)}
    for key, current in changes.items():
        assert [k for k in base if base[k] != current[k]] == [key]
    assert run_fingerprints(data, None, Tok(), tiny())["calibration"] is None
    assert tokenizer_digest(Tok()) != tokenizer_digest(Tok(vocab_size=301))


def test_a_mismatch_is_one_line_naming_what_changed_unless_allowed(tmp_path):
    saved = {"data": "a", "calibration": None, "tokenizer": "t", "weights": "w"}
    notes = []
    with pytest.raises(UserError, match=rf"^--resume {tmp_path}: the training data and tokenizer differ from the "
                                        r"checkpoint's; pass --allow-changes to continue with them$"):
        check_fingerprints(tmp_path, saved, saved | {"data": "b", "tokenizer": "u"}, False, notes.append)
    assert check_fingerprints(tmp_path, saved, saved | {"weights": "v"}, True, notes.append) == [NAMES["weights"]]
    assert notes == [f"note: --resume {tmp_path}: the starting weights differs from the checkpoint's; continuing "
                     "with them (--allow-changes)"]
    assert check_fingerprints(tmp_path, saved, dict(saved), False, notes.append) == [] and len(notes) == 1


@pytest.mark.slow
def test_resume_on_edited_data_of_the_same_size_is_refused_unless_allowed(tiny_dir, data_file, tmp_path, monkeypatch):
    data = tmp_path / "data.json"
    data.write_text(data_file.read_text())
    interrupt_after(1, monkeypatch)
    with pytest.raises(Stopped):
        run(tiny_dir, data, tmp_path / "run", *FULL, "--max-steps", "2")
    monkeypatch.undo()
    rows = json.loads(data.read_text())
    rows[0]["output"] = "Green."  # the same 8 rows
    data.write_text(json.dumps(rows))
    step1 = checkpoints(tmp_path / "run")[-1]
    with pytest.raises(UserError, match=rf"^--resume {step1}: the training data differs from the checkpoint's; "
                                        r"pass --allow-changes to continue with them$"):
        train.main(["--resume", str(tmp_path / "run")])
    train.main(["--resume", str(tmp_path / "run"), "--allow-changes"])
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["step-000001", "step-000002"]
    state = torch.load(checkpoints(tmp_path / "run")[-1] / "trainer.pt", weights_only=True)
    assert state["fingerprints"]["data"] == file_digest(data)  # the run goes on with the edited data, recorded


@pytest.mark.slow
def test_a_checkpoint_without_fingerprints_resumes_with_a_note(tiny_dir, data_file, tmp_path, capsys):
    run(tiny_dir, data_file, tmp_path / "run", *FULL, "--max-steps", "1")
    trainer = checkpoints(tmp_path / "run")[-1] / "trainer.pt"
    state = torch.load(trainer, weights_only=True)
    del state["fingerprints"]
    torch.save(state, trainer)
    capsys.readouterr()
    train.main(["--resume", str(tmp_path / "run"), "--max-steps", "2", "--allow-changes"])
    notes = [line for line in capsys.readouterr().out.splitlines() if "fingerprints" in line]
    assert notes == [f"note: --resume {trainer.parent}: the checkpoint records no fingerprints of its inputs "
                     "(written by an older version); its training data, calibration, tokenizer and weights are not "
                     "checked"]


@pytest.mark.slow
def test_the_default_ratio_cache_follows_edited_training_data(tiny_dir, data_file, tmp_path, capsys):
    """A rerun (--overwrite keeps the cache) on edited data recalibrates: the cache's tokens are this run's."""
    data = tmp_path / "data.json"
    data.write_text(data_file.read_text())
    run(tiny_dir, data, tmp_path / "run", "--method", "owlore", "--max-steps", "1", "--calib-seq-len", "64")
    before = json.loads((tmp_path / "run" / "outlier_scores.json").read_text())["calibration"]["tokens_sha256"]
    data.write_text(json.dumps([{**row, "output": row["output"].upper()} for row in json.loads(data.read_text())]))
    capsys.readouterr()
    run(tiny_dir, data, tmp_path / "run", "--method", "owlore", "--max-steps", "1", "--calib-seq-len", "64", "--overwrite")
    assert "stale outlier-ratio cache: the calibration tokens differ" in capsys.readouterr().err
    after = json.loads((tmp_path / "run" / "outlier_scores.json").read_text())["calibration"]["tokens_sha256"]
    assert after != before
