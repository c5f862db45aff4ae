import json

import pytest
import torch

from sampling.calibration import calibration_windows, describe, read_documents, token_stream
from sampling.plots import plot_layer_profile, plot_sampling_counts


class ByteTokenizer:
    """UTF-8 bytes as token ids, with BOS 1."""
    bos_id, eos_id, vocab_size = 1, 2, 256

    def encode(self, text, bos=False, eos=False):
        return [self.bos_id] * bos + list(text.encode()) + [self.eos_id] * eos


def test_read_documents_of_every_format(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file")
    (tmp_path / "b.json").write_text(json.dumps(["doc one", {"text": "doc two"}, {"input": "q", "output": "a"},
                                                   {"instruction": "do", "input": "", "output": "b"}]))
    (tmp_path / "c.jsonl").write_text('"line one"\n\n{"text": "line two"}\n[5, 6, 7]\n')
    (tmp_path / "d.json").write_text(json.dumps({"type": "text_only", "instances": [{"text": "lmflow"}]}))
    (tmp_path / "e.json").write_text(json.dumps([3, 4, 5]))
    assert read_documents(tmp_path / "a.txt") == ["plain text file"]
    assert read_documents(tmp_path / "b.json") == ["doc one", "doc two", "q a", "do b"]
    assert read_documents(tmp_path / "c.jsonl") == ["line one", "line two", [5, 6, 7]]
    assert read_documents(tmp_path / "d.json") == ["lmflow"]
    assert read_documents(tmp_path / "e.json") == [[3, 4, 5]]


@pytest.mark.parametrize("name,content,message", [
    ("bad.jsonl", '"ok"\n{"text": \n', r"bad.jsonl:2: not valid JSON"),
    ("bad.json", "[1, 2", "bad.json: not valid JSON"),
    ("rec.json", json.dumps([{"title": "no text"}]), r"rec.json\[0\]: a document must be"),
    ("obj.json", json.dumps({"a": 1}), "expected a JSON list"),
    ("empty.txt", "", "no non-empty documents"),
])
def test_malformed_sources_name_the_file_and_cause(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_documents(tmp_path / name)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt: calibration file not found"):
        read_documents(tmp_path / "missing.txt")


def test_windows_are_distinct_chunks_of_the_stream_and_seeded():
    docs = [f"document number {i} " * 3 for i in range(40)]
    tok = ByteTokenizer()
    stream = torch.tensor(token_stream(docs, tok))
    assert stream[0] == tok.bos_id and int((stream == tok.bos_id).sum()) == 40
    w = calibration_windows(docs, tok, n_windows=10, seq_len=16, seed=3)
    assert w.shape == (10, 16) and w.dtype == torch.long
    chunks = stream[: len(stream) // 16 * 16].view(-1, 16)
    index = [next(i for i, c in enumerate(chunks) if torch.equal(c, row)) for row in w]
    assert len(set(index)) == 10 and index == sorted(index)
    assert torch.equal(w, calibration_windows(docs, tok, 10, 16, seed=3))
    assert not torch.equal(w, calibration_windows(docs, tok, 10, 16, seed=4))


def test_too_little_text_and_bad_token_ids_raise():
    with pytest.raises(ValueError, match="has 11 tokens, fewer than the 2 x 8 = 16 requested"):
        calibration_windows(["0123456789"], ByteTokenizer(), 2, 8)
    with pytest.raises(ValueError, match="token id 300 outside the vocabulary"):
        calibration_windows([[1, 2, 300]], ByteTokenizer(), 1, 2)


def test_description_hashes_the_tokens_however_they_are_batched():
    w = torch.randint(0, 256, (6, 8), generator=torch.Generator().manual_seed(0))
    whole = describe(w, "src", 0)
    assert whole == describe(list(w.split(4)), "src", 0)
    assert (whole["n_windows"], whole["seq_len"]) == (6, 8)
    w[5, 7] += 1
    assert describe(w, "src", 0)["tokens_sha256"] != whole["tokens_sha256"]


def test_boolq_passages_are_real_english():
    from sampling.calibration import boolq_passages

    passages = boolq_passages()
    assert len(passages) > 1000 and len(set(passages)) == len(passages)
    assert sum(p.count(" the ") for p in passages[:50]) > 100


def test_plots_write_png_files(tmp_path):
    ratios = [0.3, 0.2, 0.05, 0.1]
    p = [r / 0.65 for r in ratios]
    plot_layer_profile(tmp_path / "profile.png", ratios, p, [0.9, 0.7, 0.2, 0.4], [3.1, 3.4, 4.0, 3.8],
                       title="t", M=13, gamma=2, rho=-0.8)
    plot_sampling_counts(tmp_path / "counts.png", [9, 7, 2, 4], [0.9, 0.7, 0.2, 0.4])
    for name in ("profile.png", "counts.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(f.name for f in tmp_path.iterdir()) == ["counts.png", "profile.png"]  # no temp files left
    with pytest.raises(ValueError, match="one value per block"):
        plot_layer_profile(tmp_path / "x.png", ratios, p[:3])
