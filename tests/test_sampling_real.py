"""SmolLM2-135M (real weights): ratios computed, cached, reloaded; a changed weight invalidates the cache."""
import math

import pytest
import torch

import sampling.cache as cache
from model import load_model
from sampling.cache import StaleCacheError, load_or_compute_ratios
from sampling.calibration import batches, boolq_passages, calibration_windows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m")


def test_real_model_ratios_are_cached_reloaded_and_invalidated(smollm, tmp_path, monkeypatch):
    model, tokenizer = smollm
    windows = calibration_windows(boolq_passages()[:100], tokenizer, n_windows=2, seq_len=32, seed=0)
    path = tmp_path / "smollm2.json"
    ratios = load_or_compute_ratios(model, "smollm2-135m", batches(windows, 2), 5.0, path)
    assert len(ratios) == 30 and all(math.isfinite(r) and r >= 0 for r in ratios) and max(ratios) > 0
    assert len(set(ratios)) > 10  # real blocks differ
    with monkeypatch.context() as m:
        m.setattr(cache, "outlier_ratios", lambda *a, **k: pytest.fail("recomputed a valid cache"))
        assert load_or_compute_ratios(model, "smollm2-135m", batches(windows, 2), 5.0, path) == ratios
    weight = model.layers[7].feed_forward.w2.weight
    original = weight[100, 200].item()
    try:
        with torch.no_grad():
            weight[100, 200] += 0.5
        with pytest.raises(StaleCacheError, match="the model weights changed"):
            load_or_compute_ratios(model, "smollm2-135m", batches(windows, 2), 5.0, path, on_stale="error")
    finally:
        with torch.no_grad():
            weight[100, 200] = original
