import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.torch import load_file, save_file

from common.assets import asset_path, cache_dir
from model import Transformer, get_config, load_model, save_model
from model.config import meta_ffn_dim
from model.hf_format import config_from_hf
from model.meta_format import config_from_params, params_from_config, write_meta_dir
from model.tensor_names import from_ours

pytestmark = pytest.mark.interop

TOKENS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def tiny(name="tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    return Transformer(get_config(name, **overrides)).eval()


def logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize("n_shards,embedding_dim", [(1, 1), (2, 1), (2, 0)])
def test_meta_shards_round_trip(tmp_path, n_shards, embedding_dim):
    model = tiny()
    write_meta_dir(model.state_dict(), model.config, tmp_path, n_shards=n_shards, embedding_dim=embedding_dim)
    assert len(list(tmp_path.glob("consolidated.*.pth"))) == n_shards
    shard0 = torch.load(tmp_path / "consolidated.00.pth", weights_only=True)
    if n_shards == 2:  # really split: LLaMA-2 splits the embedding width, LLaMA-3 the vocabulary
        assert shard0["tok_embeddings.weight"].shape == ((256, 32) if embedding_dim == 1 else (128, 64))
        assert shard0["layers.0.attention.wo.weight"].shape == (64, 32)
    loaded, tokenizer = load_model(tmp_path)
    assert tokenizer is None
    assert torch.equal(logits(loaded), logits(model))


def test_meta_llama2_params_vocab_from_tokenizer(tmp_path):
    model = tiny(vocab_size=32000)
    write_meta_dir(model.state_dict(), model.config, tmp_path)
    state = torch.load(tmp_path / "consolidated.00.pth", weights_only=True)
    state["rope.freqs"] = torch.zeros(8)  # official LLaMA-2 extra key, dropped by name
    torch.save(state, tmp_path / "consolidated.00.pth")
    # LLaMA-2 style params.json: vocab -1, multiple_of instead of hidden_dim, no rope_theta.
    params = {"dim": 64, "multiple_of": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "norm_eps": 1e-5, "vocab_size": -1}
    assert meta_ffn_dim(64, 32) == 192
    (tmp_path / "params.json").write_text(json.dumps(params))
    state = {k: v for k, v in state.items() if "feed_forward" not in k}
    torch.manual_seed(1)
    for i in range(2):
        for w, shape in (("w1", (192, 64)), ("w2", (64, 192)), ("w3", (192, 64))):
            state[f"layers.{i}.feed_forward.{w}.weight"] = torch.randn(shape) * 0.02
    torch.save(state, tmp_path / "consolidated.00.pth")
    (tmp_path / "tokenizer.model").write_bytes(asset_path("mistral-v1-tokenizer").read_bytes())
    loaded, tokenizer = load_model(tmp_path)
    assert loaded.config.vocab_size == tokenizer.vocab_size == 32000
    assert loaded.config.ffn_dim == 192 and loaded.config.rope_theta == 10000.0
    assert tokenizer.decode(tokenizer.encode("Hello world")) == "Hello world"
    assert tokenizer.chat_template == "llama2"  # Meta params.json: no Mistral sign


def test_mistral_safetensors_with_short_sliding_window(tmp_path):
    model = tiny(sliding_window=6, family="mistral")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "consolidated.safetensors")
    params = {"dim": 64, "n_layers": 2, "head_dim": 16, "hidden_dim": 160, "n_heads": 4, "n_kv_heads": 2,
              "norm_eps": 1e-5, "sliding_window": 6, "vocab_size": 256, "max_seq_len": 128}  # fmt: skip
    (tmp_path / "params.json").write_text(json.dumps(params))
    loaded, _ = load_model(tmp_path)
    assert loaded.config.sliding_window == 6
    assert torch.equal(logits(loaded), logits(model))
    assert not torch.allclose(logits(loaded), logits(tiny()))  # the window (< 24 tokens) matters


