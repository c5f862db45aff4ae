"""Load a task's docs (HF arrow files, or JSON/JSONL with the harness's field names) and check them."""
from __future__ import annotations

import json
from pathlib import Path

from data.arrow import read_split, task_split_dir
from eval.tasks import Task


def read_json_records(path: str | Path) -> list[dict]:
    """Rows of a JSON list file or a JSONL file (one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON ({err})") from err
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a list of JSON objects")
    return rows


def check_docs(task: Task, docs: list[dict], source: str) -> None:
    """Render every doc once so a row with missing or malformed fields fails here, by name."""
    for i, doc in enumerate(docs):
        try:
            choices, gold = task.choices(doc), task.gold(doc)
            task.text(doc)
            if task.partial:
                task.target(doc)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise ValueError(f"{source}: row {i} is not a valid {task.name} doc: {type(err).__name__} {err}") from err
        if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{source}: row {i}: {task.name} needs >= 2 string choices, got {choices!r}")
        if not 0 <= gold < len(choices):
            raise ValueError(f"{source}: row {i}: gold index {gold} outside the {len(choices)} choices")


def load_docs(task: Task, split: str, path: str | Path | None = None) -> list[dict]:
    """Checked docs of one split: from `path` (.json/.jsonl/.arrow split folder) or the fetched arrow files."""
    if path is None:
        folder = task_split_dir(task.dataset, split, task.subject)
        docs, source = read_split(folder), str(folder)
    elif Path(path).is_dir():
        docs, source = read_split(path), str(path)
    else:
        docs, source = read_json_records(path), str(path)
    if not docs:
        raise ValueError(f"{source}: no rows for task {task.name}")
    check_docs(task, docs, source)
    return docs
