"""train.py's safeguards around a run folder: a config file's `resume:` means --resume; one run owns its --out
(two writers: one line for the second); a run that stopped before its first checkpoint does not block its
rerun; a stop by signal exits 130/143 and says what was written. Same tiny model and data as test_train.py."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import train
from common.errors import UserError
from test_train import data_file, run, tiny_dir  # noqa: F401 (fixtures)
from training.checkpoint import checkpoints

FULL = ("--method", "full", "--save-every", "1")


def test_resume_in_a_config_file_is_the_resume_flag(tiny_dir, data_file, tmp_path):
    """Saved arguments restored, changed values refused unless allowed, config.yaml true."""
    run(tiny_dir, data_file, tmp_path / "run", *FULL, "--max-steps", "2", "--lr", "2e-3")
    config = tmp_path / "resume.yaml"
    same = {"model": str(tiny_dir), "data": str(data_file), "out": str(tmp_path / "run")}  # as saved
    config.write_text(yaml.safe_dump({"resume": str(tmp_path / "run"), "lr": 1e-3, **same}))
    with pytest.raises(UserError, match=r"^--resume .*run: these flags change the run being resumed: "
                                        r"--lr 0.002 -> 0.001; pass --allow-changes"):
        train.main(["--config", str(config)])
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["step-000001", "step-000002"]

    config.write_text(yaml.safe_dump({"resume": str(tmp_path / "run"), "max_steps": 3, "allow_changes": True, **same}))
    train.main(["--config", str(config)])  # the saved --lr 2e-3, method and data come back
    resumed = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (resumed["lr"], resumed["max_steps"], resumed["method"]) == (2e-3, 3, "full")
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    optimizer = torch.load(checkpoints(tmp_path / "run")[-1] / "optimizer.pt", weights_only=True)
    assert {group["initial_lr"] for group in optimizer["param_groups"]} == {2e-3}  # the lr config.yaml records


def test_a_config_file_cannot_name_another(tmp_path, data_file):
    config = tmp_path / "a.yaml"
    config.write_text(yaml.safe_dump({"config": "b.yaml", "data": str(data_file)}))
    with pytest.raises(UserError, match=rf"^{config}: config: a config file cannot name another one$"):
        train.main(["--config", str(config)])


def test_warmup_beyond_max_steps_is_one_line(tiny_dir, data_file, tmp_path):
    with pytest.raises(UserError, match=r"^--warmup: 10 steps exceed --max-steps 5$"):
        run(tiny_dir, data_file, tmp_path, "--max-steps", "5", "--warmup", "10")
    assert not tmp_path.joinpath("config.yaml").exists()



def test_resume_through_a_symlink_to_a_checkpoint_continues_its_real_run(tiny_dir, data_file, tmp_path, monkeypatch):
    """`--resume link` (link -> run/step-000001): the run folder is the real one, with its newer checkpoints
    refused as for the real path, never the link's folder (here the working directory)."""
    run(tiny_dir, data_file, tmp_path / "run", *FULL, "--max-steps", "2", "--keep-checkpoints", "2")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    (tmp_path / "cwd" / "link").symlink_to(tmp_path / "run" / "step-000001")
    with pytest.raises(UserError, match=r"holds newer checkpoints \(step-000002\); resume the newest"):
        train.main(["--resume", "link"])
    assert sorted(p.name for p in (tmp_path / "cwd").iterdir()) == ["link"]
