"""Load a task's docs (HF arrow files, or JSON/JSONL with the harness's field names) and check them."""
from __future__ import annotations

from pathlib import Path

from common.io import RecordError, read_objects
from data.arrow import read_split, read_table, task_split_dir
from eval.tasks import Task


def check_docs(task: Task, docs: list[dict], source: str) -> None:
    """Render every doc once so a row with missing or malformed fields fails here, by name."""
    for i, doc in enumerate(docs):
        try:
            choices, gold = task.choices(doc), task.gold(doc)
            task.text(doc)
            if task.partial:
                task.target(doc)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise RecordError(source, f"not a valid {task.name} doc: {type(err).__name__} {err}", record=i) from err
        if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise RecordError(source, f"{task.name} needs >= 2 string choices, got {choices!r}", record=i)
        if not 0 <= gold < len(choices):
            raise RecordError(source, f"gold index {gold} outside the {len(choices)} choices", record=i)


def load_docs(task: Task, split: str, path: str | Path | None = None) -> list[dict]:
    """Checked docs of one split: from `path` (.json/.jsonl/.parquet/.arrow, or a folder of shards) or the fetched arrow files."""
    if path is None:
        folder = task_split_dir(task.dataset, split, task.subject)
        docs, source = read_split(folder), str(folder)
    elif Path(path).is_dir() or Path(path).suffix in (".arrow", ".parquet"):
        docs, source = read_table(path), str(path)
    else:
        docs, source = read_objects(path), str(path)
    if not docs:
        raise RecordError(source, f"no rows for task {task.name}")
    check_docs(task, docs, source)
    return docs
