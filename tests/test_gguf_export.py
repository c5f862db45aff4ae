"""save_model(..., format="gguf"): F32/F16/BF16/Q8_0 through the gguf package's GGUFWriter, names and q/k
order from the family, the tokenizer and chat template in the metadata; read back by our loader, by the gguf
package, and compared with the HF export loaded in transformers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from common.assets import asset_path
from model import Transformer, get_config, load_model, save_model
from model.config import Llama3RopeScaling
from model.tokenizer import load_tokenizer, tokenizer_from_gguf

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.interop

TOKENS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
# Largest |logit| difference to transformers on the HF export, per type (logits within +-1.2). Measured:
# F32 3e-7, F16 5e-4, BF16 4e-3, Q8_0 1.3e-2 (the rounding of each type through 2 blocks).
TOLERANCE = {"F32": 1e-5, "F16": 2e-3, "BF16": 2e-2, "Q8_0": 2e-2}


def tiny(family: str, name: str = "tiny", **overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(get_config(name, family=family, **overrides)).eval()
    with torch.no_grad():
        for layer in model.layers:  # large q/k and random biases: the q/k row order decides the logits
            for proj in (layer.attention.wq, layer.attention.wk):
                proj.weight.mul_(10)
            for proj in (layer.attention.wq, layer.attention.wk, layer.attention.wv):
                if proj.bias is not None:
                    proj.bias.normal_(0, 1.0)
    return model


def logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens).float()


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16", "Q8_0"])
@pytest.mark.parametrize("family,name", [("qwen2", "tiny"), ("llama", "tiny-tied")])
def test_gguf_export_reads_back_and_matches_the_hf_export(tmp_path, family, name, kind):
    model = tiny(family, name)
    save_model(model, tmp_path / "hf", format="hf")
    save_model(model, tmp_path / "gguf", format="gguf", gguf_type=kind)
    path = tmp_path / "gguf" / "model.gguf"
    ours, _ = load_model(path)
    assert ours.config.family == family and ours.config.tie_embeddings == (name == "tiny-tied")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(TOKENS).logits
    diff = (logits(ours) - theirs).abs().max().item()
    assert diff <= TOLERANCE[kind], diff
    if kind != "F32":
        assert diff > 1e-6  # the weights really were rounded
    # The gguf package reads it: matrices in the chosen type, vectors (norms, biases) in F32.
    reader = GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType[kind]
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    assert ("blk.0.attn_q.bias" in types) == (family == "qwen2")
    assert ("output.weight" in types) == (name != "tiny-tied")
    assert reader.fields["general.architecture"].contents() == family


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_gguf_q_rows_are_in_llama_cpp_order(tmp_path, family):
    """llama.cpp keeps Qwen2's q rows as HF has them (rotate_half) and LLaMA's as Meta has them."""
    model = tiny(family)
    save_model(model, tmp_path / "hf", format="hf")
    save_model(model, tmp_path / "gguf", format="gguf", gguf_type="F32")
    reader = GGUFReader(tmp_path / "gguf" / "model.gguf")
    q = {t.name: np.array(t.data) for t in reader.tensors}["blk.0.attn_q.weight"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    expected = hf.model.layers[0].self_attn.q_proj.weight if family == "qwen2" else model.layers[0].attention.wq.weight
    assert np.array_equal(q, expected.detach().numpy())


def test_q8_0_values_are_the_gguf_packages_quantisation(tmp_path):
    model = tiny("qwen2")
    save_model(model, tmp_path, format="gguf", gguf_type="Q8_0")
    reader = GGUFReader(tmp_path / "model.gguf")
    tensor = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    ours, _ = load_model(tmp_path / "model.gguf")
    stored = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
    assert torch.equal(ours.layers[1].feed_forward.w2.weight, stored)
    assert not torch.equal(stored, model.layers[1].feed_forward.w2.weight)


def test_rope_scaling_and_sliding_window_survive(tmp_path):
    model = tiny("mistral", sliding_window=6)
    save_model(model, tmp_path / "m", format="gguf", gguf_type="F32")
    loaded, _ = load_model(tmp_path / "m" / "model.gguf")
    assert loaded.config.sliding_window == 6 and torch.equal(logits(loaded), logits(model))
    scaled = tiny("llama", rope_scaling=Llama3RopeScaling())  # the scaling GGUF can state
    save_model(scaled, tmp_path / "s", format="gguf", gguf_type="F32")
    loaded, _ = load_model(tmp_path / "s" / "model.gguf")
    assert loaded.config.rope_scaling == scaled.config.rope_scaling
    tokens = torch.randint(0, 256, (1, 100), generator=torch.Generator().manual_seed(2))
    assert torch.equal(logits(loaded, tokens), logits(scaled, tokens))


TEXT = "Hello world! Ünïcödé, 12345 and\ttabs."
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@pytest.mark.parametrize("source", ["sentencepiece", "gguf"])
def test_tokenizer_and_chat_template_travel_in_the_metadata(tmp_path, source):
    from model.chat import render_chat

    if source == "sentencepiece":
        tokenizer = load_tokenizer(asset_path("mistral-v1-tokenizer"), chat_template="mistral")
        vocab = tokenizer.vocab_size
    else:
        tokenizer = tokenizer_from_gguf(asset_path("smollm2-135m"))
        tokenizer.source = asset_path("smollm2-135m")
        vocab = 49152
    model = tiny("llama", vocab_size=vocab)
    save_model(model, tmp_path, format="gguf", gguf_type="F16", tokenizer=tokenizer)
    _, again = load_model(tmp_path / "model.gguf")
    assert again.encode(TEXT) == tokenizer.encode(TEXT)
    assert again.decode(again.encode(TEXT)) == tokenizer.decode(tokenizer.encode(TEXT))
    assert render_chat(MESSAGES, again.chat_template) == render_chat(MESSAGES, tokenizer.chat_template)
    assert (again.bos_id, again.eos_id) == (tokenizer.bos_id, tokenizer.eos_id)


def test_other_tokenizers_and_types_are_refused(tmp_path):
    model = tiny("llama")
    with pytest.raises(ValueError, match="unknown GGUF type 'Q4_0'"):
        save_model(model, tmp_path, format="gguf", gguf_type="Q4_0")
    tiktoken = load_tokenizer(asset_path("llama3-tokenizer"))
    with pytest.raises(ValueError, match="a GGUF export takes a GGUF or SentencePiece tokenizer"):
        save_model(model, tmp_path, format="gguf", tokenizer=tiktoken)
    assert not (tmp_path / "model.gguf").exists()


def test_train_py_writes_its_final_weights_as_gguf(tmp_path):
    import json

    import train
    from training.checkpoint import checkpoints, read_weights

    torch.manual_seed(0)
    save_model(Transformer(get_config("tiny", n_layers=2, vocab_size=32000, max_seq_len=128)), tmp_path / "m",
               format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"Say {w}", "input": "", "output": w} for w in ("hi", "yes", "no", "ok")]))
    train.main(["--model", str(tmp_path / "m"), "--data", str(data), "--out", str(tmp_path / "run"), "--method", "full",
                "--max-steps", "1", "--batch-size", "2", "--seq-len", "32", "--save-format", "gguf",
                "--no-memory-report", "--lr", "1e-2"])
    trained = read_weights(checkpoints(tmp_path / "run")[-1])
    model, tokenizer = load_model(tmp_path / "run" / "final-gguf" / "model.gguf")
    assert tokenizer is not None and tokenizer.encode("Say hi") == load_tokenizer(asset_path("mistral-v1-tokenizer")).encode("Say hi")
    compared = [name for name in model.state_dict() if name in trained]
    assert len(compared) == len(trained)  # every trained tensor is in the file
    for name in compared:
        assert torch.allclose(model.state_dict()[name].float(), trained[name].float(), atol=2e-3, rtol=2e-3), name  # F16
