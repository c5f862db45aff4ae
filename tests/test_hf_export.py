"""HF export: transformers loads the folder with our tokenizer ids, our chat prompts and our logits."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from common.assets import asset_path  # noqa: E402
from model import Transformer, get_config, load_model, save_model  # noqa: E402
from model.chat import encode_chat, render_chat  # noqa: E402
from model.tokenizer import load_tokenizer, tokenizer_from_gguf  # noqa: E402

pytestmark = pytest.mark.interop

CORPUS = [
    "This is a test sentence.",
    "Mixed text: 1234567 apples, naïve café 中文 🎉🦉\n\n\tindented  code();  trailing  \n",
    " leading space", "  two  spaces", "", "a\u00a0b  \r\n x", "It's they're we'll I'd --- Straße ²³ ½ 日本語 한국어",
    "<s>[INST] hi [/INST] there </s><s>", "<unk> and </s> inline",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
]  # fmt: skip
DIALOGS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there "},
     {"role": "assistant", "content": " Hello!"}, {"role": "user", "content": "Name a colour.\n"}],
]  # fmt: skip
TOKENIZERS = {
    "llama3-tiktoken": lambda: load_tokenizer(asset_path("llama3-tokenizer")),
    "mistral-v1-sentencepiece": lambda: load_tokenizer(asset_path("mistral-v1-tokenizer"), chat_template="mistral"),
    "llama2-format-sentencepiece": lambda: load_tokenizer(asset_path("mistral-v1-tokenizer")),
    "smollm2-gguf": lambda: tokenizer_from_gguf(asset_path("smollm2-135m")),
}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def exported(request, tmp_path_factory):
    """(our tokenizer, the export folder) for a tiny random model with that tokenizer's vocabulary."""
    ours = TOKENIZERS[request.param]()
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", vocab_size=ours.vocab_size, dim=32, n_layers=1)).eval()
    out = tmp_path_factory.mktemp(request.param)
    save_model(model, out, format="hf", tokenizer=ours)
    return ours, out


def test_transformers_tokenizer_ids_equal_ours(exported):
    ours, out = exported
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in CORPUS:
        assert theirs(text, add_special_tokens=False).input_ids == ours.encode_special(text), text
        assert theirs(text).input_ids == ours.encode_special(text, bos=True), text
        ids = ours.encode(text)
        assert theirs.decode(ids) == ours.decode(ids), text
    assert theirs.eos_token_id == ours.eos_id
    assert theirs.bos_token_id == ours.bos_id or ours.bos_id is None
    assert theirs.pad_token_id == ours.pad_id


def test_transformers_chat_template_equals_ours(exported):
    ours, out = exported
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for dialog in DIALOGS:
        for prompt in (True, False):
            text = theirs.apply_chat_template(dialog, tokenize=False, add_generation_prompt=prompt)
            assert text == render_chat(dialog, ours.chat_template, prompt)
            ids = theirs.apply_chat_template(dialog, tokenize=True, add_generation_prompt=prompt, return_dict=False)
            assert list(ids) == encode_chat(ours, dialog, prompt)


def test_generation_config_and_config_ids(exported):
    ours, out = exported
    generation = transformers.GenerationConfig.from_pretrained(out)
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    assert eos[0] == ours.eos_id and set(eos) == ours.stop_ids
    assert generation.bos_token_id == ours.bos_id
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == generation.eos_token_id and config.get("bos_token_id") == ours.bos_id


def test_export_reloads_with_the_same_tokenizer(exported):
    ours, out = exported
    _, reloaded = load_model(out)
    for text in CORPUS:
        assert reloaded.encode_special(text, bos=True) == ours.encode_special(text, bos=True)
        assert reloaded.encode(text) == ours.encode(text)
    assert (reloaded.bos_id, reloaded.eos_id, reloaded.pad_id, reloaded.stop_ids) == (
        ours.bos_id, ours.eos_id, ours.pad_id, ours.stop_ids)  # fmt: skip
    for dialog in DIALOGS:
        assert encode_chat(reloaded, dialog) == encode_chat(ours, dialog)


def test_smollm2_prompt_has_its_default_system_prompt():
    smollm = tokenizer_from_gguf(asset_path("smollm2-135m"))
    text = render_chat(DIALOGS[0], smollm.chat_template)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


@pytest.mark.parametrize("name, overrides, cls", [
    ("tiny", {}, "LlamaForCausalLM"),
    ("tiny-tied", {}, "LlamaForCausalLM"),
    ("tiny", {"rope_theta": 500000.0, "rope_scaling": get_config("llama3.1-8b").rope_scaling}, "LlamaForCausalLM"),
    ("tiny", {"sliding_window": 6, "family": "mistral"}, "MistralForCausalLM"),
])  # fmt: skip
def test_transformers_logits_equal_ours(tmp_path, name, overrides, cls):
    torch.manual_seed(1)
    model = Transformer(get_config(name, **overrides)).eval()
    with torch.no_grad():  # larger q/k so that attention (and so the RoPE layout) decides the logits
        for layer in model.layers:
            layer.attention.wq.weight.mul_(8)
            layer.attention.wk.weight.mul_(8)
    save_model(model, tmp_path, format="hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(theirs).__name__ == cls
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, model(tokens), atol=2e-5, rtol=1e-4)


def test_bf16_model_is_written_as_bf16(tmp_path):
    model = Transformer(get_config("tiny")).to(torch.bfloat16)
    save_model(model, tmp_path, format="hf")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    assert theirs.dtype == torch.bfloat16


def test_hf_source_folder_files_are_copied_as_they_are(exported, tmp_path):
    ours, source = exported
    model, tokenizer = load_model(source)
    save_model(model, tmp_path, format="hf", tokenizer=tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / name).read_bytes() == (source / name).read_bytes(), name


def test_bad_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a readable tokenizer.json"):
        load_tokenizer(tmp_path)


def test_llama3_instruct_style_hf_folder(tmp_path):
    """tokenizer.json only, eos <|eot_id|>, a Jinja template and generation_config's stop list (LLaMA-3-Instruct)."""
    llama3 = load_tokenizer(asset_path("llama3-tokenizer"))
    torch.manual_seed(0)
    save_model(Transformer(get_config("tiny", vocab_size=llama3.vocab_size, dim=32, n_layers=1)), tmp_path,
               format="hf", tokenizer=llama3)  # fmt: skip
    source = (
        "{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
        " + m['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    )
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(eos_token="<|eot_id|>", chat_template=source)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": [128001, 128009]}))
    assert not (tmp_path / "tokenizer.model").exists()
    _, ours = load_model(tmp_path)
    assert ours.chat_template.source == source and ours.chat_template.tokens["bos_token"] == "<|begin_of_text|>"
    assert (ours.bos_id, ours.eos_id) == (128000, 128009) and ours.stop_ids == {128001, 128008, 128009}
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for dialog in DIALOGS:
        ids = theirs.apply_chat_template(dialog, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert list(ids) == encode_chat(ours, dialog)


def test_bos_read_from_a_post_processor_that_also_appends_eos(tmp_path):
    from tokenizers import processors

    from model.tokenizer_json import to_tokenizers

    sp = load_tokenizer(asset_path("mistral-v1-tokenizer"))
    converted = to_tokenizers(sp)
    converted.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    converted.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    ours = load_tokenizer(tmp_path)
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    assert ours.encode("Hello world", bos=True) == sp.encode("Hello world", bos=True)