def test_mistral_checkpoints_get_the_mistral_chat_template(tmp_path):
    spm_file = asset_path("mistral-v1-tokenizer").read_bytes()
    windowed, plain = tiny(sliding_window=6, family="mistral"), tiny()
    cases = {  # directory -> (model, tokenizer file name, format, expected template)
        "meta-window": (windowed, "tokenizer.model", "meta", "mistral"),  # Mistral 7B v0.1 params.json
        "meta-v1-name": (plain, "tokenizer.model.v1", "meta", "mistral"),  # Mistral's file name, no window
        "hf-window": (windowed, "tokenizer.model", "hf", "mistral"),  # HF model_type "mistral" (the family)
        "meta-llama": (plain, "tokenizer.model", "meta", "llama2"),  # our own LLaMA save: head_dim, hidden_dim
        "hf-llama": (plain, "tokenizer.model", "hf", "llama2"),
    }
    for name, (model, file_name, fmt, template) in cases.items():
        save_model(model, tmp_path / name, format=fmt)
        (tmp_path / name / file_name).write_bytes(spm_file)
        _, tokenizer = load_model(tmp_path / name)
        assert tokenizer.chat_template == template, name
    config = json.loads((tmp_path / "hf-window" / "config.json").read_text())
    config["sliding_window"] = None  # as in Mistral 7B v0.2/v0.3 on the HF hub
    (tmp_path / "hf-window" / "config.json").write_text(json.dumps(config))
    _, tokenizer = load_model(tmp_path / "hf-window")
    assert tokenizer.chat_template == "mistral"
    # Saving keeps the Mistral sign: a model without a window reloads as Mistral from the file name.
    save_model(plain, tmp_path / "resaved", tokenizer=tokenizer)
    assert (tmp_path / "resaved" / "tokenizer.model.v1").is_file()
    assert load_model(tmp_path / "resaved")[1].chat_template == "mistral"


@pytest.mark.parametrize("name", ["tiny", "tiny-tied"])
def test_save_load_round_trips(tmp_path, name):
    model = tiny(name)
    for fmt in ("meta", "hf"):
        save_model(model, tmp_path / fmt, format=fmt)
        loaded, _ = load_model(tmp_path / fmt)
        assert torch.equal(logits(loaded), logits(model))
        assert (loaded.output.weight is loaded.tok_embeddings.weight) == (name == "tiny-tied")
        assert loaded.rope.dtype == torch.float32 and not loaded.rope.is_meta


