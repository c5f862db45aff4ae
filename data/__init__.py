"""Data: readers, prompt templates, loss masking, packing, the commonsense builder (`python -m data.commonsense`)."""
from data.dataset import TokenizedDataset, build_dataset
from data.loader import BatchLoader
from data.records import load_records
from data.templates import alpaca_prompt
from data.tokenize import IGNORE_INDEX, tokenize_record

__all__ = ["IGNORE_INDEX", "BatchLoader", "TokenizedDataset", "alpaca_prompt", "build_dataset", "load_records",
           "tokenize_record"]
