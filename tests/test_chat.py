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


# ---- the checkpoint's own Jinja template, rendered as transformers' apply_chat_template renders it ----

# In the style of Mistral-Instruct's and LLaMA-3.1's HF templates: whitespace control, raise_exception,
# bos/eos variables, a default system prompt with a date, tojson, loop controls.
MISTRAL_LIKE = (
    "{{- bos_token }}\n{%- for message in messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n        {{- '[INST] ' + message['content'] + ' [/INST]' }}\n"
    "    {%- else %}\n        {{- ' ' + message['content'] + eos_token }}\n    {%- endif %}\n{%- endfor %}\n"
)
LLAMA31_LIKE = (
    "{{- bos_token }}\n{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system = messages[0]['content'] | trim %}\n"
    "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system = '' %}\n{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}\n"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}\n"
    "{{- system }}{{- '<|eot_id|>' }}\n"
    "{%- for message in messages %}\n    {%- if message['content'] == 'skip me' %}{% continue %}{% endif %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim }}\n"
    "    {{- ' ' + {'n': message['role'], 'x': 'é'} | tojson }}{{- '<|eot_id|>' }}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"
)


@pytest.fixture(scope="module")
def hf_llama3(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from model.tokenizer_json import write_hf_tokenizer

    out = tmp_path_factory.mktemp("llama3-tok")
    write_hf_tokenizer(load_tokenizer(asset_path("llama3-tokenizer")), out, max_length=8192)
    return transformers.AutoTokenizer.from_pretrained(out)


@pytest.mark.interop
@pytest.mark.parametrize("source", [MISTRAL_LIKE, LLAMA31_LIKE])
def test_jinja_template_equals_apply_chat_template(hf_llama3, source):
    from model.chat import ChatTemplate

    template = ChatTemplate(source, {"bos_token": hf_llama3.bos_token, "eos_token": hf_llama3.eos_token})
    dialogs = [DIALOG[1:], DIALOG[1:3], [*DIALOG, {"role": "assistant", "content": "skip me"}]]
    for dialog in dialogs:
        if source is MISTRAL_LIKE and dialog[0]["role"] == "system":
            continue
        for prompt in (True, False):
            theirs = hf_llama3.apply_chat_template(dialog, chat_template=source, tokenize=False,
                                                   add_generation_prompt=prompt)  # fmt: skip
            assert render_chat(dialog, template, prompt) == theirs


def test_jinja_template_errors_and_sandbox():
    from model.chat import ChatTemplate

    with pytest.raises(ValueError, match="refused the conversation: Conversation roles must alternate"):
        render_chat([{"role": "assistant", "content": "a"}], ChatTemplate(MISTRAL_LIKE))
    with pytest.raises(ValueError, match="refused the conversation"):  # the sandbox blocks attribute escapes
        render_chat(DIALOG, ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}"))
    with pytest.raises(ValueError, match="does not compile"):
        render_chat(DIALOG, ChatTemplate("{% for %}"))
