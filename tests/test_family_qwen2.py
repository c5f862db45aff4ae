"""Qwen2 / Qwen2.5 (model/families/qwen2.py): q/k/v biases, rotate_half q/k in HF and GGUF, ChatML.

Every check is against the real library: transformers' Qwen2ForCausalLM for logits (the biases are random and
the q/k weights large, so a bias in the wrong row order changes the logits), peft for adapters, the gguf
package for GGUF files written as llama.cpp's converter writes Qwen2 (HF tensors renamed, rows not permuted).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from safetensors.torch import load_file

import train
from common.assets import asset_path
from model import load_model, save_model
from model.families import FAMILIES
from optim import apply_lora
from model.peft_format import write_peft_adapter
from helpers import two_processes

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.interop

VOCAB = 32000  # the Mistral v1 SentencePiece tokenizer's, so train.py can tokenize for the tiny model
TOKENS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
WORKER = Path(__file__).with_name("fsdp_worker.py")


def hf_qwen2(path: Path, tie: bool = False, seed: int = 0):
    """A tiny random Qwen2ForCausalLM saved with save_pretrained (plus a tokenizer.model); returns the model."""
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1e6, max_position_embeddings=256, rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
    )  # fmt: skip
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            for proj in (attn.q_proj, attn.k_proj):
                proj.weight.mul_(20)  # attention far from uniform, so the q/k row order decides the logits
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                proj.bias.normal_(0, 1.0)  # Qwen2's init leaves them zero; zero biases would hide their order
    model.save_pretrained(path)
    shutil.copy(asset_path("mistral-v1-tokenizer"), path / "tokenizer.model")
    return model


def their_logits(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits.float()


def our_logits(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qwen2")
    hf_qwen2(path)
    return path


@pytest.mark.parametrize("tie", [False, True])
def test_logits_equal_transformers_qwen2(tmp_path, tie):
    theirs = hf_qwen2(tmp_path, tie=tie)
    ours, tokenizer = load_model(tmp_path)
    assert ours.config.family == "qwen2" and ours.config.qkv_bias and ours.config.tie_embeddings == tie
    assert ours.config.rope_theta == 1e6 and ours.config.sliding_window is None
    assert tokenizer.chat_template == "chatml"  # the family's built-in format for a SentencePiece tokenizer
    torch.testing.assert_close(our_logits(ours), their_logits(theirs), atol=1e-5, rtol=1e-5)
    # The biases matter: zeroing them moves the logits far beyond the tolerance.
    with torch.no_grad():
        for layer in ours.layers:
            layer.attention.wq.bias.zero_()
    assert not torch.allclose(our_logits(ours), their_logits(theirs), atol=1e-2)


def test_llama_has_no_bias_parameters():
    from model import Transformer, get_config

    names = set(Transformer(get_config("tiny")).state_dict())
    assert not any(n.endswith(".bias") for n in names)
    qwen = set(Transformer(get_config("tiny", family="qwen2")).state_dict())
    assert qwen - names == {f"layers.{i}.attention.{w}.bias" for i in range(2) for w in ("wq", "wk", "wv")}


@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_our_save_reloads_in_transformers_and_in_ours(qwen_dir, tmp_path, fmt):
    ours, tokenizer = load_model(qwen_dir)
    save_model(ours, tmp_path / fmt, format=fmt, tokenizer=tokenizer)
    again, _ = load_model(tmp_path / fmt)
    assert again.config.family == "qwen2"
    assert torch.equal(our_logits(again), our_logits(ours))
    if fmt == "hf":
        config = json.loads((tmp_path / fmt / "config.json").read_text())
        assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / fmt, dtype=torch.float32)
        assert type(theirs).__name__ == "Qwen2ForCausalLM"
        torch.testing.assert_close(their_logits(theirs), our_logits(ours), atol=1e-5, rtol=1e-5)
        # Same bytes as transformers' own file for every tensor, biases included (same row order).
        mine, source = load_file(tmp_path / fmt / "model.safetensors"), load_file(qwen_dir / "model.safetensors")
        assert mine.keys() == source.keys() and all(torch.equal(mine[k], source[k]) for k in mine)
    else:
        params = json.loads((tmp_path / fmt / "params.json").read_text())
        assert params["family"] == "qwen2"  # no Meta-format release of Qwen2: the family is stated


# llama.cpp's convert_hf_to_gguf.py for Qwen2: HF tensors renamed, q/k rows and biases kept in HF's order.
_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.down_proj": "ffn_down",
         "mlp.up_proj": "ffn_up", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}  # fmt: skip


def llama_cpp_name(name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}  # fmt: skip
    if name in top:
        return top[name]
    i, module, param = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name).groups()
    return f"blk.{i}.{_GGUF[module]}.{param}"


def write_qwen2_gguf(path: Path, hf_dir: Path) -> None:
    cfg = json.loads((hf_dir / "config.json").read_text())
    writer = GGUFWriter(str(path), "qwen2")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    for name, tensor in load_file(hf_dir / "model.safetensors").items():
        writer.add_tensor(llama_cpp_name(name), tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tie", [False, True])
def test_gguf_as_llama_cpp_writes_it(tmp_path, tie):
    theirs = hf_qwen2(tmp_path / "hf", tie=tie)
    write_qwen2_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    ours, _ = load_model(tmp_path / "m.gguf")
    assert ours.config.family == "qwen2" and ours.config.tie_embeddings == tie
    torch.testing.assert_close(our_logits(ours), their_logits(theirs), atol=1e-5, rtol=1e-5)


def test_peft_adapter_on_qwen2_equals_our_merged_model(qwen_dir, tmp_path):
    tuned, _ = load_model(qwen_dir)
    apply_lora(tuned, rank=4, alpha=8.0)
    with torch.no_grad():  # as after training: B is no longer zero
        for p in tuned.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    write_peft_adapter(tuned, tmp_path / "adapter", base_model=str(qwen_dir))
    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors").keys()
    assert keys and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in keys)
    base = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    torch.testing.assert_close(their_logits(theirs), our_logits(tuned.eval()), atol=5e-5, rtol=1e-4)


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--seq-len", "64", "--no-pack",
            "--batch-size", "8", "--lr", "1e-2", "--seed", "1", "--rank", "8", "--update-proj-gap", "2",
            "--gamma", "2", "--period", "2", "--calib-windows", "2", "--calib-seq-len", "16", "--M", "3",
            "--save-format", "hf", "--schedule", "constant", "--no-memory-report", *extra]  # fmt: skip


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_owlore_trains_qwen2_and_its_export_opens_in_transformers(qwen_dir, data_file, tmp_path):
    before, _ = load_model(qwen_dir)
    train.main(train_args(qwen_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "6"))
    curve = losses(tmp_path)
    assert len(curve) == 6 and all(np.isfinite(curve)) and curve[-1] < curve[0]
    after, _ = load_model(tmp_path / "final-hf")
    changed = [i for i in range(4) if not torch.equal(after.layers[i].attention.wq.bias, before.layers[i].attention.wq.bias)]
    assert changed  # the sampled blocks' biases train with their matrices
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "final-hf", dtype=torch.float32)
    torch.testing.assert_close(their_logits(theirs), our_logits(after), atol=1e-5, rtol=1e-5)


def check_lora_exports(qwen_dir: Path, out: Path) -> None:
    """final-hf (merged) has exactly transformers' tensor names, and equals the base plus final-peft in peft."""
    merged = transformers.AutoModelForCausalLM.from_pretrained(out / "final-hf", dtype=torch.float32)
    names = {k for f in (out / "final-hf").glob("*.safetensors") for k in load_file(f)}
    assert names == set(load_file(qwen_dir / "model.safetensors"))  # no leftover `.base.bias` / `.base.weight`
    base = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    adapted = peft.PeftModel.from_pretrained(base, out / "final-peft").eval()
    torch.testing.assert_close(their_logits(adapted), their_logits(merged), atol=5e-5, rtol=1e-4)
    untouched = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    assert not torch.allclose(their_logits(merged), their_logits(untouched), atol=1e-3)  # the adapter trained


