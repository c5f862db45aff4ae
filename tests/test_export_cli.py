"""python -m training.export: a training checkpoint becomes an HF, Meta, GGUF or PEFT folder."""
import json

import pytest
import torch

import train
from common import cli
from common.assets import asset_path
from model import Transformer, get_config, load_model, save_model
from model.tokenizer import load_tokenizer
from training.export import main as export_main

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.interop

TOKENS = torch.randint(0, 32000, (1, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_model(Transformer(get_config("tiny", vocab_size=32000)), root / "base", format="hf",
               tokenizer=asset_path("mistral-v1-tokenizer"))  # fmt: skip
    data = root / "train.json"
    data.write_text(json.dumps([{"instruction": f"Say {w}", "input": "", "output": w} for w in ("hi", "bye", "yes", "no")]))
    train.main(["--model", str(root / "base"), "--data", str(data), "--out", str(root / "run"), "--method", "lora",
                "--lora-dropout", "0", "--lr", "5e-2", "--max-steps", "2", "--batch-size", "2", "--seq-len", "96",
                "--no-pack", "--save-format", "hf", "--no-memory-report"])  # fmt: skip
    return root


def logits(model):
    with torch.no_grad():
        return model(TOKENS)


def test_export_hf_and_meta_equal_the_final_merged_model(lora_run):
    final, _ = load_model(lora_run / "run" / "final-hf")
    export_main([str(lora_run / "run"), "--format", "hf"])  # the run folder: its newest checkpoint
    out = lora_run / "run" / "step-000002-hf"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(TOKENS).logits, logits(final), atol=5e-5, rtol=1e-4)
    assert transformers.AutoTokenizer.from_pretrained(out)("Hello").input_ids == load_model(out)[1].encode("Hello", bos=True)
    export_main([str(lora_run / "run" / "step-000002"), "--format", "meta", "--out", str(lora_run / "meta")])
    assert torch.equal(logits(load_model(lora_run / "meta")[0]), logits(final))
    base, _ = load_model(lora_run / "base")
    assert not torch.allclose(logits(base), logits(final), atol=1e-3)  # training changed the weights


def test_export_gguf_equals_the_final_merged_model(lora_run):
    spm = asset_path("mistral-v1-tokenizer")  # GGUF takes SentencePiece or GGUF vocabularies, not tokenizer.json
    export_main([str(lora_run / "run"), "--format", "gguf", "--gguf-type", "F32", "--tokenizer", str(spm)])
    exported, tokenizer = load_model(lora_run / "run" / "step-000002-gguf" / "model.gguf")
    final, final_tokenizer = load_model(lora_run / "run" / "final-hf")
    assert torch.equal(logits(exported), logits(final))
    assert tokenizer.encode("Say hi, 123") == final_tokenizer.encode("Say hi, 123") == load_tokenizer(spm).encode("Say hi, 123")


def test_export_peft_loads_in_peft(lora_run):
    assert (lora_run / "run" / "final-peft" / "adapter_config.json").is_file()  # train.py wrote one at the end
    export_main([str(lora_run / "run" / "step-000002"), "--format", "peft", "--out", str(lora_run / "peft")])
    final, _ = load_model(lora_run / "run" / "final-hf")
    base = transformers.AutoModelForCausalLM.from_pretrained(lora_run / "base", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, lora_run / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(TOKENS).logits, logits(final), atol=5e-5, rtol=1e-4)


def test_export_errors_are_one_line(tmp_path, capsys, lora_run):
    with pytest.raises(SystemExit) as err:
        cli.run(export_main, [str(tmp_path), "--format", "hf"])
    assert str(err.value).startswith("error: ") and "\n" not in str(err.value)
    with pytest.raises(SystemExit, match="error: .*--format peft needs a LoRA run"):
        full = tmp_path / "full"
        train.main(["--model", str(lora_run / "base"), "--data", str(lora_run / "train.json"), "--out", str(full),
                    "--method", "full", "--max-steps", "1", "--batch-size", "2", "--seq-len", "96",
                    "--no-pack", "--save-format", "none"])  # fmt: skip
        cli.run(export_main, [str(full), "--format", "peft"])
