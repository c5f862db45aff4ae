"""Real model, real data: SmolLM2-135M zero-shot on the first 40 ARC-Easy validation questions."""
import pytest

from eval import evaluate
from model import load_model

pytestmark = pytest.mark.slow


def test_smollm2_zero_shot_arc_easy_is_clearly_above_chance():
    model, tokenizer = load_model("smollm2-135m")
    out = evaluate(model, tokenizer, "arc_easy", limit=40, progress=False)
    res = out["results"]["arc_easy"]
    chance = sum(1 / len(r["loglikelihoods"]) for r in out["records"]) / res["n"]
    assert res["n"] == 40 and 0.24 < chance < 0.26
    # Measured 2026-11-28: acc 0.500 (chance 0.25).
    assert res["acc"] > chance + 0.1
