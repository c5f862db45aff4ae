"""Every command line reports a user's mistake as one line, `error: <file or flag>: <cause>`, exit status 1,
and checks cheap inputs before loading a model."""
from __future__ import annotations

import subprocess
import sys

import pytest

import bench.memory
from common import cli
import data.commonsense
import eval.__main__
import sampling.__main__ as sampling_cli
from common.errors import UserError
from helpers import ROOT

NO_MODEL = "/nonexistent/model"  # a case that reached the model loader would name this instead


def one_line(main, argv, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        cli.run(main, argv)
    line = err.value.code  # what Python prints on stderr before exiting with status 1
    assert isinstance(line, str) and line.startswith("error: ") and "\n" not in line, line
    return line


@pytest.mark.parametrize("argv, message", [
    (["--model", NO_MODEL, "--batch-size", "0"], "error: --batch-size: must be >= 1, got 0"),
    (["--model", NO_MODEL, "--limit", "0"], "error: --limit: must be >= 1, got 0"),
    (["--model", NO_MODEL, "--limit", "-1"], "error: --limit: must be >= 1, got -1"),
    (["--model", NO_MODEL, "--num-fewshot", "-1"], "error: --num-fewshot: must be >= 0, got -1"),
    (["--model", NO_MODEL, "--tasks", "boolq,nope"], "error: --tasks: unknown task 'nope'"),
    (["--model", NO_MODEL, "--tasks", "boolq"], f"error: --model: {NO_MODEL!r} is neither a known model"),
    (["generate", "--model", NO_MODEL, "--dataset", "boolq", "--data", "x.json", "--num-beams", "0"],
     "error: --num-beams: must be >= 1, got 0"),
    (["--tasks", "boolq"], "error: the following arguments are required: --model"),
    (["generate", "--model", NO_MODEL, "--dataset", "gsm8k", "--data", "x.json"],
     "error: --dataset gsm8k: no answer pattern for it; known: boolq"),
])
def test_eval(argv, message, capsys):
    assert one_line(eval.__main__.main, argv, capsys).startswith(message)


@pytest.mark.parametrize("argv, message", [
    (["--model", NO_MODEL, "--out", "s.json", "--M", "inf"], "error: --M: must be a finite number, got inf"),
    (["--model", NO_MODEL, "--out", "s.json", "--M", "0"], "error: --M: must be > 0, got 0"),
    (["--model", NO_MODEL, "--out", "s.json", "--seq-len", "1"], "error: --seq-len: must be >= 2, got 1"),
    (["--model", NO_MODEL, "--out", "s.json", "--n-windows", "x"], "error: --n-windows: expected an integer, got 'x'"),
    (["--model", NO_MODEL], "error: the following arguments are required: --out"),
])
def test_sampling_cli(argv, message, capsys):
    assert one_line(sampling_cli.main, argv, capsys) == message


@pytest.mark.parametrize("argv, message", [
    (["--out", "cs", "--tasks", "boolq,nope"], "error: unknown commonsense task(s) ['nope']; known: boolq, "),
    (["--out", "cs", "--heldout-per-task", "-1"], "error: --heldout-per-task: must be >= 0, got -1"),
])
def test_data_commonsense(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert one_line(data.commonsense.main, argv, capsys).startswith(message)
    assert not (tmp_path / "cs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "nope"], "error: --model: invalid choice: 'nope'"),
    (["--model", "tiny", "--gamma", "9"], "error: --gamma: 9 must lie in [1, 2] for 'tiny'"),
])
def test_bench_memory(argv, message, capsys):
    assert one_line(bench.memory.main, argv, capsys).startswith(message)


def test_debug_raises_instead(capsys):
    with pytest.raises(UserError, match="--limit"):
        eval.__main__.main(["--model", NO_MODEL, "--limit", "0", "--debug"])


@pytest.mark.parametrize("text, kind, message", [
    ("nan", float, "must be a finite number, got nan"), ("-inf", float, "must be a finite number, got -inf"),
    ("1e999", float, "must be a finite number, got 1e999"), ("2.5", int, "expected an integer, got '2.5'"),
    ("x", float, "expected a number, got 'x'"),
])
def test_number_refuses(text, kind, message):
    with pytest.raises(Exception, match=message):
        cli.number(kind)(text)


@pytest.mark.parametrize("command", [
    ["train.py", "--data", "nope.json"],
    ["-m", "eval", "--model", NO_MODEL, "--limit", "0"],
])
@pytest.mark.slow
def test_the_real_entry_points_print_one_line(command, tmp_path):
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() in (["error: --data: nope.json: no such file"],
                                                ["error: --limit: must be >= 1, got 0"]), done.stderr


def test_a_bug_keeps_its_traceback_and_only_typed_errors_are_one_line():
    """A KeyError / ValueError from library code is a bug, not a user's mistake: it is not turned into a line."""
    def buggy(argv):
        return {}["missing state key"]

    with pytest.raises(KeyError, match="missing state key"):
        cli.run(buggy, [])
    with pytest.raises(ValueError, match="not a user error"):
        cli.run(lambda argv: int("not a user error"), [])
    with pytest.raises(SystemExit, match=r"^error: x.json: No such file or directory$"):
        cli.run(lambda argv: open("x.json"), [])


def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path):
    """SIGINT at any moment: `stopped: ...`, status 130, never a KeyboardInterrupt traceback."""
    import signal

    script = ("import sys, time; sys.path.insert(0, '.'); from common import cli; "
              "cli.run(lambda argv: (print('ready', flush=True), time.sleep(60)))")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err, out) == (130, "stopped: interrupted (Ctrl-C)\n", "")


