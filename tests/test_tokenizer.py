"""LLaMA-3 tiktoken and SentencePiece tokenizers on the real tokenizer files; file detection and bad files."""
import base64

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from common.assets import asset_path
from model.tokenizer import load_tokenizer

MIXED = "Mixed text: 1234567 apples, naïve café 中文 🎉🦉\n\n\tindented  code();  trailing  \n"


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer(asset_path("llama3-tokenizer"))


@pytest.fixture(scope="module")
def mistral():
    return load_tokenizer(asset_path("mistral-v1-tokenizer"), chat_template="mistral")


def test_llama3_golden_ids(llama3):
    ids = llama3.encode("This is a test sentence.", bos=True, eos=True)
    assert ids == [128000, 2028, 374, 264, 1296, 11914, 13, 128001]


def test_llama3_special_token_numbering(llama3):
    sp = llama3.special_tokens
    assert llama3.vocab_size == 128256 and len(sp) == 256
    assert (sp["<|begin_of_text|>"], sp["<|end_of_text|>"]) == (128000, 128001)
    assert (sp["<|start_header_id|>"], sp["<|end_header_id|>"]) == (128006, 128007)
    assert (sp["<|eom_id|>"], sp["<|eot_id|>"]) == (128008, 128009)
    assert sp["<|reserved_special_token_2|>"] == 128012 and sp["<|reserved_special_token_245|>"] == 128255
    assert (llama3.bos_id, llama3.eos_id, llama3.pad_id) == (128000, 128001, None)
    assert llama3.stop_ids == {128001, 128008, 128009}
    assert llama3.chat_template == "llama3"


def test_llama3_specials_only_through_encode_special(llama3):
    text = "<|start_header_id|>user<|end_header_id|>"
    assert llama3.encode_special(text) == [128006, *llama3.encode("user"), 128007]
    literal = llama3.encode(text)
    assert not set(literal) & set(llama3.special_tokens.values())
    assert llama3.decode(literal) == text


def test_llama3_round_trip_and_digit_groups(llama3):
    assert llama3.decode(llama3.encode(MIXED)) == MIXED
    assert [llama3.decode([i]) for i in llama3.encode("1234567")] == ["123", "456", "7"]


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_llama3_round_trip_any_text(llama3, text):
    assert llama3.decode(llama3.encode(text)) == text


def test_llama3_decode_special_handling(llama3):
    ids = llama3.encode_special("<|begin_of_text|>Hi<|eot_id|>")
    assert llama3.decode(ids) == "Hi"
    assert llama3.decode(ids, skip_special=False) == "<|begin_of_text|>Hi<|eot_id|>"


def test_mistral_v1_round_trip_and_ids(mistral):
    sp = spm.SentencePieceProcessor(model_file=str(asset_path("mistral-v1-tokenizer")))
    assert (mistral.bos_id, mistral.eos_id, mistral.pad_id, mistral.vocab_size) == (1, 2, None, 32000)
    assert mistral.chat_template == "mistral"
    ids = mistral.encode(MIXED, bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and ids[1:-1] == sp.encode(MIXED)
    assert mistral.decode(ids) == MIXED


def test_sentencepiece_special_tokens(mistral):
    enc = mistral.encode
    assert mistral.encode_special("<s>[INST] hi [/INST] ok</s>") == [1, *enc("[INST] hi [/INST] ok"), 2]
    assert not {1, 2} & set(enc("<s> and </s> as text"))
    assert mistral.decode([1, *enc("Hello world"), 2], skip_special=False) == "<s>Hello world</s>"


def test_decode_rejects_unknown_ids(llama3, mistral):
    with pytest.raises(ValueError, match="token id 128256 is outside"):
        llama3.decode([1, 128256])
    with pytest.raises(ValueError, match="token id -1 is outside"):
        mistral.decode([-1])
    with pytest.raises(TypeError, match="encode expects str"):
        mistral.encode(b"bytes")


def _write_ranks(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_load_tokenizer_detects_file_kinds(tmp_path):
    ranks = _write_ranks(tmp_path / "ranks.model", [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)])
    tok = load_tokenizer(ranks)
    assert tok.vocab_size == 512 and tok.bos_id == 256  # 256 byte ranks + LLaMA-3's 256 specials
    assert tok.encode("ab") == [97, 98]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "tokenizer.model").write_bytes(asset_path("mistral-v1-tokenizer").read_bytes())
    assert load_tokenizer(tmp_path / "dir").vocab_size == 32000


def test_load_tokenizer_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.model does not exist"):
        load_tokenizer(tmp_path / "nothere.model")
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="corrupt.model is neither a tiktoken ranks file nor a SentencePiece"):
        load_tokenizer(corrupt)
    bad_line = _write_ranks(tmp_path / "bad.model", ["IQ== 0", "Ig== 1", "Iw== x"])
    with pytest.raises(ValueError, match=r"bad.model: not a tiktoken ranks file \(Error parsing line b'Iw== x'"):
        load_tokenizer(bad_line)
    gap = _write_ranks(tmp_path / "gap.model", ["IQ== 0", "Ig== 2"])
    with pytest.raises(ValueError, match="gap.model: ranks are not the distinct integers 0..1"):
        load_tokenizer(gap)
    few = _write_ranks(tmp_path / "few.model", [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(255)])
    with pytest.raises(ValueError, match="few.model: the ranks lack some of the 256 single bytes"):
        load_tokenizer(few)


def test_changed_ranks_file_is_reread(tmp_path):
    # tiktoken's loader caches files by path: a file rewritten in place must not come back stale.
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    path = _write_ranks(tmp_path / "r.model", lines)
    assert load_tokenizer(path).encode("ab") == [97, 98]
    _write_ranks(path, lines + [f"{base64.b64encode(b'ab').decode()} 256"])
    assert load_tokenizer(path).encode("ab") == [256]
