"""The results table."""
from __future__ import annotations



def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def results_table(out: dict) -> str:
    """Markdown table: task, n, acc, acc_stderr, acc_norm, acc_norm_stderr (tasks, then groups)."""
    lines = ["| task | n | acc | ± | acc_norm | ± |", "|---|---:|---:|---:|---:|---:|"]
    rows = list(out["results"].items()) + [(f"**{k}**", v) for k, v in out.get("groups", {}).items()]
    for name, r in rows:
        lines.append(f"| {name} | {r['n']} | {_fmt(r['acc'])} | {_fmt(r.get('acc_stderr'))} | "
                     f"{_fmt(r.get('acc_norm'))} | {_fmt(r.get('acc_norm_stderr'))} |")
    return "\n".join(lines)

