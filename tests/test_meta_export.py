"""Meta export: params.json exactly as Meta's (Mistral's) files, the FFN size through Meta's formula, shards."""
import dataclasses
import importlib.util
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from common.assets import asset_path
from model import Transformer, get_config, load_model, save_model
from model.config import CONFIGS, meta_ffn_dim
from model.meta_format import config_from_params, meta_ffn_args, params_from_config
from model.tokenizer import load_tokenizer

# The params.json files of Meta's and Mistral's releases (vocab_size: Meta writes -1 for LLaMA-2; we write the size).
RELEASED = {
    "llama2-7b": {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": 32000},
    "llama2-13b": {"dim": 5120, "multiple_of": 256, "n_heads": 40, "n_layers": 40, "norm_eps": 1e-05, "vocab_size": 32000},
    "llama2-70b": {"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64, "n_kv_heads": 8,
                   "n_layers": 80, "norm_eps": 1e-05, "vocab_size": 32000},
    "llama3-8b": {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024,
                  "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0},
    "llama3.1-8b": {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                    "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0,
                    "use_scaled_rope": True},
}  # fmt: skip
MISTRAL_7B_V01 = {"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8,
                  "norm_eps": 1e-05, "sliding_window": 4096, "vocab_size": 32000}  # fmt: skip
META_MODEL_ARGS = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
                   "norm_eps", "rope_theta", "use_scaled_rope", "max_batch_size", "max_seq_len"}  # fmt: skip


def metas_model_args():
    """ModelArgs of Meta's own code (llama-models 0.3.0, llama_models/llama3/args.py), loaded from the asset."""
    spec = importlib.util.spec_from_file_location("meta_llama3_args", asset_path("llama3-model-args"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelArgs


@pytest.mark.parametrize("name", list(RELEASED))
def test_metas_model_args_know_every_key_we_write(name, tmp_path):
    """Meta's ModelArgs silently ignores keys it does not know: every key we write must be one of its fields."""
    fields = {f.name for f in dataclasses.fields(metas_model_args())}
    assert set(params_from_config(CONFIGS[name])) <= fields
    save_model(Transformer(get_config("tiny")), tmp_path / "m", format="meta")  # the writer's own params.json
    assert set(json.loads((tmp_path / "m" / "params.json").read_text())) <= fields


@pytest.mark.parametrize("name", ["llama3-8b", "llama3.1-8b"])
def test_metas_llama3_model_args_get_the_configs_values(name):
    """The values Meta's LLaMA-3 code ends up with are the config's; its FeedForward then gives our FFN size.
    (LLaMA-2 files carry no rope_theta, as Meta's released ones: Meta's LLaMA-2 code has no such field and
    uses 10000, while this LLaMA-3 ModelArgs would default to 500000.)"""
    config = CONFIGS[name]
    args = metas_model_args()(**params_from_config(config))
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.norm_eps, args.vocab_size) == (
        config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.norm_eps, config.vocab_size)
    assert args.rope_theta == config.rope_theta and args.use_scaled_rope == (config.rope_scaling is not None)
    assert meta_ffn_dim(args.dim, args.multiple_of, args.ffn_dim_multiplier) == config.ffn_dim


@pytest.mark.parametrize("name", list(RELEASED))
def test_params_are_metas_own(name):
    params = params_from_config(CONFIGS[name])
    assert params == RELEASED[name]
    assert set(params) <= META_MODEL_ARGS
    assert meta_ffn_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier")) == CONFIGS[name].ffn_dim


def test_mistral_params_are_mistrals_own():
    assert params_from_config(CONFIGS["mistral-7b"]) == MISTRAL_7B_V01


@given(st.integers(8, 2048).map(lambda d: d * 2), st.integers(1, 20000))
def test_any_ffn_size_round_trips_through_metas_formula(dim, ffn_dim):
    multiple_of, multiplier = meta_ffn_args(dim, ffn_dim)
    assert meta_ffn_dim(dim, multiple_of, multiplier) == ffn_dim


def test_meta_folder_reloads_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", vocab_size=32000)).eval()
    save_model(model, tmp_path, format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    assert set(json.loads((tmp_path / "params.json").read_text())) <= META_MODEL_ARGS
    assert (tmp_path / "tokenizer.model").read_bytes() == asset_path("mistral-v1-tokenizer").read_bytes()
    loaded, tokenizer = load_model(tmp_path)
    assert loaded.config.ffn_dim == model.config.ffn_dim and tokenizer.vocab_size == 32000
    tokens = torch.randint(0, 32000, (1, 16))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


@pytest.mark.parametrize("vocab, split_axis", [(256, 1), (128256, 0)])  # LLaMA-2 splits the width, LLaMA-3 the vocab
def test_meta_model_parallel_shards(tmp_path, vocab, split_axis):
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", vocab_size=vocab, dim=32)).eval()
    save_model(model, tmp_path, format="meta", meta_shards=2)
    shards = [torch.load(tmp_path / f"consolidated.0{i}.pth", weights_only=True) for i in range(2)]
    full = model.tok_embeddings.weight.shape
    assert shards[0]["tok_embeddings.weight"].shape[split_axis] == full[split_axis] // 2
    assert torch.equal(shards[0]["norm.weight"], shards[1]["norm.weight"])  # norms are replicated
    loaded, _ = load_model(tmp_path)
    tokens = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def test_meta_shards_must_divide_the_heads(tmp_path):
    with pytest.raises(ValueError, match="3 model-parallel shards"):
        save_model(Transformer(get_config("tiny")), tmp_path, format="meta", meta_shards=3)


def test_config_from_params_reads_metas_keys():
    for name, params in RELEASED.items():
        config = config_from_params({**params, "vocab_size": -1} if name.startswith("llama2") else params, name,
                                    tokenizer_vocab=32000)  # fmt: skip
        want = CONFIGS[name]
        assert (config.ffn_dim, config.n_kv_heads, config.rope_theta, config.rope_scaling) == (
            want.ffn_dim, want.n_kv_heads, want.rope_theta, want.rope_scaling)  # fmt: skip


@pytest.mark.slow
def test_llama3_hf_folder_to_meta_writes_metas_tiktoken_file(tmp_path):
    llama3 = load_tokenizer(asset_path("llama3-tokenizer"))
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", vocab_size=llama3.vocab_size, dim=32, n_layers=1, rope_theta=500000.0))
    save_model(model, tmp_path / "hf", format="hf", tokenizer=llama3)  # tokenizer.json only, no tokenizer.model
    loaded, from_hf = load_model(tmp_path / "hf")
    save_model(loaded, tmp_path / "meta", format="meta", tokenizer=from_hf)
    assert (tmp_path / "meta" / "tokenizer.model").read_bytes() == asset_path("llama3-tokenizer").read_bytes()