@pytest.mark.slow
def test_lora_run_exports_merged_hf_and_peft(qwen_dir, data_file, tmp_path):
    train.main(train_args(qwen_dir, data_file, tmp_path, "--method", "lora", "--max-steps", "4"))
    check_lora_exports(qwen_dir, tmp_path)


@pytest.mark.distributed
def test_sharded_lora_export_of_qwen2_on_two_ranks(qwen_dir, data_file, tmp_path):
    out = tmp_path / "run"
    runs = [train_args(qwen_dir, data_file, out, "--method", "lora", "--max-steps", "2", "--fsdp", "--lora-dropout", "0")]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    done = two_processes(WORKER, "runs", tmp_path / "runs.json")
    assert done.returncode == 0, done.stderr[-4000:]
    assert len(list((out / "final-hf").glob("model-*.safetensors"))) == 5  # streamed: one file per block, then the rest
    check_lora_exports(qwen_dir, out)
    assert load_model(out / "final-hf")[0].config.family == "qwen2"


def test_family_declaration():
    qwen2 = FAMILIES["qwen2"]
    assert qwen2.qkv_bias and qwen2.rotate_half == {"hf", "gguf"} and qwen2.chat_template == "chatml"
    assert not FAMILIES["llama"].qkv_bias and FAMILIES["llama"].rotate_half == {"hf"}


def test_named_config_is_qwen25_05b_and_found_in_the_hub_cache(tmp_path, monkeypatch):
    from dataclasses import replace

    from model import Transformer, get_config
    from model.config import CONFIGS

    with torch.device("meta"):
        real = Transformer(get_config("qwen2.5-0.5b"))
    assert sum(p.numel() for p in real.parameters()) == 494_032_768  # Qwen2.5-0.5B's published count
    tiny = replace(get_config("tiny", family="qwen2"), name="qwen2.5-0.5b")
    monkeypatch.setitem(CONFIGS, "qwen2.5-0.5b", tiny)
    torch.manual_seed(0)
    model = Transformer(tiny).eval()
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc123"
    save_model(model, snapshot, format="hf")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("OWLORE_MODELS", raising=False)
    loaded, _ = load_model("qwen2.5-0.5b")
    tokens = torch.randint(0, 256, (1, 12))
    assert loaded.config.family == "qwen2" and torch.equal(our_logits(loaded, tokens), our_logits(model, tokens))
