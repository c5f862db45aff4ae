"""The report of bench.reproduce: per-arm table, paired contrasts with their intervals and verdicts, forest plot.

The claims and the rule that decides each are fixed here, before any number is seen (bench/stats.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.stats import METRICS, Arm, forest_plot, paired_difference, verdict
from common.errors import UserError

TASKS = ("boolq", "piqa", "social_iqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
CLAIMS = (  # (a, b, what the paper says): the claim is always "a is better than b"
    ("owlore", "full", "OwLore beats full fine-tuning (+1.1 points on the 8-task mean, LLaMA-2-7B)"),
    ("owlore-fullrank", "lisa-equal", "outlier-weighted sampling beats uniform sampling at equal gamma and K"),
    ("owlore", "lisa", "OwLore beats the LISA baseline"),
    ("owlore", "owlore-reverse", "sign check: drawing outlier-rich blocks beats drawing outlier-poor ones"),
    ("owlore", "galore", "OwLore beats GaLore"),
    ("owlore", "lora", "OwLore beats LoRA"),
)
CLAIMED = {"owlore - full": 1.1}


def arms_of(results: list[dict]) -> tuple[dict[str, Arm], np.ndarray, list[str]]:
    """Main runs as bench.stats Arms on the rows every run scored, in one (task, doc_id) order."""
    main = [r for r in results if r["kind"] in ("main", "base")]
    if not main:
        raise UserError("--results: no finished main run to report")
    rows = sorted(set.intersection(*(set(zip(r["tasks"], r["doc_ids"])) for r in main)))
    tasks = sorted({t for t, _ in rows}, key=lambda t: TASKS.index(t) if t in TASKS else len(TASKS))
    task = np.array([tasks.index(t) for t, _ in rows])
    arms: dict[str, Arm] = {}
    for arm in dict.fromkeys(r["arm"] for r in main):
        runs = sorted((r for r in main if r["arm"] == arm), key=lambda r: r["seed"])
        values = []
        for r in runs:
            where = {row: i for i, row in enumerate(zip(r["tasks"], r["doc_ids"]))}
            index = [where[row] for row in rows]
            values.append((np.array(r["rows"]["acc"])[index], np.array(r["rows"]["nll"])[index],
                           np.array(r["rows"]["ntok"], dtype=float)[index]))
        arms[arm] = Arm(np.stack([v[0] for v in values]), np.stack([v[1] for v in values]), values[0][2],
                        tuple(r["seed"] for r in runs))
    return arms, task, tasks


def report(results: list[dict], out: Path, n_boot: int) -> str:
    arms, task, tasks = arms_of(results)
    base = arms.pop("base", None)
    contrasts = [(f"{a} - {b}", a, b, what) for a, b, what in CLAIMS if a in arms and b in arms]
    contrasts += [(f"{a} - full", a, "full", None) for a in arms if a != "full" and "full" in arms
                  and f"{a} - full" not in {c[0] for c in contrasts}]
    intervals = {(label, m): paired_difference(m, arms[a], arms[b], task, n_boot) for label, a, b, _ in contrasts
                 for m in METRICS}
    verdicts = {label: verdict("mean8", intervals[label, "mean8"]) for label, *_ in contrasts}
    lines = [headline(verdicts, [c for c in contrasts if c[3]]), "",
             "Rules, fixed before the runs: each claim says arm a is better than arm b. On the paired 95 % bootstrap "
             "interval of a - b (seeds and held-out rows resampled), the claim is **supported** when the whole interval "
             "is above 0 (below 0 for NLL), **refuted** when it is wholly on the other side, **inconclusive** when it "
             "holds 0. The verdict is read on the paper's metric, the unweighted mean of the 8 task accuracies; the "
             "row-pooled accuracy and the answer NLL are reported beside it.", "",
             f"Model {results[0]['protocol']['model']} (SmolLM2-135M-Instruct is the quantised, instruction-tuned "
             f"Q4_1 GGUF), {len(task)} held-out rows, " + ", ".join(f"{t} {int((task == i).sum())}" for i, t in enumerate(tasks))
             + f"; protocol {json.dumps(results[0]['protocol'])}.", "",
             "| arm | seeds | lr | 8-task mean acc | pooled acc | answer NLL/token | peak GiB | tokens/s | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    if base is not None:
        lines.append(arm_row("pre-trained", base, task, None, []))
    for arm, values in arms.items():
        lines.append(arm_row(arm, values, task, lr_of(arm, results), [r for r in results if r["arm"] == arm and r["kind"] == "main"]))
    lines += ["", "| contrast (a - b) | seeds | 8-task mean, points [95 % CI] | pooled, points | answer NLL/token | verdict | claim |",
              "|---|---|---|---|---|---|---|"]
    for label, a, b, what in contrasts:
        cells = [f"{intervals[label, m].estimate:+.2f} [{intervals[label, m].low:+.2f}, {intervals[label, m].high:+.2f}]"
                 if m != "nll" else f"{intervals[label, m].estimate:+.4f} [{intervals[label, m].low:+.4f}, "
                 f"{intervals[label, m].high:+.4f}]" for m in METRICS]
        lines.append(f"| {label} | {intervals[label, 'mean8'].seeds} | " + " | ".join(cells)
                     + f" | {verdicts[label]} | {what or ''} |")
    tuned = [r for r in results if r["kind"] == "tune"]
    if tuned:
        lines += ["", "lr tuning (answer NLL/token on the 10 % fold, seed 0): " + "; ".join(
            f"{arm}: " + ", ".join(f"{r['lr']:g} {sum(r['rows']['nll']) / sum(r['rows']['ntok']):.3f}"
                                   for r in sorted((r for r in tuned if r["arm"] == arm), key=lambda r: r["lr"]))
            for arm in dict.fromkeys(r["arm"] for r in tuned))]
    forest_plot([(label, intervals[label, "mean8"]) for label, *_ in contrasts], out / "forest.png",
                "difference in the 8-task mean accuracy (points), 95 % paired bootstrap CI", CLAIMED)
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def headline(verdicts: dict[str, str], claims: list) -> str:
    decided = {label: v for label, v in verdicts.items() if v != "inconclusive" and label in {c[0] for c in claims}}
    if not decided:
        return ("**This result cannot distinguish the methods**: every claim's interval holds 0 "
                "(inconclusive at this number of seeds, rows and steps).")
    return "**Verdicts**: " + "; ".join(f"{label}: {v}" for label, v in verdicts.items() if label in {c[0] for c in claims}) + "."


def lr_of(arm: str, results: list[dict]) -> float | None:
    lrs = {r["lr"] for r in results if r["arm"] == arm and r["kind"] == "main"}
    return lrs.pop() if len(lrs) == 1 else None


def arm_row(name: str, arm: Arm, task: np.ndarray, lr: float | None, runs: list[dict]) -> str:
    mean8 = 100 * np.mean([arm.acc[:, task == t].mean() for t in range(task.max() + 1)])
    nll = arm.nll.sum() / (arm.ntok.sum() * len(arm.seeds))
    peak = max((r["peak_memory"] or 0 for r in runs), default=0) / 2**30
    speed = np.median([r["tokens_per_s"] for r in runs]) if runs else float("nan")
    wall = np.median([r["wall_s"] for r in runs]) if runs else float("nan")
    return (f"| {name} | {len(arm.seeds)} | {lr if lr is not None else '-'} | {mean8:.2f} | {100 * arm.acc.mean():.2f} | "
            f"{nll:.4f} | {peak:.2f} | {speed:.0f} | {wall:.0f} |")
