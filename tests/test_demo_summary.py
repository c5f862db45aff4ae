"""`make demo`'s summary: what the run did, in aligned columns (scripts/demo.py)."""
import re

from scripts.demo import summary_lines

RECORDS = [
    {"step": 0, "heldout_loss": 2.512, "heldout_acc": {"boolq": 0.5, "arc_challenge": 0.3}},
    {"step": 1, "loss": 3.1, "peak_memory": 2**31}, {"step": 2, "loss": 2.0, "peak_memory": 3 * 2**30},
    {"step": 2, "heldout_loss": 2.3, "heldout_acc": {"boolq": 0.6, "arc_challenge": 0.35}},
]


def test_summary_is_aligned_and_says_before_and_after():
    lines = summary_lines(RECORDS, 300.0, {"owlore": int(1.5 * 2**30), "full": int(2.25 * 2**30)})
    text = "\n".join(lines)
    assert re.search(r"held-out acc arc_challenge +0\.300 +0\.350", text)  # the long task name has its own column
    assert re.search(r"held-out answer NLL +2\.512 +2\.300", text)
    assert re.search(r"training loss \(steps 1 and 2\) +3\.100 +2\.000", text)
    assert "simulated" in text and re.search(r"OwLore +1\.50 GiB", text) and re.search(r"full fine-tuning +2\.25 GiB", text)
    assert re.search(r"measured \(RSS\) +3\.00 GiB", text)
    numbers = [line for line in lines if re.search(r"\d\.\d{3}$", line)]
    assert len(numbers) == 4 and len({len(line) for line in numbers}) == 1  # every value column ends at one place
    assert len({line.index(".") for line in numbers}) == 1
