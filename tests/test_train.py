"""train.py end to end on a tiny random model (real Mistral v1 tokenizer, 4 blocks) and a small
instruction data set written in the test."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train
from common.assets import asset_path
from data import BatchLoader, build_dataset, load_records
from model import Transformer, get_config, load_model, save_model
from training.distributed import World

ROOT = Path(__file__).resolve().parents[1]
QA = [("What colour is the sky on a clear day?", "Blue."), ("How many legs does a spider have?", "Eight."),
      ("What is two plus three?", "Five."), ("Which animal says moo?", "A cow."),
      ("What do bees make?", "Honey."), ("What is frozen water called?", "Ice."),
      ("Which planet do we live on?", "Earth."), ("What falls from clouds when it rains?", "Water.")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = get_config("tiny", n_layers=4, vocab_size=32000, max_seq_len=256)
    out = tmp_path_factory.mktemp("tiny-model")
    save_model(Transformer(config), out, format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps([{"instruction": q, "input": "", "output": a} for q, a in QA]))
    return path


def run(tiny_dir: Path, data_file: Path, out: Path, *extra: str) -> list[dict]:
    train.main(["--model", str(tiny_dir), "--data", str(data_file), "--out", str(out), "--seq-len", "64", "--no-pack",
                "--batch-size", "8", "--lr", "3e-3", "--save-format", "none", "--seed", "1", "--rank", "8",
                "--update-proj-gap", "2", "--gamma", "2", "--period", "2", "--calib-windows", "2",
                "--calib-seq-len", "16", "--M", "3", *extra])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = [p for p in out.iterdir() if p.name.startswith("step-")]
    return torch.load(ckpt / "model.pt", weights_only=True)


@pytest.mark.parametrize("method", ["full", "lora", "galore", "lisa", "owlore", "owlore-fullrank"])
def test_every_method_lowers_the_loss(tiny_dir, data_file, tmp_path, method):
    extra = ["--lr", "1e-2"] if method == "lora" else []
    metrics = run(tiny_dir, data_file, tmp_path, "--method", method, "--max-steps", "8", "--period", "4",
                  "--gamma", "4", "--schedule", "constant", *extra)
    losses = [m["loss"] for m in metrics]
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses


def test_owlore_trains_only_the_sampled_blocks_and_frees_the_rest(tiny_dir, data_file, tmp_path):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "4", "--gamma", "1",
                  "--period", "2", "--sampling", "uniform", "--seed", "3")
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
    state = torch.load(next(tmp_path.glob("step-*")) / "optimizer.pt", weights_only=True)["state"]
    n_outer = 3  # embeddings, final norm, head
    assert len(state) == n_outer + 9 * 1  # only the last period's block: 7 matrices + 2 norms


def test_keep_inactive_state_keeps_every_visited_block(tiny_dir, data_file, tmp_path):
    metrics = run(tiny_dir, data_file, tmp_path, "--method", "owlore", "--max-steps", "6", "--gamma", "1",
                  "--period", "2", "--sampling", "uniform", "--seed", "3", "--keep-inactive-state")
    visited = {i for m in metrics for i in m["active_blocks"]}
    state = torch.load(next(tmp_path.glob("step-*")) / "optimizer.pt", weights_only=True)["state"]
    assert len(visited) > 1 and len(state) == 3 + 9 * len(visited)


@pytest.mark.parametrize("first", [2, 3])  # at and in the middle of a period
def test_sigint_then_resume_is_bit_identical(tiny_dir, data_file, tmp_path, first, monkeypatch):
    args = ("--method", "owlore", "--period", "2", "--gamma", "2", "--max-steps", "5")
    run(tiny_dir, data_file, tmp_path / "straight", *args)
    real, calls = train.accumulate_gradients, []

    def interrupted_after_first_steps(*a):
        result = real(*a)
        calls.append(1)
        if len(calls) == first:
            os.kill(os.getpid(), signal.SIGINT)  # the loop finishes this step, saves and stops
        return result

    monkeypatch.setattr(train, "accumulate_gradients", interrupted_after_first_steps)
    run(tiny_dir, data_file, tmp_path / "split", *args)
    assert [p.name for p in (tmp_path / "split").glob("step-*")] == [f"step-{first:06d}"]
    monkeypatch.undo()
    run(tiny_dir, data_file, tmp_path / "split", *args, "--resume", str(tmp_path / "split"))
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
        args = SimpleNamespace(grad_accum=accum, chunked_ce=False, out="unused")
        train.accumulate_gradients(model, loader, args, World(), torch.device("cpu"))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    # the same fp32 sums in another order: agreement to rounding
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-7, rtol=1e-5) for n in grads[0])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny_dir, data_file, tmp_path, monkeypatch):
    run(tiny_dir, data_file, tmp_path, "--method", "full", "--max-steps", "2", "--save-every", "1")
    good = final_weights(tmp_path)
    real = train.token_loss_sum
    monkeypatch.setattr(train, "token_loss_sum", lambda *a: real(*a) * float("nan"))
    with pytest.raises(SystemExit, match="loss is nan"):
        run(tiny_dir, data_file, tmp_path, "--method", "full", "--max-steps", "4", "--resume", str(tmp_path))
    assert (tmp_path / "step-000002").is_dir()
    assert all(torch.equal(good[k], v) for k, v in final_weights(tmp_path).items())


@pytest.mark.parametrize("flags, message", [
    (["--model", "no-such-model"], "no-such-model"),
    (["--model", "llama2-7b"], "llama2-7b"),
    (["--method", "full", "--sampling", "uniform"], "--sampling applies"),
    (["--fused", "--max-grad-norm", "1"], "--fused"),
    (["--batch-size", "6", "--grad-accum", "4"], "not divisible"),
    (["--method", "lisa", "--gamma", "9"], "exceeds"),
])
def test_cli_errors_are_one_clear_line(tiny_dir, data_file, tmp_path, flags, message, capsys):
    argv = ["--model", str(tiny_dir), "--data", str(data_file), "--out", str(tmp_path), *flags]
    with pytest.raises((SystemExit, Exception)) as err:
        train.main(argv)
    text = str(err.value) + capsys.readouterr().err
    assert message in text


def test_torchrun_two_processes_match_one_process(tiny_dir, data_file, tmp_path):
    common = ["--model", str(tiny_dir), "--data", str(data_file), "--seq-len", "64", "--no-pack", "--batch-size", "8",
              "--lr", "3e-3", "--save-format", "none", "--method", "owlore-fullrank", "--gamma", "2", "--period", "2",
              "--rank", "8", "--update-proj-gap", "2", "--max-steps", "3", "--calib-windows", "2", "--calib-seq-len", "16", "--M", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(ROOT / "train.py"), *common, "--out", str(tmp_path / "ddp")],
                   check=True, cwd=ROOT, env=env, capture_output=True)
    train.main([*common, "--out", str(tmp_path / "single")])
    ddp, single = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single")
    # Same global batch and blocks; gradients summed in another order agree to fp32 rounding. (Full-rank
    # AdamW here: a GaLore projector from SVD can rotate within near-degenerate singular values under
    # rounding-level changes of the gradient, which would test LAPACK rather than our synchronisation.)
    assert all(torch.allclose(ddp[k], single[k], atol=1e-5, rtol=1e-4) for k in ddp)


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path):
    from training.args import parse_args
    (tmp_path / "run.yaml").write_text("method: lisa\ngamma: 3\nlr: 1.0e-5\nupdate-proj-gap: 7\ndata: d.json\n")
    args = parse_args(["--config", str(tmp_path / "run.yaml"), "--gamma", "4"])
    assert (args.method, args.gamma, args.lr, args.update_proj_gap, args.sampling) == ("lisa", 4, 1e-5, 7, "uniform")
    (tmp_path / "bad.json").write_text('{"gama": 3}')
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "bad.json")])
