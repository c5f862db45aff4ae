import pytest

from bench.load_memory import run


@pytest.mark.slow
def test_load_memory_bench_on_tiny_shape(tmp_path):
    result = run("tiny", tmp_path / "work")
    assert result["file_bytes"] > 200_000  # really written: 2 blocks of bf16 weights
    assert result["peak_rss"] >= result["baseline_rss"] > 0
    assert result["ratio"] == result["peak_rss"] / result["file_bytes"]
    assert not (tmp_path / "work").exists()  # the checkpoint is deleted afterwards
