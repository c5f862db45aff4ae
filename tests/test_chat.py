"""Chat formats: exact prompt strings, and ids equal to the turn-by-turn encodings of the reference recipes."""
import pytest

from common.assets import asset_path
from model.chat import encode_chat, render_chat
from model.tokenizer import load_tokenizer

DIALOG = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there "},
    {"role": "assistant", "content": " Hello!"},
    {"role": "user", "content": "2+2?"},
]


def test_llama2_string():
    assert render_chat(DIALOG, "llama2") == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! </s><s>[INST] 2+2? [/INST]"
    )
    assert render_chat(DIALOG[1:3], "llama2", add_generation_prompt=False) == "<s>[INST] Hi there [/INST] Hello! </s>"


def test_mistral_string():
    assert render_chat(DIALOG, "mistral") == (
        "<s>[INST] Be brief.\n\nHi there  [/INST]  Hello!</s>[INST] 2+2? [/INST]"
    )


def test_llama3_string():
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert render_chat(DIALOG, "llama3") == (
        "<|begin_of_text|>"
        + header.format("system") + "Be brief.<|eot_id|>"
        + header.format("user") + "Hi there<|eot_id|>"
        + header.format("assistant") + "Hello!<|eot_id|>"
        + header.format("user") + "2+2?<|eot_id|>"
        + header.format("assistant")
    )
    no_prompt = render_chat(DIALOG[1:2], "llama3", add_generation_prompt=False)
    assert no_prompt == "<|begin_of_text|>" + header.format("user") + "Hi there<|eot_id|>"


def test_chatml_string():
    assert render_chat(DIALOG, "chatml") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there <|im_end|>\n"
        "<|im_start|>assistant\n Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chat(DIALOG[1:2], "chatml", add_generation_prompt=False) == "<|im_start|>user\nHi there <|im_end|>\n"


@pytest.mark.parametrize(
    "messages, template, match",
    [
        (DIALOG, "vicuna", "unknown chat template 'vicuna'"),
        ([], "chatml", "at least one message"),
        ([{"role": "tool", "content": "x"}], "llama3", "message 0 has role 'tool'"),
        ([{"role": "user"}], "chatml", "message 0 must be a dict with a string 'content'"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "chatml", "may only come first"),
        ([{"role": "assistant", "content": "a"}], "llama2", "turn 0 has role 'assistant'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "mistral", "turn 1 has role 'user'"),
        ([{"role": "system", "content": "a"}], "llama2", "at least one user message"),
    ],
)
def test_bad_chats(messages, template, match):
    with pytest.raises(ValueError, match=match):
        render_chat(messages, template)


def test_llama2_ids_match_meta_turn_by_turn_encoding():
    tok = load_tokenizer(asset_path("mistral-v1-tokenizer"))  # any SentencePiece vocab; template llama2
    enc = tok.encode
    first = "<<SYS>>\nBe brief.\n<</SYS>>\n\nHi there"
    expected = enc(f"[INST] {first} [/INST] Hello! ", bos=True, eos=True) + enc("[INST] 2+2? [/INST]", bos=True)
    assert encode_chat(tok, DIALOG) == expected


def test_mistral_ids_match_mistral_common_v1_encoding():
    tok = load_tokenizer(asset_path("mistral-v1-tokenizer"), chat_template="mistral")
    enc = tok.encode
    expected = [1, *enc("[INST] Be brief.\n\nHi there  [/INST]"), *enc(" Hello!"), 2, *enc("[INST] 2+2? [/INST]")]
    assert encode_chat(tok, DIALOG) == expected


def test_llama3_ids_match_meta_chat_format():
    tok = load_tokenizer(asset_path("llama3-tokenizer"))
    sp, enc = tok.special_tokens, tok.encode

    def header(role):
        return [sp["<|start_header_id|>"], *enc(role), sp["<|end_header_id|>"], *enc("\n\n")]

    expected = [sp["<|begin_of_text|>"]]
    for m in DIALOG:
        expected += header(m["role"]) + enc(m["content"].strip()) + [sp["<|eot_id|>"]]
    expected += header("assistant")
    assert encode_chat(tok, DIALOG) == expected
