"""The model flags every CLI shares: --ckpt-dir, --tokenizer and one set of --dtype names."""
import json

import pytest
import torch

from common.assets import asset_path
from common.errors import UserError
from eval.__main__ import main as eval_main
from model import Transformer, get_config, save_model
from model.cli import DTYPES
from sampling.__main__ import parser as outliers_parser
from training.args import parse_args


@pytest.mark.parametrize("name, canonical", [("fp32", "fp32"), ("float32", "fp32"), ("bfloat16", "bf16"), ("fp16", "fp16")])
def test_every_cli_takes_the_same_dtype_names(name, canonical, tmp_path):
    (tmp_path / "x.json").write_text("[]")
    (tmp_path / "d").mkdir()
    (tmp_path / "t.model").write_bytes(b"")  # (the flags are checked to exist, not read)
    common = ["--dtype", name, "--tokenizer", str(tmp_path / "t.model"), "--ckpt-dir", str(tmp_path / "d")]
    outliers = outliers_parser().parse_args(["--model", "m", "--out", "o", *common])
    parsed = [outliers]
    if canonical == "fp16":  # the same name, refused for training (fp16 would need loss scaling)
        with pytest.raises(UserError, match="--dtype fp16"):
            parse_args(["--data", str(tmp_path / "x.json"), *common])
    else:
        parsed.append(parse_args(["--data", str(tmp_path / "x.json"), *common]))
    for args in parsed:
        assert args.dtype == canonical and DTYPES[args.dtype] is not None
        assert (args.tokenizer, args.ckpt_dir) == (str(tmp_path / "t.model"), str(tmp_path / "d"))
    with pytest.raises(UserError, match="--dtype"):
        parse_args(["--data", str(tmp_path / "x.json"), "--dtype", "int8"])


def test_eval_with_tokenizer_flag(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(Transformer(get_config("tiny", vocab_size=32000)), tmp_path / "m", format="meta")  # no tokenizer
    out = tmp_path / "r.json"
    eval_main(["--model", str(tmp_path / "m"), "--tokenizer", str(asset_path("mistral-v1-tokenizer")), "--tasks",
               "boolq", "--limit", "2", "--dtype", "float32", "--device", "cpu", "--output", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["config"]["n_examples"] == 2
