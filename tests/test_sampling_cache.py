import dataclasses
import json

import pytest
import torch

import sampling.cache as cache
from model import Transformer, get_config
from sampling.cache import StaleCacheError, cached_ratios, load_or_compute_ratios, weight_fingerprint


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(dataclasses.replace(get_config("tiny"), n_layers=2)).eval()


def calib(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 16), generator=g) for _ in range(2)]


def test_fingerprint_sees_any_changed_weight_but_not_the_compute_dtype():
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # bf16-representable, like a bf16 checkpoint
    before = weight_fingerprint(model)
    assert weight_fingerprint(tiny_model(seed=1)) != before
    bf16 = tiny_model()
    bf16.load_state_dict(model.state_dict())
    assert weight_fingerprint(bf16.to(torch.bfloat16)) == before
    with torch.no_grad():
        model.layers[1].feed_forward.w2.weight[3, 101] += 0.01  # not among the strided sample
    assert weight_fingerprint(model) != before


def test_cache_is_written_then_reused(tmp_path, monkeypatch):
    model, path = tiny_model(), tmp_path / "ratios.json"
    ratios = load_or_compute_ratios(model, "tiny", calib(), 3.0, path)
    record = json.loads(path.read_text())
    assert record["ratios"] == ratios and record["M"] == 3.0 and record["model_name"] == "tiny"
    assert record["calibration"]["n_windows"] == 4 and record["fingerprint"] == weight_fingerprint(model)
    monkeypatch.setattr(cache, "outlier_ratios", lambda *a, **k: pytest.fail("recomputed a valid cache"))
    assert load_or_compute_ratios(model, "tiny", calib(), 3.0, path) == ratios
    assert load_or_compute_ratios(model, "tiny", None, 3.0, path) == ratios  # any calibration accepted
    assert [f.name for f in tmp_path.iterdir()] == ["ratios.json"]  # atomic write left no temp file


def test_changed_weight_invalidates_the_cache(tmp_path, capsys):
    model, path = tiny_model(), tmp_path / "ratios.json"
    ratios = load_or_compute_ratios(model, "tiny", calib(), 3.0, path)
    with torch.no_grad():
        model.layers[0].attention.wq.weight[:, :8] *= 30.0
    with pytest.raises(StaleCacheError, match="ratios.json: stale outlier-ratio cache: the model weights changed"):
        load_or_compute_ratios(model, "tiny", calib(), 3.0, path, on_stale="error")
    new = load_or_compute_ratios(model, "tiny", calib(), 3.0, path)
    assert "recomputing" in capsys.readouterr().err
    assert new != ratios and cached_ratios(path, model, "tiny", 3.0) == new


@pytest.mark.parametrize("change,message", [
    (dict(M=5.0), "M is 3.0 there but 5.0 now"),
    (dict(model_name="other"), "model name is 'tiny' there but 'other' now"),
    (dict(calibration_batches=calib(seed=2)), "calibration tokens"),
])
def test_other_M_name_or_calibration_is_stale(tmp_path, change, message):
    model, path = tiny_model(), tmp_path / "ratios.json"
    args = dict(model=model, model_name="tiny", calibration_batches=calib(), M=3.0, cache_path=path)
    load_or_compute_ratios(**args)
    with pytest.raises(StaleCacheError, match=message):
        load_or_compute_ratios(**(args | change), on_stale="error")


@pytest.mark.parametrize("content,message", [
    ("{not json", "corrupt outlier-ratio cache"),
    (json.dumps({"ratios": [0.1, 0.2]}), "not an outlier-ratio cache"),
    (json.dumps({"model_name": "tiny", "fingerprint": "x", "M": 3, "calibration": {}, "ratios": [0.1, -1]}),
     "'ratios' must be a list of finite non-negative"),
])
def test_corrupt_cache_files_raise(tmp_path, content, message):
    path = tmp_path / "ratios.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"ratios.json: {message}"):
        load_or_compute_ratios(tiny_model(), "tiny", calib(), 3.0, path)


def test_no_cache_and_no_calibration_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no calibration batches"):
        load_or_compute_ratios(tiny_model(), "tiny", None, 3.0, tmp_path / "missing.json")


def test_same_tokens_in_another_shape_are_another_calibration(tmp_path):
    """4 windows of 16 tokens and 8 windows of 8 hash the same bytes; the shape is part of the key."""
    model, path = tiny_model(), tmp_path / "ratios.json"
    load_or_compute_ratios(model, "tiny", calib(), 3.0, path)
    reshaped = [torch.cat(calib()).reshape(8, 8)]
    with pytest.raises(StaleCacheError, match="the calibration windows are 4 x 16 tokens there but 8 x 8 now"):
        load_or_compute_ratios(model, "tiny", reshaped, 3.0, path, on_stale="error")


def test_every_recorded_value_is_part_of_the_key(tmp_path):
    """What the cache writes is either compared (changing it makes the cache stale), provenance or the output."""
    model, path = tiny_model(), tmp_path / "ratios.json"
    load_or_compute_ratios(model, "tiny", calib(), 3.0, path)
    record = json.loads(path.read_text())
    assert set(record) == {*cache.KEY, "calibration", "ratios"}
    assert set(record["calibration"]) == {*cache.CALIBRATION_KEY, *cache.PROVENANCE}
    current = cache.describe(calib(), "batches given in Python", seed=None)
    edits = [{"model_name": "other"}, {"fingerprint": "0" * 64}, {"M": 4.0}, {"ratios": [0.5]}]
    assert {key for edit in edits for key in edit} == {*cache.KEY, "ratios"}
    edits += [{"calibration": {**record["calibration"], key: 7}} for key in cache.CALIBRATION_KEY]
    for edit in edits:
        path.write_text(json.dumps(record | edit))
        with pytest.raises(StaleCacheError):
            cached_ratios(path, model, "tiny", 3.0, current)
    path.write_text(json.dumps(record | {"calibration": {**record["calibration"], "source": "elsewhere", "seed": 3}}))
    assert cached_ratios(path, model, "tiny", 3.0, current) == record["ratios"]  # the same tokens from another source
