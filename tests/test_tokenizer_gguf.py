"""GGUF vocabularies: SmolLM2's real GPT-2-style BPE vocab, a SentencePiece vocab written to GGUF, bad files."""
import gguf
import pytest
import regex
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from common.assets import asset_path
from model.chat import encode_chat
from model.tokenizer import load_tokenizer, tokenizer_from_gguf
from model.tokenizer_gguf import read_gguf_metadata

pytestmark = pytest.mark.interop

MIXED = (
    "The quick brown fox, jumped over 13 lazy dogs in 2024!\n\n"
    "    indented   code: x = y[0] + 3.14159;\t# comment\r\n"
    "It's they're we'll I'd --- naïve café Ünïcödé Straße ²³ ½ "
    "中文字符 日本語 한국어 Ελληνικά Русский "
    "emoji 🎉🦉👩‍👩‍👧 and   trailing spaces   \n"
)


@pytest.fixture(scope="module")
def smollm_meta():
    return read_gguf_metadata(asset_path("smollm2-135m"))


@pytest.fixture(scope="module")
def smollm(smollm_meta):
    return tokenizer_from_gguf(asset_path("smollm2-135m"), metadata=smollm_meta)


@pytest.fixture(scope="module")
def smollm_vocab(smollm_meta):
    return smollm_meta["tokenizer.ggml.tokens"], smollm_meta["tokenizer.ggml.merges"]


def test_smollm_metadata(smollm):
    assert smollm.vocab_size == 49152
    assert smollm.bos_id is None  # add_bos_token is false in the GGUF
    assert smollm.eos_id == 2 and smollm.pad_id == 2  # <|im_end|>
    assert smollm.stop_ids == {0, 2}  # <|endoftext|>, <|im_end|>
    # The GGUF's own Jinja template, with the special-token strings it may refer to.
    assert smollm.chat_template.source.startswith("{% for message in messages %}")
    assert smollm.chat_template.tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                           "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}  # fmt: skip
    assert smollm.special_tokens["<|im_start|>"] == 1


def test_smollm_round_trip_mixed_text(smollm):
    ids = smollm.encode(MIXED)
    assert smollm.decode(ids) == MIXED
    assert len(ids) < len(MIXED.encode())  # merges happened: this is not a byte-level fallback


# SmolLM2's vocab lacks six control bytes and the UTF-8 lead bytes 0xF1/0xF2 (U+40000..U+BFFFF).
ENCODABLE = st.characters(
    max_codepoint=0x3FFFF, exclude_categories=("Cs",), exclude_characters="\x04\x06\x13\x14\x16\x1d"
)


@settings(max_examples=200, deadline=None)
@given(st.text(ENCODABLE, max_size=40))
def test_smollm_round_trip_any_text(smollm, text):
    assert smollm.decode(smollm.encode(text)) == text


