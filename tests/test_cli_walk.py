"""One wrong value per flag and per input file of every command line: each is one line on stderr,
`error: <the flag or file>: <cause>`, a non-zero exit status and no traceback; the cheap ones before any model
is loaded. Run in-process through common.cli.run, as the entry points do."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import eval.__main__
import model as model_package
import sampling.__main__
import train
import training.export
from common import cli

CASES = []  # (id, command, argv with {model} {data} {tmp} {dir} {corrupt} {yaml_list} {ckpt}, expected text, model loads)


def case(name, command, argv, expected, loads=False):
    CASES.append(pytest.param(command, argv, expected, loads, id=name))


T = "train"  # train.py; its argv below extends BASE
BASE = "--model {model} --data {data} --out {tmp}/out --max-steps 1 --gamma 2 --seq-len 64 --batch-size 4 --no-memory-report --save-format none"
for flag, value, expected in [
    ("--method", "nope", "--method: invalid choice: 'nope'"), ("--template", "nope", "--template: invalid choice"),
    ("--schedule", "nope", "--schedule: invalid choice"), ("--sampling", "nope", "--sampling: invalid choice"),
    ("--seq-len", "0", "--seq-len: must be >= 2, got 0"), ("--gamma", "0", "--gamma: must be >= 1"),
    ("--period", "-1", "--period: must be >= 1"), ("--M", "0", "--M: must be > 0"), ("--lr", "0", "--lr: must be > 0"),
    ("--lr", "nan", "--lr: must be a finite number"), ("--batch-size", "0", "--batch-size: must be >= 1"),
    ("--grad-accum", "0", "--grad-accum: must be >= 1"), ("--epochs", "0", "--epochs: must be > 0"),
    ("--warmup", "-1", "--warmup: must be >= 0"), ("--rank", "0", "--rank: must be >= 1"),
    ("--lora-rank", "0", "--lora-rank: must be >= 1"), ("--lora-alpha", "-2", "--lora-alpha: must be > 0"),
    ("--lora-dropout", "-0.1", "--lora-dropout: must be >= 0"), ("--lora-dropout", "1.5", "--lora-dropout: must be < 1, got 1.5"),
    ("--seed", "-1", "--seed: must be >= 0"), ("--keep-checkpoints", "0", "--keep-checkpoints: must be >= 1"),
    ("--save-every", "-1", "--save-every: must be >= 0"), ("--eval-every", "x", "--eval-every: expected an integer"),
    ("--eval-limit", "0", "--eval-limit: must be >= 1"), ("--calib-windows", "0", "--calib-windows: must be >= 1"),
    ("--calib-seq-len", "1", "--calib-seq-len: must be >= 2"), ("--weight-decay", "-1", "--weight-decay: must be >= 0"),
    ("--eps", "-1", "--eps: must be >= 0"), ("--max-steps", "0", "--max-steps: must be >= 1"),
    ("--max-grad-norm", "-1", "--max-grad-norm: must be >= 0"), ("--update-proj-gap", "0", "--update-proj-gap: must be >= 1"),
    ("--galore-scale", "0", "--galore-scale: must be > 0"), ("--svd-oversample", "-1", "--svd-oversample: must be >= 0"),
    ("--dtype", "fp8", "--dtype: invalid choice"), ("--dtype", "fp16", "--dtype fp16: not for training"),
    ("--device", "nope", "--device: 'nope' is not a device"), ("--wandb", "nope", "--wandb: invalid choice"),
    ("--fixed-layers", "a,b", "--fixed-layers: expected comma-separated block indices"),
    ("--proj-type", "nope", "--proj-type: invalid choice"), ("--projector", "nope", "--projector: invalid choice"),
    ("--save-format", "nope", "--save-format: invalid choice"), ("--reduce-dtype", "nope", "--reduce-dtype: invalid choice"),
    ("--plugin", "no_such_plugin_module", "--plugin no_such_plugin_module"),
    ("--svd", "nope", "--svd: invalid choice"),
]:
    case(f"train {flag} {value}", T, f"{BASE} {flag} {value}", expected)
for name, argv, expected, loads in [
    ("unknown flag", "--nope 1", "unrecognized arguments: --nope", False),
    ("model missing", "--model {tmp}/missing", "--model: '{tmp}/missing' is neither a known model", False),
    ("model an empty folder", "--model {dir}", "{dir}", True),
    ("model a json file", "--model {corrupt}", "{corrupt}", True),
    ("ckpt-dir missing", "--model smollm2-135m --ckpt-dir {tmp}/missing", "--ckpt-dir: {tmp}/missing: no such folder", False),
    ("data missing", "--data {tmp}/missing.json", "--data: {tmp}/missing.json: no such file", False),
    ("data a folder", "--data {dir}", "--data: {dir}: no such file", False),
    ("data corrupt", "--data {corrupt}", "{corrupt}", False),
    ("data not records", "--data {yaml_list}", "{yaml_list}", False),
    ("eval-data missing", "--eval-data {tmp}/missing.json", "--eval-data: {tmp}/missing.json: no such file", False),
    ("eval-data corrupt", "--eval-data {corrupt}", "{corrupt}", False),
    ("calib missing", "--calib {tmp}/missing.txt", "--calib: {tmp}/missing.txt: no such file", False),
    ("calib a folder", "--calib {dir}", "--calib: {dir}: no such file", False),
    ("config missing", "--config {tmp}/missing.yaml", "--config: {tmp}/missing.yaml: neither a file nor a recipe", False),
    ("config corrupt", "--config {bad_yaml}", "{bad_yaml}: not valid YAML", False),
    ("config a list", "--config {yaml_list}", "{yaml_list}: must hold a mapping", False),
    ("config unknown key", "--config {unknown_key}", "{unknown_key}: unknown keys nope", False),
    ("config bad value", "--config {bad_value}", "{bad_value}: --lr: must be > 0", False),
    ("scores a folder", "--scores {dir}", "--scores {dir}: is a folder", False),
    ("scores corrupt", "--scores {corrupt}", "--scores {corrupt}: corrupt outlier-ratio cache", True),
    ("tokenizer missing", "--tokenizer {tmp}/missing.model", "--tokenizer: {tmp}/missing.model: no such file or folder", False),
    ("tokenizer a folder without one", "--tokenizer {dir}", "--tokenizer: {dir}: a folder without tokenizer.json", False),
    ("out a file", "--out {corrupt}", "--out {corrupt}: is a file", False),
    ("resume missing", "--resume {tmp}/missing", "--resume {tmp}/missing: no checkpoint", False),
    ("resume corrupt trainer.pt", "--resume {ckpt}", "{ckpt}/trainer.pt: cannot be read", False),
    ("gamma beyond the blocks", "--gamma 9", "--gamma: 9 exceeds the model's 4 blocks", True),
    ("fixed layer beyond the blocks", "--sampling fixed --fixed-layers 0,9",
     "--fixed-layers: [9] not among the model's blocks 0..3", True),
    ("seq-len beyond the context", "--seq-len 1000000", "--seq-len: 1000000 tokens exceed the model's context", True),
    ("warmup beyond max-steps", "--warmup 5", "--warmup: 5 steps exceed --max-steps 1", False),
]:
    case(f"train {name}", T, f"{BASE} {argv}", expected, loads)

E = "export"
for name, argv, expected in [
    ("checkpoint missing", "{tmp}/missing --format hf", "--resume {tmp}/missing: no checkpoint"),
    ("checkpoint corrupt", "{ckpt} --format hf", "{ckpt}/trainer.pt: cannot be read"),
    ("format unknown", "{ckpt} --format nope", "--format: invalid choice"),
    ("meta-shards 0", "{ckpt} --format meta --meta-shards 0", "--meta-shards: must be >= 1"),
    ("gguf-type unknown", "{ckpt} --format gguf --gguf-type Q2", "--gguf-type: invalid choice"),
    ("dtype unknown", "{ckpt} --format hf --dtype fp8", "--dtype: invalid choice"),
    ("out a file", "{good_ckpt} --format hf --out {corrupt}", "--out {corrupt}: is a file"),
    ("model missing", "{good_ckpt} --format hf --model {tmp}/missing --out {tmp}/x", "--model: '{tmp}/missing' is neither"),
]:
    case(f"export {name}", E, argv, expected)

V = "eval"
EVAL = "--model {model} --tasks boolq --limit 1"
for name, argv, expected, loads in [
    ("tasks unknown", "--model {model} --tasks nope", "--tasks: unknown task 'nope'", False),
    ("limit 0", f"{EVAL} --limit 0", "--limit: must be >= 1", False),
    ("num-fewshot -1", f"{EVAL} --num-fewshot -1", "--num-fewshot: must be >= 0", False),
    ("batch-size 0", f"{EVAL} --batch-size 0", "--batch-size: must be >= 1", False),
    ("seed x", f"{EVAL} --seed x", "--seed: expected an integer", False),
    ("share-context nope", f"{EVAL} --share-context nope", "--share-context: invalid choice", False),
    ("output a folder", f"{EVAL} --output {{dir}}", "--output {dir}: is a folder", False),
    ("output under a file", f"{EVAL} --output {{corrupt}}/r.json", "--output {corrupt}/r.json", False),
    ("device unknown", f"{EVAL} --device nope", "--device: 'nope' is not a device", False),
    ("model missing", "--model {tmp}/missing --tasks boolq", "--model: '{tmp}/missing' is neither", False),
    ("dtype unknown", f"{EVAL} --dtype fp8", "--dtype: invalid choice", False),
    ("tokenizer missing", f"{EVAL} --tokenizer {{tmp}}/missing.model", "--tokenizer: {tmp}/missing.model: no such file", False),
    ("generate data missing", "generate --model {model} --dataset boolq --data {tmp}/missing.json",
     "{tmp}/missing.json", False),
    ("generate data corrupt", "generate --model {model} --dataset boolq --data {corrupt}", "{corrupt}", False),
    ("generate dataset unknown", "generate --model {model} --dataset nope --data {corrupt}", "--dataset nope", False),
    ("generate max-new-tokens 0", "generate --model {model} --dataset boolq --data {corrupt} --max-new-tokens 0",
     "--max-new-tokens: must be >= 1", False),
    ("mtbench questions missing", "mtbench --model {model} --questions {tmp}/q.jsonl --answers {tmp}/a.jsonl",
     "{tmp}/q.jsonl", False),
    ("mtbench questions corrupt", "mtbench --model {model} --questions {corrupt} --answers {tmp}/a.jsonl",
     "{corrupt}", False),
    ("mtbench answers a folder", "mtbench --model {model} --questions {questions} --answers {dir}",
     "--answers {dir}: is a folder", False),
    ("mtbench judge-prompts missing", "mtbench --model {model} --questions {questions} --answers {tmp}/a.jsonl "
     "--judge-prompts {tmp}/p.jsonl", "{tmp}/p.jsonl", False),
    ("mtbench judge-only answers missing", "mtbench --model {model} --questions {questions} --answers {tmp}/a.jsonl "
     "--judge-only", "{tmp}/a.jsonl", False),
]:
    case(f"eval {name}", V, argv, expected, loads)

S = "sampling"
SAMPLE = "--model {model} --out {tmp}/s.json --n-windows 1 --seq-len 8"
for name, argv, expected, loads in [
    ("calib missing", f"{SAMPLE} --calib {{tmp}}/missing.txt", "{tmp}/missing.txt", False),
    ("calib a folder", f"{SAMPLE} --calib {{dir}}", "{dir}", False),
    ("out a folder", "--model {model} --out {dir}", "--out {dir}: is a folder", False),
    ("plot under a file", f"{SAMPLE} --plot {{corrupt}}/p.png", "--plot {corrupt}/p.png", False),
    ("n-windows 0", f"{SAMPLE} --n-windows 0", "--n-windows: must be >= 1", False),
    ("batch-size 0", f"{SAMPLE} --batch-size 0", "--batch-size: must be >= 1", False),
    ("seed -1", f"{SAMPLE} --seed -1", "--seed: must be >= 0", False),
    ("gamma 0", f"{SAMPLE} --gamma 0", "--gamma: must be >= 1", False),
    ("device unknown", f"{SAMPLE} --device nope", "--device: 'nope' is not a device", False),
    ("model missing", "--model {tmp}/missing --out {tmp}/s.json", "--model: '{tmp}/missing' is neither", False),
    ("gamma beyond the blocks", f"{SAMPLE} --gamma 9", "--gamma: 9 exceeds the 4 blocks", True),
]:
    case(f"sampling {name}", S, argv, expected, loads)


@pytest.fixture
def files(tiny_dir, data_file, tmp_path) -> dict[str, str]:
    (tmp_path / "folder").mkdir()
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('[{"instruction": "a", "output": ')
    yaml_list = tmp_path / "list.yaml"
    yaml_list.write_text("- 1\n- 2\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: [1\n")
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text("nope: 1\n")
    bad_value = tmp_path / "value.yaml"
    bad_value.write_text("lr: -1\n")
    ckpt = tmp_path / "run" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer.pt").write_bytes(b"not a torch file")
    good = tmp_path / "good" / "step-000001"
    good.mkdir(parents=True)
    torch.save({"step": 1, "args": {"model": str(tiny_dir), "method": "full"}}, good / "trainer.pt")
    torch.save({"x": torch.zeros(1)}, good / "model.pt")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "category": "x", "turns": ["a", "b"]}) + "\n")
    return dict(model=str(tiny_dir), data=str(data_file), tmp=str(tmp_path), dir=str(tmp_path / "folder"),
                corrupt=str(corrupt), yaml_list=str(yaml_list), bad_yaml=str(bad_yaml), unknown_key=str(unknown_key),
                bad_value=str(bad_value), ckpt=str(ckpt), good_ckpt=str(good), questions=str(questions))


MAINS = {T: train.main, E: training.export.main, V: eval.__main__._dispatch, S: sampling.__main__.main}


@pytest.mark.parametrize("command, argv, expected, loads", CASES)
def test_one_wrong_value_is_one_line_naming_it(command, argv, expected, loads, files, capsys, monkeypatch):
    if not loads:  # refused before the model loads
        def no_model(*a, **k):
            raise AssertionError("loaded the model before refusing the input")

        for target in (train, training.export, model_package):
            monkeypatch.setattr(target, "load_model", no_model)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.run(MAINS[command], argv.format(**files).split())
    line, err = stop.value.code, capsys.readouterr().err
    assert isinstance(line, str) and line.startswith("error: ") and "\n" not in line, line
    assert expected.format(**files) in line
    assert "Traceback" not in err
    assert not Path(files["tmp"], "out", "step-000001").exists()
