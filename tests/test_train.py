"""train.py end to end on a tiny random model (real Mistral v1 tokenizer, 4 blocks) and a small
instruction data set written in the test."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from common import cli
import train
import training.step
from data import BatchLoader, build_dataset, load_records
from model import load_model, save_model
from common.errors import Stopped, UserError
from training.checkpoint import checkpoints, read_optimizer
from training.distributed import World

from helpers import final_weights, interrupt_after, run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["full", "lora", "galore", "lisa", "owlore", "owlore-fullrank"])
def test_every_method_lowers_the_loss(tiny_dir, data_file, tmp_path, method, capsys):
    extra = ["--lr", "1e-2"] if method == "lora" else []
    metrics = run(tiny_dir, data_file, tmp_path, "--method", method, "--max-steps", "8", "--period", "4",
                  "--gamma", "4", "--schedule", "constant", *extra, memory_report=True)
    printed = "".join(capsys.readouterr())
    assert f"memory of one step of {method}" in printed and "measured peak" in printed  # before step 1, after step 2
    losses = [m["loss"] for m in metrics]
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses


def test_owlore_trains_only_the_sampled_blocks_and_frees_the_rest(tiny_dir, data_file, tmp_path):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "4", "--gamma", "1",
                  "--period", "2", "--sampling", "uniform", "--seed", "3", "--no-keep-inactive-state")
    active = [tuple(m["active_blocks"]) for m in metrics]
    assert active[0] == active[1] and active[2] == active[3]  # fixed within a period
    assert (tmp_path / "sampling_counts.png").stat().st_size > 0
    assert all(len(a) == 1 for a in active)
    ever_active = {i for a in active for i in a}
    before = torch.load(tiny_dir / "consolidated.00.pth", weights_only=True)
    after = final_weights(tmp_path)
    for i in range(4):
        changed = not torch.equal(before[f"layers.{i}.attention.wq.weight"], after[f"layers.{i}.attention.wq.weight"])
        assert changed == (i in ever_active), (i, active)
    assert not torch.equal(before["tok_embeddings.weight"], after["tok_embeddings.weight"])
    state, _ = read_optimizer(checkpoints(tmp_path)[-1])
    n_outer = 3  # embeddings, final norm, head
    assert len(state) == n_outer + 9 * 1  # only the last period's block: 7 matrices + 2 norms


def test_keep_inactive_state_keeps_every_visited_block(tiny_dir, data_file, tmp_path):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "6", "--gamma", "1",
                  "--period", "2", "--sampling", "uniform", "--seed", "3", "--keep-inactive-state")
    visited = {i for m in metrics for i in m["active_blocks"]}
    state, _ = read_optimizer(checkpoints(tmp_path)[-1])
    assert len(visited) > 1 and len(state) == 3 + 9 * len(visited)


@pytest.mark.parametrize("first", [2, 3])  # at and in the middle of a period
def test_sigint_then_resume_is_bit_identical(tiny_dir, data_file, tmp_path, first, monkeypatch):
    args = ("--method", "owlore", "--period", "2", "--gamma", "2", "--max-steps", "5")
    run(tiny_dir, data_file, tmp_path / "straight", *args)
    interrupt_after(first, monkeypatch)
    with pytest.raises(Stopped, match=rf"^by Ctrl-C after step {first}: wrote the checkpoint "):
        run(tiny_dir, data_file, tmp_path / "split", *args)
    assert [p.name for p in (tmp_path / "split").glob("step-*")] == [f"step-{first:06d}"]
    monkeypatch.undo()
    train.main(["--resume", str(tmp_path / "split")])  # the saved arguments are restored
    straight, split = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert all(torch.equal(straight[k], split[k]) for k in straight)


def test_gradient_accumulation_matches_one_big_batch(tiny_dir, data_file):
    """2 micro-batches of B/2 give the gradient of one batch of B (loss = mean over all target tokens)."""
    model, tokenizer = load_model(tiny_dir)
    dataset = build_dataset(load_records(data_file), tokenizer, 64, pack=False)
    grads = []
    for accum in (1, 2):
        model.zero_grad(set_to_none=True)
        loader = BatchLoader(dataset, batch_size=8, seed=0)
        train.accumulate_gradients(model, loader, World(), torch.device("cpu"), grad_accum=accum, chunked_ce=False)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    # the same fp32 sums in another order: agreement to rounding
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-7, rtol=1e-5) for n in grads[0])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny_dir, data_file, tmp_path, monkeypatch):
    run(tiny_dir, data_file, tmp_path, "--method", "full", "--max-steps", "2", "--save-every", "1")
    good = final_weights(tmp_path)
    real = training.step.next_token_loss_sum
    monkeypatch.setattr(training.step, "next_token_loss_sum", lambda *a: real(*a) * float("nan"))
    with pytest.raises(UserError, match="loss is nan") as err:
        run(tiny_dir, data_file, tmp_path, "--method", "full", "--max-steps", "4", "--resume", str(tmp_path),
            "--allow-changes")
    assert f"the newest checkpoint {tmp_path / 'step-000002'} is untouched" in str(err.value)
    assert (tmp_path / "step-000002").is_dir()
    assert all(torch.equal(good[k], v) for k, v in final_weights(tmp_path).items())


def _model_copy(tiny_dir: Path, tmp: Path, params=None, state=None, tokenizer: bool = True) -> Path:
    """tiny_dir's Meta checkpoint with params.json and/or the weights replaced."""
    out = tmp / "model"
    out.mkdir()
    if tokenizer:
        shutil.copy(tiny_dir / "tokenizer.model", out)
    real = json.loads((tiny_dir / "params.json").read_text())
    (out / "params.json").write_text(json.dumps(params(real) if params else real))
    weights = torch.load(tiny_dir / "consolidated.00.pth", weights_only=True)
    torch.save(state(weights) if state else weights, out / "consolidated.00.pth")
    return out


