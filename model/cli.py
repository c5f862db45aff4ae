"""The model flags every command line shares (train.py, python -m eval, python -m sampling)."""
from __future__ import annotations

import argparse

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def dtype_name(value: str) -> str:
    """argparse type of --dtype: fp32 / bf16 / fp16 (torch's names float32 / bfloat16 / float16 accepted too)."""
    return _ALIASES.get(value, value)


def add_model_flags(p: argparse.ArgumentParser, dtype_default: str | None = "fp32") -> None:
    """--ckpt-dir, --tokenizer and --dtype (--model stays with each CLI: its default and help differ)."""
    p.add_argument("--ckpt-dir", help="folder holding the weights of a named config such as llama2-7b")
    p.add_argument("--tokenizer", help="tokenizer file or folder used instead of the checkpoint's own")
    p.add_argument("--dtype", type=dtype_name, choices=tuple(DTYPES), default=dtype_default,
                   help="fp32, bf16 or fp16" + ("" if dtype_default else " (default: bf16 on CUDA, fp32 on CPU)"))  # fmt: skip
