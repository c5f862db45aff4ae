"""train.py's safeguards around a run folder: a config file's `resume:` means --resume; one run owns its --out
(two writers: one line for the second); a run that stopped before its first checkpoint does not block its
rerun; a stop by signal exits 130/143 and says what was written. Same tiny model and data as test_train.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import train
from training.stop import StopFlag
from common.errors import Stopped, UserError
from model.hf_format import read_hf_dir
from helpers import ROOT, final_weights, run
from training.checkpoint import checkpoints, read_optimizer

FULL = ("--method", "full", "--save-every", "1")


@pytest.mark.slow
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
    _, groups = read_optimizer(checkpoints(tmp_path / "run")[-1])
    assert {group["initial_lr"] for group in groups} == {2e-3}  # the lr config.yaml records


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


def test_a_tokenizer_larger_than_the_embedding_is_one_line(data_file, tmp_path):
    """Its ids would index past the embedding: an IndexError in the first forward, in train.py and eval."""
    from common.assets import asset_path
    from model import Transformer, get_config, save_model

    small = tmp_path / "small"
    save_model(Transformer(get_config("tiny", vocab_size=1000)), small, format="meta")
    tokenizer = asset_path("mistral-v1-tokenizer")
    with pytest.raises(UserError, match=rf"^{tokenizer}: its vocabulary of 32000 tokens does not fit the 1000 "
                                        rf"embedding rows of {small}$"):
        run(small, data_file, tmp_path / "out", "--tokenizer", str(tokenizer), "--method", "full")


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def tiny_args(tiny_dir, data_file, out, *extra) -> list[str]:
    return ["--model", str(tiny_dir), "--data", str(data_file), "--out", str(out), "--seq-len", "64", "--no-pack",
            "--batch-size", "8", "--seed", "1", "--save-format", "none", "--method", "full", "--no-memory-report", *extra]


@pytest.mark.slow
def test_chaos_two_writers_on_one_out_the_second_is_refused_naming_the_holder(tiny_dir, data_file, tmp_path):
    """A second fresh run, and a --resume of the live run, while the first trains: each gets one line with the
    holder's pid and touches nothing; the first, stopped by SIGTERM later, logged every step once."""
    out = tmp_path / "out"
    first = start(*tiny_args(tiny_dir, data_file, out, "--max-steps", "100000", "--save-every", "3"))
    wait_for(lambda: checkpoints(out), first)  # training (the lock is held), and a checkpoint to resume
    busy = (f"error: --out {out}: in use by another process (pid {first.pid}); wait for it to finish or stop it, "
            "or choose another folder")
    for argv in (tiny_args(tiny_dir, data_file, out, "--max-steps", "3"), ["--resume", str(out)]):
        second = start(*argv)
        _, err = second.communicate(timeout=300)
        assert (second.returncode, err.strip().splitlines()[-1]) == (1, busy)
    assert first.poll() is None  # (so the refusals above were the lock's)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 143, err[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and checkpoints(out)[-1].name == f"step-{steps[-1]:06d}"
    assert not (out / ".lock").exists()


def test_an_out_that_is_a_file_is_one_line(tiny_dir, data_file, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=rf"^--out {tmp_path / 'file'}: is a file, not a folder$"):
        run(tiny_dir, data_file, tmp_path / "file", "--max-steps", "1")


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_its_rerun(tiny_dir, data_file, tmp_path):
    with pytest.raises(UserError, match="--M"):  # fails in the outlier scores, after config.yaml
        run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "1", "--M", "1e6")
    assert (tmp_path / "config.yaml").is_file() and not checkpoints(tmp_path)
    run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "1")  # no --overwrite needed
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000001"]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["M"] != 1e6


@pytest.mark.parametrize("signum, status, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
@pytest.mark.slow
def test_a_stop_by_signal_exits_128_plus_it_and_says_what_was_written(tiny_dir, data_file, tmp_path, signum, status,
                                                                      name):
    out = tmp_path / "out"
    proc = start(*tiny_args(tiny_dir, data_file, out, "--max-steps", "50", "--save-format", "hf"))
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text(), proc)  # in the loop
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    step = int(checkpoints(out)[-1].name.removeprefix("step-"))
    assert (proc.returncode, err.strip().splitlines()[-1]) == (status, (
        f"stopped: by {name} after step {step}: wrote the checkpoint {out / f'step-{step:06d}'}; the final "
        f"evaluation and export (final-hf) were not done; resume with --resume {out}"))
    assert not (out / "final-hf").exists()