def _hf_copy(tiny_dir: Path, tmp: Path, config=None, tensors=None) -> Path:
    from safetensors.torch import load_file, save_file

    out = tmp / "hf"
    model, tokenizer = load_model(tiny_dir)
    save_model(model, out, format="hf", tokenizer=tokenizer)
    if config:
        (out / "config.json").write_text(json.dumps(config(json.loads((out / "config.json").read_text()))))
    if tensors:
        (file,) = out.glob("*.safetensors")
        save_file(tensors(load_file(file)), file)
    return out


def _with(state: dict, key: str, value: torch.Tensor) -> dict:
    return {**state, key: value}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _masked_data(tmp: Path) -> Path:
    path = tmp / "masked.json"
    path.write_text(json.dumps([{"instruction": "a long question " * 20, "input": "", "output": "yes"}] * 8))
    return path


def _damaged_resume(tiny_dir: Path, data_file: Path, tmp: Path) -> list[str]:
    run(tiny_dir, data_file, tmp / "run", "--method", "full", "--max-steps", "1")
    (tmp / "run" / "step-000001" / "shards" / "__0_0.distcp").write_bytes(b"")
    return ["--resume", str(tmp / "run")]


def _resume_other_method(tiny_dir: Path, data_file: Path, tmp: Path) -> list[str]:
    run(tiny_dir, data_file, tmp / "run", "--method", "full", "--max-steps", "1")
    return ["--resume", str(tmp / "run"), "--method", "galore"]


def _without_tokenizer(model_dir: Path) -> Path:
    for file in model_dir.glob("tokenizer*"):
        file.unlink()
    return model_dir


