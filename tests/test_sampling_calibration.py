import json

import pytest
import torch

from sampling.calibration import calibration_windows, describe, read_documents, token_stream, training_documents
from sampling.plots import plot_layer_profile, plot_sampling_counts


class ByteTokenizer:
    """UTF-8 bytes as token ids, with BOS 1."""
    bos_id, eos_id, vocab_size = 1, 2, 256

    def encode(self, text, bos=False, eos=False):
        return [self.bos_id] * bos + list(text.encode()) + [self.eos_id] * eos


def test_read_documents_of_every_format(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file")
    (tmp_path / "b.json").write_text(json.dumps(["doc one", {"text": "doc two", "url": "x"}, [7, 8]]))
    (tmp_path / "c.jsonl").write_text('"line one"\n\n{"text": "line two"}\n[5, 6, 7]\n')  # C4: {"text", "url", ...}
    (tmp_path / "e.json").write_text(json.dumps([3, 4, 5]))
    assert read_documents(tmp_path / "a.txt") == ["plain text file"]
    assert read_documents(tmp_path / "b.json") == ["doc one", "doc two", [7, 8]]
    assert read_documents(tmp_path / "c.jsonl") == ["line one", "line two", [5, 6, 7]]
    assert read_documents(tmp_path / "e.json") == [[3, 4, 5]]


@pytest.mark.parametrize("name,content,message", [
    ("bad.jsonl", '"ok"\n{"text": \n', r"bad\.jsonl: line 2: not valid JSON"),
    ("bad.json", "[1, 2", r"bad\.json: line 1: not valid JSON"),
    ("rec.json", json.dumps([{"title": "no text"}]), r"rec\.json: line 1: a calibration document is a string"),
    ("chat.jsonl", json.dumps({"messages": []}), r"chat\.jsonl: line 1: .*leave out --calib"),
    ("obj.json", json.dumps({"a": 1}), "expected a JSON list"),
    ("empty.txt", "", r"empty\.txt: no non-empty documents"),
])
def test_malformed_sources_name_the_file_and_cause(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_documents(tmp_path / name)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt: calibration file not found"):
        read_documents(tmp_path / "missing.txt")


CHAT = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i in range(12)]


def test_training_documents_are_the_training_tokenization():
    from common.assets import asset_path
    from data.tokenize import tokenize_record
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer(asset_path("mistral-v1-tokenizer"), chat_template="mistral")
    records = CHAT + [{"instruction": "Say hi.", "input": "", "output": "hi"}, {"text": ""}]  # last: empty, skipped
    docs = training_documents(records, tok, n_tokens=10**9, template="alpaca", seed=0)
    expected = {tuple(tokenize_record(tok, r, template="alpaca")[0]) for r in records[:-1]}
    assert len(docs) == 13 and {tuple(d) for d in docs} == expected
    assert docs == training_documents(records, tok, 10**9, seed=0) != training_documents(records, tok, 10**9, seed=1)
    few = training_documents(records, tok, n_tokens=len(docs[0]) + 1, seed=0)
    assert few == docs[:2]  # stops as soon as enough tokens are collected


@pytest.mark.slow
def test_default_method_calibrates_on_chat_data(tmp_path):
    """The default (owlore) run on chat data: calibration comes from the training stream, no second parser."""
    import train
    from common.assets import asset_path
    from model import Transformer, get_config, save_model

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    save_model(Transformer(get_config("tiny", n_layers=2, vocab_size=32000, max_seq_len=128)), model_dir,
               format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in CHAT))
    out = tmp_path / "run"
    train.main(["--model", str(model_dir), "--data", str(data), "--out", str(out), "--seq-len", "32",
                "--batch-size", "2", "--max-steps", "1", "--save-format", "none", "--gamma", "1", "--rank", "4",
                "--calib-windows", "2", "--calib-seq-len", "16", "--M", "3", "--no-memory-report"])
    record = json.loads((out / "outlier_scores.json").read_text())
    assert record["calibration"]["n_windows"] == 2 and len(record["ratios"]) == 2


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