@pytest.mark.slow
def test_ctrl_c_before_the_first_step_is_one_line_and_the_rerun_is_not_blocked(tiny_dir, data_file, tmp_path):
    out = tmp_path / "out"
    argv = tiny_args(tiny_dir, data_file, out, "--method", "owlore", "--max-steps", "1", "--calib-windows", "2",
                     "--calib-seq-len", "16", "--M", "3", "--gamma", "2")
    proc = start(*argv)
    wait_for(lambda: (out / "config.yaml").is_file(), proc)  # loading the model or computing the outlier scores
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert (proc.returncode, err.strip().splitlines()[-1]) == (
        130, "stopped: by Ctrl-C before the first checkpoint: none was written; run the same command again")
    assert "Traceback" not in err
    train.main(argv)  # the same command, no --overwrite
    assert [p.name for p in checkpoints(out)] == ["step-000001"]


@pytest.mark.slow
def test_resuming_a_run_that_was_exported_needs_overwrite_for_its_new_export(tiny_dir, data_file, tmp_path):
    """Its final-hf would otherwise be written over the old one's files."""
    run(tiny_dir, data_file, tmp_path, "--method", "full", "--max-steps", "1", "--save-format", "hf")
    with pytest.raises(UserError, match=rf"^--resume {tmp_path}: the run was exported already \(final-hf\); pass "
                                        r"--overwrite to replace the export when this run ends$"):
        train.main(["--resume", str(tmp_path), "--max-steps", "2", "--allow-changes"])
    (tmp_path / "final-hf" / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    train.main(["--resume", str(tmp_path), "--max-steps", "2", "--allow-changes", "--overwrite"])
    assert not (tmp_path / "final-hf" / "model-00001-of-00002.safetensors").exists()
    _, state = read_hf_dir(tmp_path / "final-hf")
    assert torch.equal(state["norm.weight"], final_weights(tmp_path)["norm.weight"])


@pytest.mark.parametrize("flag", ["--seq-len", "--calib-seq-len"])
def test_a_length_beyond_the_model_context_is_refused_before_calibration(tiny_dir, data_file, tmp_path, monkeypatch,
                                                                         flag):
    from model import load_model

    context = load_model(tiny_dir, weights=False)[0].config.max_seq_len
    monkeypatch.setattr(train, "load_or_compute_ratios", lambda *a, **k: pytest.fail("calibrated before the check"))
    with pytest.raises(UserError, match=rf"^{flag}: {context + 1} tokens exceed the model's context of {context}$"):
        run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "1", flag, str(context + 1))


def test_a_second_signal_stops_at_once_and_says_so(tmp_path):
    """The first asks for a clean stop (the loop saves); the second does not wait for it. Before the loop is
    armed, the first stops at once."""
    with StopFlag(tmp_path) as stop:
        with pytest.raises(Stopped, match=r"^by Ctrl-C before the first checkpoint: none was written; run the same"):
            os.kill(os.getpid(), signal.SIGINT)
        stop.armed = True
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM
        (tmp_path / "step-000004").mkdir()
        with pytest.raises(Stopped, match=rf"^by a second Ctrl-C, at once: the newest checkpoint is "
                                          rf"{tmp_path / 'step-000004'}; resume with --resume {tmp_path}$") as stopped:
            os.kill(os.getpid(), signal.SIGINT)
        assert stopped.value.status == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resuming_on_data_of_another_size_is_one_line(tiny_dir, data_file, tmp_path):
    run(tiny_dir, data_file, tmp_path / "run", *FULL, "--max-steps", "2")
    more = tmp_path / "more.json"
    more.write_text(json.dumps(json.loads(data_file.read_text()) * 2))
    with pytest.raises(UserError, match=r"^--resume .*step-000002: cannot resume the data order: saved num_rows 8 "
                                        r"!= current 16$"):
        train.main(["--resume", str(tmp_path / "run"), "--data", str(more), "--allow-changes", "--max-steps", "3"])