def test_hf_sharded_index_gqa_tied(tmp_path):
    model = tiny("tiny-tied")
    save_model(model, tmp_path, format="hf", max_shard_bytes=40_000)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert "lm_head.weight" not in index["weight_map"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tie_word_embeddings"] and config["num_key_value_heads"] == 2
    loaded, _ = load_model(tmp_path, dtype=torch.bfloat16)
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16
    torch.testing.assert_close(logits(loaded), logits(model), atol=0.05, rtol=0.05)


def rotate_half_forward(hf, cfg, tokens):
    """Independent HF-layout reference: rotate_half RoPE on the HF (permuted) q/k weights."""
    hd, T = cfg["hidden_size"] // cfg["num_attention_heads"], tokens.shape[1]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.cat([torch.outer(torch.arange(T).float(), inv)] * 2, dim=-1)  # [T, hd]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rope(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def norm(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"])

    x = hf["model.embed_tokens.weight"][tokens]
    B = x.shape[0]
    for i in range(cfg["num_hidden_layers"]):
        p = lambda n: hf[f"model.layers.{i}.{n}.weight"]  # noqa: E731
        h = norm(x, p("input_layernorm"))
        q = rope((h @ p("self_attn.q_proj").T).view(B, T, H, hd)).transpose(1, 2)
        k = rope((h @ p("self_attn.k_proj").T).view(B, T, KV, hd)).transpose(1, 2)
        v = (h @ p("self_attn.v_proj").T).view(B, T, KV, hd).transpose(1, 2)
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        att = (q @ k.transpose(-1, -2) / hd**0.5).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        x = x + (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1) @ p("self_attn.o_proj").T
        h = norm(x, p("post_attention_layernorm"))
        x = x + (torch.nn.functional.silu(h @ p("mlp.gate_proj").T) * (h @ p("mlp.up_proj").T)) @ p("mlp.down_proj").T
    return norm(x, hf["model.norm.weight"]) @ hf.get("lm_head.weight", hf["model.embed_tokens.weight"]).T


@pytest.mark.parametrize("name", ["tiny", "tiny-tied"])
def test_hf_layout_matches_rotate_half_reference(tmp_path, name):
    torch.manual_seed(3)
    cfg = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 256, "intermediate_size": 160, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": name == "tiny-tied"}  # fmt: skip
    # Random weights created directly in the HF layout (not derived from our model).
    source = tiny(name, seed=3)
    # Large q/k weights so attention is far from uniform and the RoPE layout decides the logits.
    scale = lambda k: 0.5 if ("q_proj" in k or "k_proj" in k) else 0.1  # noqa: E731
    hf = {k: torch.randn_like(v) * scale(k) for k, v in from_ours(source.state_dict(), source.config, "hf").items()}
    save_file(hf, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded, _ = load_model(tmp_path)
    torch.testing.assert_close(logits(loaded), rotate_half_forward(hf, cfg, TOKENS), atol=1e-4, rtol=1e-4)


def write_gguf(path, model, qtypes):
    cfg = model.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    names = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
    block = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
             "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
             "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}  # fmt: skip
    expected = {}
    for key, value in model.state_dict().items():
        if cfg.tie_embeddings and key == "output.weight":
            continue
        parts = key.split(".")
        gname = f"blk.{parts[1]}.{block['.'.join(parts[2:-1])]}.weight" if parts[0] == "layers" else f"{names[parts[0]]}.weight"
        array = value.numpy().astype(np.float32)
        qtype = qtypes(key) if value.ndim == 2 else GGMLQuantizationType.F32
        if qtype == GGMLQuantizationType.I32:
            writer.add_tensor(gname, array.astype(np.int32))
        elif qtype == GGMLQuantizationType.F32:
            writer.add_tensor(gname, array)
            expected[key] = value
        else:
            data = quantize(array, qtype)
            writer.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=qtype)
            expected[key] = torch.from_numpy(dequantize(data, qtype).copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.mark.parametrize("name", ["tiny", "tiny-tied"])
def test_gguf_written_with_gguf_writer(tmp_path, name):
    model = tiny(name)
    write_gguf(tmp_path / "m.gguf", model, lambda key: GGMLQuantizationType.F32)
    loaded, tokenizer = load_model(tmp_path / "m.gguf")
    assert tokenizer is None and loaded.config.tie_embeddings == (name == "tiny-tied")
    assert torch.equal(logits(loaded), logits(model))


def test_gguf_quantized_types_dequantize(tmp_path):
    model = tiny()
    kinds = [GGMLQuantizationType[t] for t in ("Q8_0", "Q4_0", "Q4_1", "F16", "BF16")]
    expected = write_gguf(tmp_path / "q.gguf", model, lambda key: kinds[sum(map(ord, key)) % len(kinds)])
    loaded, _ = load_model(tmp_path / "q.gguf")
    reference = tiny()
    reference.load_state_dict(expected, strict=False)
    assert torch.equal(logits(loaded), logits(reference))
    assert not torch.equal(logits(loaded), logits(model))  # quantization really happened


def test_config_constructors():
    assert meta_ffn_dim(4096, 256) == 11008
    assert meta_ffn_dim(4096, 1024, 1.3) == 14336
    assert meta_ffn_dim(8192, 4096, 1.3) == 28672
    llama31 = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "multiple_of": 1024,
               "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True}  # fmt: skip
    c = config_from_params(llama31, "llama3.1")
    ref = get_config("llama3.1-8b")
    assert (c.ffn_dim, c.rope_scaling, c.rope_theta, c.max_seq_len) == (ref.ffn_dim, ref.rope_scaling, 500000.0, 131072)
    assert config_from_params(params_from_config(ref), "x") == replace(ref, name="x")
    hf = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
          "num_key_value_heads": 8, "vocab_size": 128256, "intermediate_size": 14336, "rms_norm_eps": 1e-5,
          "rope_theta": 500000.0, "max_position_embeddings": 131072,
          "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}}  # fmt: skip
    c = config_from_hf(hf, "hf")
    assert c.rope_scaling == ref.rope_scaling and c.n_kv_heads == 8 and not c.tie_embeddings


# ---- bad inputs: a clear error naming the file and the cause, never a partial load ----


def meta_dir(tmp_path):
    model = tiny()
    write_meta_dir(model.state_dict(), model.config, tmp_path)
    return tmp_path


def edit_params(path, **changes):
    params = json.loads((path / "params.json").read_text())
    params.update(changes)
    params = {k: v for k, v in params.items() if v is not None}
    (path / "params.json").write_text(json.dumps(params))


def edit_state(path, fn):
    state = torch.load(path / "consolidated.00.pth", weights_only=True)
    fn(state)
    torch.save(state, path / "consolidated.00.pth")


def test_bad_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither params.json"):
        load_model(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(params_from_config(get_config("tiny"))))
    with pytest.raises(FileNotFoundError, match="no consolidated"):
        load_model(tmp_path)


def test_bad_params(tmp_path):
    path = meta_dir(tmp_path)
    edit_params(path, moe={"num_experts": 8})
    with pytest.raises(ValueError, match=r"params.json has unknown keys \['moe'\]"):
        load_model(path)
    edit_params(path, moe=None, dim=None)
    with pytest.raises(ValueError, match=r"params.json is missing \['dim'\]"):
        load_model(path)
    (path / "params.json").write_text("{not json")
    with pytest.raises(ValueError, match="params.json: invalid JSON"):
        load_model(path)
    edit_params_path = path / "params.json"
    edit_params_path.write_text(json.dumps({**params_from_config(get_config("tiny")), "vocab_size": -1}))
    with pytest.raises(ValueError, match="no tokenizer.model"):
        load_model(path)


def test_bad_tensors(tmp_path):
    path = meta_dir(tmp_path)
    edit_state(path, lambda s: s.update({"layers.0.attention.wq.weight": torch.zeros(64, 32)}))
    with pytest.raises(ValueError, match=r"layers.0.attention.wq.weight has shape \(64, 32\), expected \(64, 64\)"):
        load_model(path)
    edit_state(path, lambda s: s.update({"layers.0.attention.wq.weight": torch.zeros(64, 64), "extra.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"unknown \['extra.weight'\]"):
        load_model(path)
    edit_state(path, lambda s: [s.pop("extra.weight"), s.pop("norm.weight")])
    with pytest.raises(ValueError, match=r"missing \['norm.weight'\]"):
        load_model(path)
    (path / "consolidated.00.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="consolidated.00.pth: cannot read checkpoint"):
        load_model(path)


def test_bad_hf_and_gguf(tmp_path):
    model = tiny()
    save_model(model, tmp_path / "hf", format="hf", max_shard_bytes=40_000)
    next((tmp_path / "hf").glob("model-00002-*")).unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-.*missing safetensors file"):
        load_model(tmp_path / "hf")
    save_model(model, tmp_path / "hf2", format="hf")
    state = load_file(tmp_path / "hf2" / "model.safetensors")
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    save_file(state, tmp_path / "hf2" / "model.safetensors")
    with pytest.raises(ValueError, match="unknown tensor name 'model.layers.0.self_attn.q_norm.weight'"):
        load_model(tmp_path / "hf2")
    write_gguf(tmp_path / "bad.gguf", model, lambda key: GGMLQuantizationType.I32 if "wq" in key else GGMLQuantizationType.F32)
    with pytest.raises(ValueError, match="bad.gguf: tensor blk.0.attn_q.weight has unsupported GGUF type I32"):
        load_model(tmp_path / "bad.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(ValueError, match="junk.gguf: not a readable GGUF file"):
        load_model(tmp_path / "junk.gguf")


def test_named_config_without_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("OWLORE_CACHE", str(cache_dir()))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("OWLORE_MODELS", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    with pytest.raises(FileNotFoundError, match="'llama2-7b' has no checkpoint here .*huggingface-cli download meta-llama/Llama-2-7b-hf"):
        load_model("llama2-7b")
