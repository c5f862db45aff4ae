"""Results table and atomic JSON output."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


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


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
