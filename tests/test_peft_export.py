"""LoRA -> PEFT adapter: peft.PeftModel on the transformers base gives the logits of our merged model."""
import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from model import Transformer, get_config, save_model  # noqa: E402
from model.peft_format import write_peft_adapter  # noqa: E402
from optim import apply_lora, merge_lora  # noqa: E402

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("name", ["tiny", "tiny-tied"])
def test_peft_adapter_logits_equal_merged(tmp_path, name):
    torch.manual_seed(0)
    base = Transformer(get_config(name)).eval()
    with torch.no_grad():  # larger q/k so that attention (and the q/k row layout) matters
        for layer in base.layers:
            layer.attention.wq.weight.mul_(8)
            layer.attention.wk.weight.mul_(8)
    save_model(base, tmp_path / "base", format="hf")
    tuned = copy.deepcopy(base)
    apply_lora(tuned, rank=4, alpha=8.0)
    with torch.no_grad():  # as after training: B is no longer zero
        for p in tuned.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    write_peft_adapter(tuned, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    merged = merge_lora(tuned).eval()
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf_base, tmp_path / "adapter").eval()
    tokens = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, base_logits = merged(tokens), base(tokens)
        torch.testing.assert_close(theirs(tokens).logits, ours, atol=5e-5, rtol=1e-4)
        assert not torch.allclose(ours, base_logits, atol=1e-2)  # the adapter really changes the model


def test_no_adapters_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        write_peft_adapter(Transformer(get_config("tiny")), tmp_path, base_model="x")
