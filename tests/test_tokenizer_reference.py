"""GGUF byte-level BPE vocabularies against `tokenizers` built the way the model's own tokenizer.json is:
SmolLM2's GGUF vs SmolLM2's tokenizer.json layout, a trained Qwen2-layout tokenizer through a GGUF export."""
import gguf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from common.assets import asset_path
from model import Transformer, get_config, load_model, save_model
from model.tokenizer import load_tokenizer, tokenizer_from_gguf
from model.tokenizer_gguf import read_gguf_metadata

pytestmark = pytest.mark.interop

# Qwen2's tokenizer.json split regex (llama.cpp's "qwen2": digits one by one, unlike LLaMA-3's runs of 3).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEXTS = [
    "Hello world, this is a test.", "year 2024: 1234567 apples", "It's they'RE we'll I'd --- naïve café",
    "中文字符 日本語 한국어 Ελληνικά Русский", "emoji 🎉🦉👩‍👩‍👧 and   trailing spaces   \n",
    "def f(x):\n    return x**2  # sq\r\n\r\n\tpass", "<|im_start|>user\nhi<|im_end|>\n", "  ", "",
]  # fmt: skip


@pytest.fixture(scope="module")
def smollm_pair():
    """(our GGUF tokenizer, SmolLM2's tokenizer.json layout over the same vocab and merges)."""
    meta = read_gguf_metadata(asset_path("smollm2-135m"))
    tokens, merges, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"], meta["tokenizer.ggml.token_type"]
    reference = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ")) for m in merges]))
    # HuggingFaceTB/SmolLM2's tokenizer.json: every digit alone, then GPT-2's byte-level regex split.
    reference.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    reference.decoder = decoders.ByteLevel()
    reference.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty != 1])
    return tokenizer_from_gguf(asset_path("smollm2-135m"), metadata=meta), reference


# SmolLM2's vocab lacks six control bytes and the UTF-8 lead bytes 0xF1/0xF2 (U+40000..U+BFFFF).
ENCODABLE = st.characters(max_codepoint=0x3FFFF, exclude_categories=("Cs",), exclude_characters="\x04\x06\x13\x14\x16\x1d")


@settings(max_examples=300, deadline=None)
@given(st.text(ENCODABLE, max_size=60))
def test_smollm2_gguf_equals_its_tokenizer_json_layout(smollm_pair, text):
    ours, reference = smollm_pair
    reference.encode_special_tokens = True
    assert ours.encode(text) == reference.encode(text).ids


def test_smollm2_gguf_special_tokens_equal_reference(smollm_pair):
    ours, reference = smollm_pair
    reference.encode_special_tokens = False
    for text in TEXTS:
        assert ours.encode_special(text) == reference.encode(text).ids, text


def _qwen2_layout_folder(path):
    """A byte-level BPE trained here in Qwen2's tokenizer.json layout (NFC, its split regex, ChatML specials)."""
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # fmt: skip
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tk.train_from_iterator(TEXTS * 20 + ["the quick brown fox jumps over the lazy dog 0123456789"] * 20, trainer)
    path.mkdir()
    tk.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}')
    return load_tokenizer(path)


def test_qwen2_gguf_export_writes_qwen2_pre_tokenizer_and_same_ids(tmp_path):
    ours = _qwen2_layout_folder(tmp_path / "tok")
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", family="qwen2", vocab_size=ours.vocab_size, dim=32, n_layers=1))
    save_model(model, tmp_path / "out", format="gguf", gguf_type="F32", tokenizer=ours)
    fields = gguf.GGUFReader(tmp_path / "out" / "model.gguf").fields
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    _, again = load_model(tmp_path / "out" / "model.gguf")
    assert (again.bos_id, again.eos_id, again.pad_id, again.stop_ids) == (ours.bos_id, ours.eos_id, ours.pad_id, ours.stop_ids)
    for text in TEXTS + ["x 12345 y", "\n\n\n  a"]:
        assert again.encode(text) == ours.encode(text), text
        assert again.encode_special(text) == ours.encode_special(text), text
    assert [again.decode([i]) for i in again.encode("2024")] == ["2", "0", "2", "4"]


def test_tokenizer_json_without_a_llama_cpp_pre_tokenizer_is_refused(tmp_path):
    tk = Tokenizer(models.BPE({"a": 0, "</s>": 1}, []))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tk.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    model = Transformer(get_config("tiny", vocab_size=2, dim=32, n_layers=1))
    with pytest.raises(ValueError, match="or a byte-level BPE one whose pre-tokenizer llama.cpp knows, not this HFTokenizer"):
        save_model(model, tmp_path / "out", format="gguf", tokenizer=load_tokenizer(tmp_path / "tok"))
