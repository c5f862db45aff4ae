"""Held-out evaluation during training (training/heldout.py): a progress bar only when asked."""
from data import load_records
from model import load_model
from training.heldout import HeldOut


def test_heldout_loss_shows_a_progress_bar_only_when_asked(tiny_dir, data_file, capsys):
    model, tokenizer = load_model(str(tiny_dir))
    records = load_records(data_file)
    quiet = HeldOut(records, tokenizer, batch_size=3).evaluate(model)
    assert capsys.readouterr().err == ""
    shown = HeldOut(records, tokenizer, batch_size=3, progress=True).evaluate(model)
    err = capsys.readouterr().err
    assert shown == quiet and quiet["heldout_loss"] > 0
    assert "held-out loss:" in err and f"/{-(-len(records) // 3)} " in err  # the bar with its number of batches
