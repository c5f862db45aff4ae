import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import Transformer, get_config
from sampling.__main__ import parser, score
from sampling.cache import cached_ratios
from common.errors import UserError


class ByteTokenizer:
    bos_id, eos_id, vocab_size = 1, 2, 256

    def encode(self, text, bos=False, eos=False):
        return [self.bos_id] * bos + list(text.encode()) + [self.eos_id] * eos


def test_cli_scores_a_model_and_writes_cache_alphas_and_plot(tmp_path, capsys):
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(get_config("tiny"), n_layers=3)).eval()
    (tmp_path / "calib.jsonl").write_text("\n".join(json.dumps({"text": f"sample text number {i}. " * 4})
                                                    for i in range(30)))
    args = parser().parse_args(["--model", "tiny", "--calib", str(tmp_path / "calib.jsonl"), "--n-windows", "6",
                                "--seq-len", "32", "--M", "3", "--gamma", "2", "--out", str(tmp_path / "s.json"),
                                "--htsr", "--plot", str(tmp_path / "s.png")])
    record = score(model, ByteTokenizer(), args)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["ratios"] == record["ratios"] and len(saved["ratios"]) == 3
    assert saved["calibration"]["source"].endswith("calib.jsonl") and saved["calibration"]["n_windows"] == 6
    assert len(saved["matrix_ratios"]) == 3 and len(saved["matrix_ratios"][0]) == 7
    assert saved["inclusion_exact"] == pytest.approx(saved["inclusion_monte_carlo"], abs=0.01)
    assert sum(saved["inclusion_exact"]) == pytest.approx(2.0)
    assert len(saved["alphas"]) == 3 and all(a > 1 for a in saved["alphas"])
    assert -1 <= saved["spearman_rho_ratio_alpha"] <= 1 and math.isfinite(saved["spearman_rho_ratio_alpha"])
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert cached_ratios(tmp_path / "s.json", model, "tiny", 3.0) == record["ratios"]  # the output is a cache
    assert "Spearman rho(D, alpha)" in capsys.readouterr().out


def test_cli_requires_model_and_out():
    with pytest.raises(UserError, match="required: --model, --out"):
        parser().parse_args(["--M", "13"])


def test_python_m_sampling_reports_a_bad_calibration_file_in_one_line(tmp_path):
    (tmp_path / "calib.jsonl").write_text('{"text": "fine"}\n{not json\n')
    result = subprocess.run([sys.executable, "-m", "sampling", "--model", "tiny", "--calib", str(tmp_path / "calib.jsonl"),
                             "--out", str(tmp_path / "s.json")], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'calib.jsonl'}") and "JSON" in line
    assert not (tmp_path / "s.json").exists()