Q = "layers.0.attention.wq.weight"
CASES = {  # name: (extra argv, or a function of (tiny_dir, data_file, tmp) giving it; what the line must say)
    "unknown model name": (["--model", "no-such-model"], "--model: 'no-such-model' is neither a known model (llama2-7b, "),
    "named model without weights": (["--model", "llama2-7b"], "--ckpt-dir"),
    "sampling without a sampled method": (["--method", "full", "--sampling", "uniform"], "--sampling: applies"),
    "fused with clipping": (["--fused", "--max-grad-norm", "1"], "--fused: cannot clip by global norm"),
    "indivisible batch": (["--batch-size", "6", "--grad-accum", "4"], "--batch-size: 6 is not divisible"),
    "gamma above the blocks": (["--method", "lisa", "--gamma", "9"], "--gamma: 9 exceeds the model's 4 blocks"),
    "seq-len 1": (["--seq-len", "1"], "--seq-len: must be >= 2, got 1"),
    "save-every -1": (["--save-every", "-1"], "--save-every: must be >= 0, got -1"),
    "lr inf": (["--lr", "inf"], "--lr: must be a finite number, got inf"),
    "dtype fp16 (not for training)": (["--dtype", "fp16"], "--dtype fp16: not for training"),
    "config value as the flag": (lambda t, d, tmp: ["--config", str(_write(tmp / "c.yaml", "gamma: 2.5\n"))],
                                 "c.yaml: --gamma: expected an integer, got '2.5'"),
    "missing data": (["--data", "nope.json"], "--data: nope.json: no such file"),
    "missing eval data": (["--eval-data", "nope.json"], "--eval-data: nope.json: no such file"),
    "every label masked": (lambda t, d, tmp: ["--data", str(_masked_data(tmp)), "--seq-len", "8", "--no-pack", "--no-train-on-prompt"],
                           "masked.json: no training rows of 8 tokens"),
    "fewer rows than a batch": (["--batch-size", "16", "--no-pack"], "train.json: 8 training rows of 512 tokens, fewer than one batch"),
    "model without tokenizer": (lambda t, d, tmp: ["--model", str(_model_copy(t, tmp, tokenizer=False))],
                                "the checkpoint has no tokenizer file"),
    "indivisible dim, no head_dim": (lambda t, d, tmp: ["--model", str(_model_copy(
        t, tmp, params=lambda p: {k: v for k, v in p.items() if k != "head_dim"} | {"dim": 66}))],
        "params.json: params.json head_dim 16.5 * n_heads 4 != dim 66"),
    "n_heads 0": (lambda t, d, tmp: ["--model", str(_model_copy(t, tmp, params=lambda p: p | {"n_heads": 0}))],
                  "params.json: n_heads must be a positive integer, got 0"),
    "string dim": (lambda t, d, tmp: ["--model", str(_model_copy(t, tmp, params=lambda p: p | {"dim": "64"}))],
                   "params.json: dim must be a positive integer, got '64'"),
    "string n_layers": (lambda t, d, tmp: ["--model", str(_model_copy(t, tmp, params=lambda p: p | {"n_layers": "4"}))],
                        "params.json': n_layers must be a positive integer, got '4'"),
    "params.json a list": (lambda t, d, tmp: ["--model", str(_model_copy(t, tmp, params=lambda p: [p]))],
                           "params.json: must hold an object of hyper-parameters, got a list"),
    ".pth holding a list": (lambda t, d, tmp: ["--model", str(_model_copy(t, tmp, state=lambda s: list(s.values())))],
                            "consolidated.00.pth: expected a dict of tensor names to tensors, got a list"),
    "integer tensor": (lambda t, d, tmp: ["--model", str(_model_copy(t, tmp, state=lambda s: _with(s, Q, s[Q].long())))],
                       f"tensor {Q} has non-float dtype torch.int64"),
    "NaN weight": (lambda t, d, tmp: ["--model", str(_model_copy(t, tmp, state=lambda s: _with(s, Q, s[Q] * float("nan"))))],
                   f"tensor {Q} holds NaN or inf"),
    "HF q_proj wrong shape": (lambda t, d, tmp: ["--model", str(_hf_copy(t, tmp, tensors=lambda s: _with(
        s, "model.layers.0.self_attn.q_proj.weight", torch.zeros(64, 60))))],
        "tensor model.layers.0.self_attn.q_proj.weight has shape (64, 60), expected (64, 64)"),
    "HF q_proj wrong rank": (lambda t, d, tmp: ["--model", str(_hf_copy(t, tmp, tensors=lambda s: _with(
        s, "model.layers.0.self_attn.q_proj.weight", torch.zeros(4096))))],
        "tensor model.layers.0.self_attn.q_proj.weight has shape (4096,), expected (64, 64)"),
    "HF rope_scaling missing fields": (lambda t, d, tmp: ["--model", str(_hf_copy(t, tmp, config=lambda c: c | {
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))],
        "rope_scaling needs numbers for low_freq_factor, high_freq_factor, original_max_position_embeddings"),
    "empty shard file on resume": (_damaged_resume, "step-000001/shards: cannot be read"),
    "resume with another method": (_resume_other_method, "these flags change the run being resumed: --method full -> galore"),
    "HF folder without tokenizer": (lambda t, d, tmp: ["--model", str(_without_tokenizer(_hf_copy(t, tmp)))],
                                    "the checkpoint has no tokenizer file"),
}


@pytest.mark.parametrize("case", CASES)
def test_cli_errors_are_one_clear_line(tiny_dir, data_file, tmp_path, case, capsys):
    """`error: <file or flag>: <cause>` on stderr, exit status 1, no traceback."""
    extra, message = CASES[case]
    if callable(extra):
        extra = extra(tiny_dir, data_file, tmp_path)
    capsys.readouterr()
    argv = ["--model", str(tiny_dir), "--data", str(data_file), "--out", str(tmp_path / "out"), "--gamma", "2", *extra]
    with pytest.raises(SystemExit) as err:
        cli.run(train.main, argv)
    line = err.value.code  # what Python prints on stderr before exiting with status 1
    assert isinstance(line, str) and line.startswith("error: ") and "\n" not in line, line
    assert message in line


def test_debug_shows_the_traceback(tiny_dir, data_file, tmp_path):
    with pytest.raises(UserError, match="--seq-len"):
        cli.run(train.main, ["--model", str(tiny_dir), "--data", str(data_file), "--seq-len", "1", "--debug"])


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path):
    from training.args import parse_args
    (tmp_path / "d.json").write_text("[]")
    (tmp_path / "run.yaml").write_text(f"method: lisa\ngamma: 3\nlr: 1.0e-5\nupdate-proj-gap: 7\ndata: {tmp_path / 'd.json'}\n")
    args = parse_args(["--config", str(tmp_path / "run.yaml"), "--gamma", "4"])
    assert (args.method, args.gamma, args.lr, args.update_proj_gap, args.sampling) == ("lisa", 4, 1e-5, 7, "uniform")
    (tmp_path / "bad.json").write_text('{"gama": 3}')
    with pytest.raises(UserError, match="bad.json: unknown keys gama"):
        parse_args(["--config", str(tmp_path / "bad.json")])


@pytest.mark.parametrize("method, eps", [("full", 1e-8), ("lora", 1e-8), ("lisa", 1e-8), ("owlore-fullrank", 1e-8),
                                         ("galore", 1e-6), ("owlore", 1e-6)])
def test_adam_eps_defaults_to_the_official_runs(method, eps, data_file):
    from training.args import parse_args

    assert parse_args(["--data", str(data_file), "--method", method]).eps == eps
    assert parse_args(["--data", str(data_file), "--method", method, "--eps", "1e-7"]).eps == 1e-7


def test_the_optimizer_gets_the_eps(tiny_dir, data_file, tmp_path):
    run(tiny_dir, data_file, tmp_path, "--method", "galore", "--max-steps", "1", "--eps", "3e-7")
    _, groups = read_optimizer(checkpoints(tmp_path)[-1])
    assert [g["eps"] for g in groups] == [3e-7, 3e-7]


def test_lean_sets_randomized_svd_unless_svd_is_given(data_file):
    from training.args import parse_args
    assert parse_args(["--data", str(data_file), "--lean"]).svd == "randomized"
    assert parse_args(["--data", str(data_file), "--lean", "--svd", "exact"]).svd == "exact"
