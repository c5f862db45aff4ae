"""The model family is stated in ModelConfig.family and read from / written to each format's own field."""
import json

import pytest

from model.config import CONFIGS, get_config
from model.families import FAMILIES
from model.gguf_format import config_from_gguf
from model.hf_format import config_from_hf, hf_config_from
from model.meta_format import config_from_params, params_from_config


def test_named_configs_state_their_family():
    assert CONFIGS["mistral-7b"].family == "mistral"
    assert {CONFIGS[n].family for n in ("llama2-7b", "llama3-8b", "llama3.1-8b", "smollm2-135m")} == {"llama"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hf_config_json_carries_the_family(family):
    config = get_config("tiny", family=family)
    cfg = hf_config_from(config)
    assert cfg["model_type"] == family and cfg["architectures"] == [FAMILIES[family].hf_architecture]
    assert config_from_hf(cfg, "x").family == family


def test_hf_family_is_read_not_guessed_from_the_window():
    cfg = hf_config_from(get_config("tiny", family="mistral"))
    assert cfg.get("sliding_window") is None  # Mistral v0.2/v0.3: no window, still Mistral
    assert config_from_hf(cfg, "x").family == "mistral"
    cfg["model_type"] = "gemma"
    with pytest.raises(ValueError, match="model_type 'gemma' is not supported"):
        config_from_hf(cfg, "x")


def test_meta_params_window_is_mistrals_own_sign():
    windowed = get_config("tiny", family="mistral", sliding_window=8)
    assert config_from_params(params_from_config(windowed), "x").family == "mistral"
    assert config_from_params(params_from_config(get_config("tiny")), "x").family == "llama"


def test_gguf_architecture_names_the_family():
    meta = {"general.architecture": "llama", "llama.embedding_length": 64, "llama.block_count": 2,
            "llama.attention.head_count": 4, "llama.feed_forward_length": 160}  # fmt: skip
    assert config_from_gguf(meta, {"token_embd.weight": (256, 64)}, "x").family == "llama"
    meta = {k.replace("llama", "falcon"): v for k, v in meta.items()}
    meta["general.architecture"] = "falcon"
    with pytest.raises(ValueError, match="GGUF architecture 'falcon' is not supported"):
        config_from_gguf(meta, {"token_embd.weight": (256, 64)}, "x")


def test_unknown_family_and_unsupported_features_are_refused():
    with pytest.raises(ValueError, match="unknown model family 'gpt2'"):
        get_config("tiny", family="gpt2")
    with pytest.raises(ValueError, match="family 'llama' has no sliding-window attention"):
        get_config("tiny", sliding_window=4)
    assert get_config("tiny", family="mistral", sliding_window=4).sliding_window == 4


def test_a_family_declared_in_a_test_works_in_every_format(tmp_path, monkeypatch):
    """The extension point: one Family, no other edit; HF, Meta and GGUF name it and read it back."""
    import torch

    from model import Transformer, load_model, save_model
    from model.families import Family
    from model.families.llama import NAMES

    toy = Family("toy", "toy_lm", "ToyForCausalLM", "toy", "chatml", NAMES, rotate_half=frozenset({"hf", "gguf"}),
                 qkv_bias=True, meta_params="mistral")  # fmt: skip
    monkeypatch.setitem(FAMILIES, "toy", toy)
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", family="toy")).eval()
    with torch.no_grad():
        model.layers[0].attention.wk.bias.normal_()
    tokens = torch.randint(0, 256, (1, 12))
    for fmt in ("hf", "meta", "gguf"):
        save_model(model, tmp_path / fmt, format=fmt, gguf_type="F32")
        path = tmp_path / fmt / "model.gguf" if fmt == "gguf" else tmp_path / fmt
        loaded, _ = load_model(path)
        assert loaded.config.family == "toy", fmt
        with torch.no_grad():
            assert torch.equal(loaded(tokens), model(tokens)), fmt
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "toy_lm"
