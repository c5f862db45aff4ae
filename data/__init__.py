"""Data: readers, prompt templates, loss masking, packing, the real-asset cache."""
from data.dataset import TokenizedDataset, build_dataset
from data.loader import BatchLoader
from data.records import load_records
from data.templates import alpaca_prompt
from data.tokenize import IGNORE_INDEX, tokenize_record

__all__ = [
    "IGNORE_INDEX",
    "BatchLoader",
    "TokenizedDataset",
    "alpaca_prompt",
    "build_commonsense",
    "build_dataset",
    "heldout_doc_ids",
    "load_records",
    "tokenize_record",
]


def __getattr__(name: str):
    # Imported on first use so that `python -m data.commonsense` does not import itself twice.
    if name in ("build_commonsense", "heldout_doc_ids"):
        import data.commonsense

        return getattr(data.commonsense, name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