def test_sampling_gamma_beyond_the_model_is_refused_before_calibration(tiny_dir, tmp_path, capsys, monkeypatch):
    import sampling.__main__ as sampling_main

    monkeypatch.setattr(sampling_main, "score", lambda *a, **k: pytest.fail("calibrated before checking --gamma"))
    assert one_line(sampling_cli.main, ["--model", str(tiny_dir), "--out", str(tmp_path / "s.json"), "--gamma", "5"],
                    capsys) == f"error: --gamma: 5 exceeds the 4 blocks of {tiny_dir}; pass --gamma 4 or less"


def test_eval_with_a_tokenizer_larger_than_the_embedding_is_one_line(tmp_path, capsys):
    from common.assets import asset_path
    from model import Transformer, get_config, save_model

    save_model(Transformer(get_config("tiny", vocab_size=1000)), tmp_path, format="meta")
    tokenizer = asset_path("mistral-v1-tokenizer")
    assert one_line(eval.__main__.main, ["--model", str(tmp_path), "--tokenizer", str(tokenizer), "--tasks", "boolq",
                                         "--limit", "1"], capsys) == (
        f"error: {tokenizer}: its vocabulary of 32000 tokens does not fit the 1000 embedding rows of {tmp_path}")


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(where, tmp_path, capsys, monkeypatch):
    """Before the model loads (the model named does not exist: a check after loading would name it)."""
    (tmp_path / "file").write_text("x")
    output = tmp_path if where == "folder" else tmp_path / "file" / "results.json"
    cause = "is a folder; name a file" if where == "folder" else f"{tmp_path / 'file'} is a file, not a folder"
    assert one_line(eval.__main__.main, ["--model", NO_MODEL, "--tasks", "boolq", "--output", str(output)],
                    capsys) == f"error: --output {output}: {cause}"
    assert one_line(sampling_cli.main, ["--model", NO_MODEL, "--out", str(output)], capsys) == (
        f"error: --out {output}: {cause}")


def test_a_warning_is_its_message_alone_on_one_line(capsys):
    """A data file's ignored fields or dropped rows: the message, not `UserWarning` and a source line."""
    import warnings

    def main(argv):
        warnings.warn("data.json: ignoring unknown field(s) 'extra' (first in record 0)")
        warnings.warn("data.json: ignoring unknown field(s) 'extra' (first in record 0)")  # each time, not once

    cli.run(main, [])
    assert capsys.readouterr().err.splitlines() == ["data.json: ignoring unknown field(s) 'extra' (first in record 0)"] * 2
