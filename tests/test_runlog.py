"""Run logs: TensorBoard scalars equal metrics.jsonl, the curves PNG draws them, W&B offline needs no network."""
import json
import sys

import pytest

from training.runlog import RunLog, plot_curves, scalars, smoothed

RECORDS = [
    {"step": 0, "heldout_loss": 2.5, "heldout_acc": {"boolq": 0.5, "piqa": 0.25}},
    {"step": 1, "loss": 2.0, "lr": 3e-4, "tokens_per_s": 100.0, "active_blocks": [0, 3]},
    {"step": 2, "loss": 1.5, "lr": 1.5e-4, "tokens_per_s": 120.0, "active_blocks": [1, 2]},
    {"step": 2, "heldout_loss": 1.75, "heldout_acc": {"boolq": 0.75, "piqa": 0.5}},
]


def test_scalars_flatten_and_skip():
    assert scalars(RECORDS[0]) == {"heldout_loss": 2.5, "heldout_acc/boolq": 0.5, "heldout_acc/piqa": 0.25}
    assert "active_blocks" not in scalars(RECORDS[1]) and "step" not in scalars(RECORDS[1])


def test_tensorboard_events_equal_the_jsonl(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    log = RunLog(tmp_path)
    for record in RECORDS:
        log.write(**record)
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == RECORDS
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "lr", "tokens_per_s", "heldout_loss", "heldout_acc/boolq",
                                             "heldout_acc/piqa"}  # fmt: skip
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.0), (2, 1.5)]
    assert [(e.step, e.value) for e in events.Scalars("heldout_acc/boolq")] == [(0, 0.5), (2, 0.75)]
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_log_purges_the_tensorboard_steps_past_the_checkpoint(tmp_path):
    """Killed after logging step 4, resumed from the checkpoint of step 2: steps 3-4 are logged again, and
    TensorBoard (like metrics.jsonl) keeps each step once, the new value."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    log = RunLog(tmp_path)
    for step in range(1, 5):
        log.write(step=step, loss=float(step), lr=0.1)
    log.tensorboard.flush()  # a kill -9 leaves what was flushed
    log = RunLog(tmp_path, resume_step=2)
    for step in (3, 4):
        log.write(step=step, loss=10.0 * step, lr=0.1)
    log.close()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 30, 40]


def test_curves_png_draws_loss_lr_and_heldout(tmp_path):
    drawn = plot_curves(tmp_path / "c.png", RECORDS)
    assert drawn["training loss"] == {"loss": ([1, 2], [2.0, 1.5])}
    assert drawn["learning rate"] == {"lr": ([1, 2], [3e-4, 1.5e-4])}
    assert drawn["held-out accuracy"]["heldout_acc/piqa"] == ([0, 2], [0.25, 0.5])
    assert set(drawn["held-out loss"]) == {"heldout_loss"}  # its own axis, not under the accuracies
    assert "tokens_per_s" not in {key for panel in drawn.values() for key in panel}
    with pytest.raises(ValueError, match="nothing|no loss"):
        plot_curves(tmp_path / "d.png", [{"step": 1, "tokens_per_s": 3.0}])


def test_without_tensorboard_one_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    said = []
    log = RunLog(tmp_path, say=said.append)
    log.write(step=1, loss=1.0, lr=0.1)
    log.close()
    assert len(said) == 1 and "tensorboard package is not installed" in said[0]
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = RunLog(tmp_path, wandb="offline", config={"lr": 3e-4})
    for record in RECORDS:
        log.write(**record)
    log.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_smoothed_loss_is_a_debiased_moving_average():
    assert smoothed([4.0]) == [4.0]  # debiased: the first value is kept, not pulled towards 0
    assert smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    values = [1.0, 3.0] * 20
    out = smoothed(values)
    assert out[1] == pytest.approx((0.09 * 1 + 0.1 * 3) / (1 - 0.81))
    assert max(out[20:]) - min(out[20:]) < 0.25 * (max(values) - min(values))  # the zig-zag is damped


@pytest.mark.slow
def test_train_logs_the_lr_each_step_used_no_empty_blocks_and_data_statistics_as_plain_lines(
        tiny_dir, data_file, tmp_path, capsys, recwarn):
    """Constant schedule, warmup 2: steps 1, 2, 3 use lr x 0, 0.5, 1 (the scheduler steps after the optimizer).
    A method without sampled blocks shows no `blocks=`; truncated rows are a plain `data:` line, no warning."""
    from helpers import run

    records = run(tiny_dir, data_file, tmp_path, "--method", "full", "--max-steps", "3", "--warmup", "2",
                  "--schedule", "constant", "--seq-len", "16")
    assert [r["lr"] for r in records if "lr" in r] == [0.0, 1.5e-3, 3e-3]
    out, err = capsys.readouterr()
    assert "blocks=" not in err and "loss=" in err
    assert [line for line in out.splitlines() if line.startswith("data: {")] == [
        "data: {'truncated': 8} (from 8 records -> 8 rows; dropped_no_target counts rows with no response token)"]
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
