"""train.py with sampling policies beyond the built-in table, and with outlier-score caches that do not
match the run. Uses the shared tiny model (4 blocks, real tokenizer) and data (conftest.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import load_model
from common.errors import Stopped, UserError
from common.io import write_json
from sampling.cache import make_record
from sampling.htsr import block_alphas
from sampling.policies import POLICIES, observe_alphas, register_policy
from helpers import final_weights, interrupt_after, run
from training.checkpoint import checkpoints

pytestmark = pytest.mark.slow


@register_policy("test_last_two_by_ratio")
def last_two_by_ratio(ratios: list[float], n_layers: int) -> np.ndarray:
    """Only the two deepest blocks, weighted by their outlier ratios: needs the ratios train.py computes."""
    weights = np.zeros(n_layers)
    weights[-2:] = np.asarray(ratios[-2:]) + 1.0
    return weights


OBSERVED = []


def counted_observe(model):
    OBSERVED.append(1)
    return observe_alphas(model)


register_policy("test_counted_htsr_dynamic", observe=counted_observe)(POLICIES["htsr_dynamic"].weights)


def trainer_state(out):
    return torch.load(checkpoints(out)[-1] / "trainer.pt", weights_only=True)


def test_a_policy_registered_here_runs_through_train_py(tiny_dir, data_file, tmp_path):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--sampling", "test_last_two_by_ratio",
                  "--max-steps", "2", "--gamma", "2", "--period", "1")
    assert [m["active_blocks"] for m in metrics] == [[2, 3], [2, 3]]
    scores = json.loads((tmp_path / "outlier_scores.json").read_text())  # computed because the policy asked
    assert len(scores["ratios"]) == 4 and trainer_state(tmp_path)["sampler"]["inputs"]["ratios"] == scores["ratios"]


@pytest.mark.parametrize("policy", ["htsr", "htsr_dynamic"])
def test_htsr_policies_train_a_tiny_model(tiny_dir, data_file, tmp_path, policy):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--sampling", policy, "--max-steps", "4",
                  "--gamma", "2", "--period", "2", "--schedule", "constant")
    assert all(len(m["active_blocks"]) == 2 for m in metrics) and metrics[-1]["loss"] < metrics[0]["loss"]
    pretrained = block_alphas(load_model(tiny_dir)[0])[0]
    sampler = trainer_state(tmp_path)["sampler"]
    if policy == "htsr":
        assert sampler["inputs"]["alphas"] == pretrained and sampler["state"] is None
    else:  # observed at the start of period 1, from the trained weights
        assert sampler["state_period"] == 1 and sampler["state"]["alphas"] != pretrained


@pytest.mark.parametrize("first, observed_after_resume", [(2, 2), (3, 1)])  # at and in the middle of a period
def test_sigint_then_resume_with_a_dynamic_policy_is_bit_identical(tiny_dir, data_file, tmp_path, first,
                                                                   observed_after_resume, monkeypatch):
    args = ("--method", "owlore", "--sampling", "test_counted_htsr_dynamic", "--period", "2", "--gamma", "2",
            "--max-steps", "5")
    run(tiny_dir, data_file, tmp_path / "straight", *args)
    interrupt_after(first, monkeypatch)
    with pytest.raises(Stopped):  # (after saving step `first`)
        run(tiny_dir, data_file, tmp_path / "split", *args)
    monkeypatch.undo()
    OBSERVED.clear()
    run(tiny_dir, data_file, tmp_path / "split", *args, "--resume", str(tmp_path / "split"))
    # inside a period the checkpointed state is used, not one observed from weights that moved since
    assert len(OBSERVED) == observed_after_resume
    straight, split = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    assert trainer_state(tmp_path / "straight")["sampler"] == trainer_state(tmp_path / "split")["sampler"]


def stale_cache(tiny_dir, path, **change):
    """An outlier-score cache for the tiny model at M=3, with one thing changed."""
    model = load_model(tiny_dir)[0]
    record = make_record(model, str(tiny_dir), 3.0, {"source": "test", "tokens_sha256": "0"}, [0.1, 0.2, 0.3, 0.4])
    write_json(path, record | change)


@pytest.mark.parametrize("change, cause", [
    (dict(M=5.0), "M is 5.0 there but 3.0 now"),
    (dict(ratios=[0.1, 0.2, 0.3]), "number of blocks is 3 there but 4 now"),
    (dict(fingerprint="0" * 64), "the model weights changed"),
])
def test_a_stale_default_cache_is_recomputed_with_a_note(tiny_dir, data_file, tmp_path, capsys, change, cause):
    stale_cache(tiny_dir, tmp_path / "outlier_scores.json", **change)
    run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "1")
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and cause in notes[0] and "recomputing" in notes[0]
    scores = json.loads((tmp_path / "outlier_scores.json").read_text())
    assert scores["M"] == 3.0 and len(scores["ratios"]) == 4 and scores["ratios"] != [0.1, 0.2, 0.3, 0.4]


def test_a_cache_named_with_scores_must_match(tiny_dir, data_file, tmp_path):
    named = tmp_path / "named.json"
    stale_cache(tiny_dir, named, M=5.0)
    before = named.read_text()
    with pytest.raises(UserError) as err:  # the CLI prints it as "error: <message>"
        run(tiny_dir, data_file, tmp_path / "run", "--method", "owlore", "--max-steps", "1", "--scores", str(named))
    assert str(err.value) == f"--scores {named}: stale outlier-ratio cache: M is 5.0 there but 3.0 now"
    assert named.read_text() == before


def test_a_matching_named_cache_is_used_as_it_is(tiny_dir, data_file, tmp_path, capsys):
    named = tmp_path / "named.json"
    stale_cache(tiny_dir, named)  # nothing changed: valid for these weights and M
    run(tiny_dir, data_file, tmp_path / "run", "--method", "owlore", "--max-steps", "1", "--scores", str(named))
    assert "outlier ratios D_l (%): 0.100 0.200 0.300 0.400" in capsys.readouterr().out
