"""LoRA -> PEFT adapter: peft.PeftModel on the transformers base gives the logits of our merged model.

AutoPeftModelForCausalLM tests ran against peft 0.21.2, transformers 5.25.0 (named in their messages).
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from model import Transformer, get_config, save_model  # noqa: E402
from model.peft_format import write_peft_adapter  # noqa: E402
from optim import apply_lora, merge_lora  # noqa: E402

pytestmark = pytest.mark.interop
VERSIONS = f"peft {peft.__version__}, transformers {transformers.__version__}"
TOKENS = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))


def tuned_pair(name: str = "tiny") -> tuple[Transformer, Transformer]:
    """(base, base + trained-looking LoRA adapters)."""
    torch.manual_seed(0)
    base = Transformer(get_config(name)).eval()
    with torch.no_grad():  # larger q/k so that attention (and the q/k row layout) matters
        for layer in base.layers:
            layer.attention.wq.weight.mul_(8)
            layer.attention.wk.weight.mul_(8)
    tuned = copy.deepcopy(base)
    apply_lora(tuned, rank=4, alpha=8.0)
    with torch.no_grad():  # as after training: B is no longer zero
        for p in tuned.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return base, tuned


@pytest.mark.parametrize("name", ["tiny", "tiny-tied"])
def test_peft_adapter_logits_equal_merged(tmp_path, name):
    base, tuned = tuned_pair(name)
    save_model(base, tmp_path / "base", format="hf")
    write_peft_adapter(tuned, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    merged = merge_lora(tuned).eval()
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf_base, tmp_path / "adapter").eval()
    with torch.no_grad():
        ours, base_logits = merged(TOKENS), base(TOKENS)
        torch.testing.assert_close(theirs(TOKENS).logits, ours, atol=5e-5, rtol=1e-4)
        assert not torch.allclose(ours, base_logits, atol=1e-2)  # the adapter really changes the model


def test_auto_peft_model_loads_an_adapter_on_an_hf_folder(tmp_path, monkeypatch):
    base, tuned = tuned_pair()
    save_model(base, tmp_path / "base", format="hf")
    monkeypatch.chdir(tmp_path)
    write_peft_adapter(tuned, tmp_path / "adapter", base_model="base")  # relative: written as an absolute path
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "base").resolve())
    monkeypatch.chdir(os.path.dirname(__file__))
    theirs = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(TOKENS).logits, merge_lora(tuned).eval()(TOKENS), atol=5e-5, rtol=1e-4,
                                   msg=lambda m: f"{m} ({VERSIONS})")


def test_a_named_config_adapter_names_the_hub_repo_and_loads_from_the_hub_cache_offline(tmp_path):
    """The base is found by its hub id in a local HF hub cache (offline): the named config's real repo."""
    base, tuned = tuned_pair()
    write_peft_adapter(tuned, tmp_path / "adapter", base_model="smollm2-135m")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    revision = "0" * 40  # a hub cache entry: models--org--repo/snapshots/<revision>/ and refs/main
    repo = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    save_model(base, repo / "snapshots" / revision, format="hf")  # a tiny stand-in under the real id
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    torch.save(TOKENS, tmp_path / "tokens.pt")
    script = ("import sys, torch, peft; t = torch.load(sys.argv[2]); m = peft.AutoPeftModelForCausalLM.from_pretrained("
              "sys.argv[1], dtype=torch.float32).eval(); torch.save(m(t).logits.detach(), sys.argv[3])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "adapter"), str(tmp_path / "tokens.pt"),
                             str(tmp_path / "logits.pt")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), merge_lora(tuned).eval()(TOKENS), atol=5e-5,
                                   rtol=1e-4, msg=lambda m: f"{m} ({VERSIONS})")


def test_no_adapters_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        write_peft_adapter(Transformer(get_config("tiny")), tmp_path, base_model="x")