def test_smollm_digits_are_split_one_by_one(smollm):
    ids = smollm.encode("year 2024")
    assert [smollm.decode([i]) for i in ids] == ["year", " ", "2", "0", "2", "4"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, written independently of the code under test."""
    keep = [b for b in range(256) if (33 <= b <= 126) or (161 <= b <= 172) or (174 <= b <= 255)]
    table = {b: chr(b) for b in keep}
    shifted = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + k) for k, b in enumerate(shifted)})
    return table


GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


def _split_keep_gaps(pattern: str, text: str) -> list[str]:
    """llama.cpp's regex split: matches are pieces, and so is each unmatched stretch between them."""
    pieces, end = [], 0
    for m in regex.finditer(pattern, text):
        pieces += [text[end : m.start()], m.group()]
        end = m.end()
    return [p for p in pieces + [text[end:]] if p]


def _smollm_pretokenize(text: str) -> list[str]:
    """The two-pass "smollm" split: every digit alone, then GPT-2's regex on the stretches in between."""
    return [p for part in _split_keep_gaps(r"\p{N}", text) for p in _split_keep_gaps(GPT2_SPLIT, part)]


def _brute_force_bpe(text: str, tokens: list[str], merges: list[str]) -> list[int]:
    rank = {tuple(m.split(" ")): n for n, m in enumerate(merges)}
    index = {t: i for i, t in enumerate(tokens)}
    table = _bytes_to_unicode()
    ids = []
    for piece in _smollm_pretokenize(text):
        symbols = [table[b] for b in piece.encode()]
        while len(symbols) > 1:
            pairs = [(rank.get(p, float("inf")), k) for k, p in enumerate(zip(symbols, symbols[1:]))]
            best, k = min(pairs)
            if best == float("inf"):
                break
            symbols[k : k + 2] = [symbols[k] + symbols[k + 1]]
        ids += [index[s] for s in symbols]
    return ids


@pytest.mark.parametrize(
    "text",
    ["Hello world, this is a simple sentence.", "The capital of France is Paris.", MIXED],
)
def test_smollm_ids_match_brute_force_bpe_from_merges(smollm, smollm_vocab, text):
    tokens, merges = smollm_vocab
    assert smollm.encode(text) == _brute_force_bpe(text, tokens, merges)


ALPHABET = st.sampled_from(list("ab Z'sltdm.,!?-_#9012²½ \n\t\r  é中🦉"))


@settings(max_examples=300, deadline=None)
@given(st.text(ALPHABET, max_size=24))
def test_smollm_pretokenizer_equals_two_pass_split(smollm, text):
    # Encoding the pieces of the reference split one by one must give the same ids as encoding the whole
    # text: any difference between our single regex and the two-pass split changes the ids.
    pieces = _smollm_pretokenize(text)
    assert "".join(pieces) == text
    assert smollm.encode(text) == [i for p in pieces for i in smollm.encode(p)]


def test_smollm_special_tokens_literal_vs_special(smollm):
    text = "<|im_start|>user\nHi<|im_end|>\n"
    assert smollm.encode_special(text)[0] == 1 and 2 in smollm.encode_special(text)
    assert 1 not in smollm.encode(text) and 2 not in smollm.encode(text)
    assert smollm.decode(smollm.encode_special(text)) == "user\nHi\n"
    assert smollm.decode(smollm.encode_special(text), skip_special=False) == text


def test_smollm_chat_encoding(smollm):
    ids = encode_chat(smollm, [{"role": "user", "content": "What is 2+2?"}])
    enc = smollm.encode
    system = "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default
    assert ids == [1, *enc(system), 2, *enc("\n"), 1, *enc("user\nWhat is 2+2?"), 2, *enc("\n"), 1, *enc("assistant\n")]


def test_smollm_rejects_bytes_missing_from_vocab(smollm):
    with pytest.raises(ValueError, match="byte 0x04"):
        smollm.encode("control \x04 char")


# --- GGUF files written here ---


def _write_vocab(path, model, tokens, types, **extra):
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model(model)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if "merges" in extra:
        w.add_token_merges(extra["merges"])
    if "scores" in extra:
        w.add_token_scores(extra["scores"])
    if "pre" in extra:
        w.add_tokenizer_pre(extra["pre"])
    w.add_bos_token_id(extra.get("bos", 1))
    w.add_eos_token_id(extra.get("eos", 2))
    if "unk" in extra:
        w.add_unk_token_id(extra["unk"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_sentencepiece_vocab_from_gguf_matches_original(tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(asset_path("mistral-v1-tokenizer")))
    n = sp.vocab_size()
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    path = _write_vocab(
        tmp_path / "sp.gguf", "llama", [sp.id_to_piece(i) for i in range(n)], types,
        scores=[sp.get_score(i) for i in range(n)], unk=0,
    )
    tok = load_tokenizer(path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, None, 32000)
    for text in ["Hello world", MIXED, "  leading spaces", "\x04 raw byte ", "[INST] x [/INST]"]:
        assert tok.encode(text, bos=True, eos=True) == sp.encode(text, add_bos=True, add_eos=True)
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text))


def _tiny_gpt2_vocab():
    table = _bytes_to_unicode()
    base = ["<|endoftext|>"] + [table[b] for b in range(256)]
    merges = ["h e", "l l", "he ll", "hell o"]
    return base + ["he", "ll", "hell", "hello"], [3] + [1] * 260, merges


def test_tiny_gpt2_vocab_from_gguf(tmp_path):
    tokens, types, merges = _tiny_gpt2_vocab()
    tok = tokenizer_from_gguf(_write_vocab(tmp_path / "v.gguf", "gpt2", tokens, types, merges=merges, bos=0, eos=0))
    assert tok.encode("hello hell") == [260, 1 + ord(" "), 259]
    assert tok.bos_id is None and tok.stop_ids == {0}
    assert tok.decode(tok.encode("hello\x00 wörld")) == "hello\x00 wörld"


def test_gguf_tokenizer_from_metadata_already_read(tmp_path):
    tokens, types, merges = _tiny_gpt2_vocab()
    meta = read_gguf_metadata(_write_vocab(tmp_path / "v.gguf", "gpt2", tokens, types, merges=merges))
    tok = tokenizer_from_gguf(tmp_path / "not-read-again.gguf", metadata=meta)
    assert tok.encode("hello") == [260] and tok.eos_id == 2


def test_gguf_merge_priority_is_the_stored_order_not_the_ids(tmp_path):
    table = _bytes_to_unicode()
    tokens = ["<|endoftext|>"] + [table[b] for b in range(256)] + ["he", "el"]  # "he" has the lower id
    types = [3] + [1] * 258

    def pieces(merges):
        tok = tokenizer_from_gguf(_write_vocab(tmp_path / "v.gguf", "gpt2", tokens, types, merges=merges))
        return [tok.decode([i]) for i in tok.encode("hel")]

    assert pieces(["h e", "e l"]) == ["he", "l"]
    assert pieces(["e l", "h e"]) == ["h", "el"]  # out of id order: the merges still decide


def test_gguf_bad_inputs(tmp_path):
    tokens, types, merges = _tiny_gpt2_vocab()
    with pytest.raises(ValueError, match="unsupported pre-tokenizer 'qwen9'"):
        tokenizer_from_gguf(_write_vocab(tmp_path / "a.gguf", "gpt2", tokens, types, merges=merges, pre="qwen9"))
    with pytest.raises(ValueError, match="unsupported tokenizer.ggml.model 'bert'"):
        tokenizer_from_gguf(_write_vocab(tmp_path / "b.gguf", "bert", tokens, types))
    with pytest.raises(ValueError, match="has no tokenizer.ggml.merges"):
        tokenizer_from_gguf(_write_vocab(tmp_path / "c.gguf", "gpt2", tokens, types))
    with pytest.raises(ValueError, match="tokenizer.ggml.merges do not fit tokenizer.ggml.tokens"):
        tokenizer_from_gguf(_write_vocab(tmp_path / "m.gguf", "gpt2", tokens, types, merges=[*merges, "x yz"]))
    with pytest.raises(ValueError, match="the vocabulary has duplicate tokens"):
        tokenizer_from_gguf(_write_vocab(tmp_path / "u.gguf", "gpt2", [*tokens, "he"], [*types, 1], merges=merges))
    with pytest.raises(ValueError, match="eos_token_id 999 is outside"):
        tokenizer_from_gguf(_write_vocab(tmp_path / "d.gguf", "gpt2", tokens, types, merges=merges, eos=999))
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(ValueError, match="corrupt.gguf: not a readable GGUF file"):
        tokenizer_from_gguf(corrupt)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        tokenizer_from_gguf(tmp_path / "missing.gguf")
