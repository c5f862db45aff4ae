"""The model flags every command line shares (train.py, python -m eval, python -m sampling, python -m
training.export), checked before any model loads."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def dtype_name(value: str) -> str:
    """argparse type of --dtype: fp32 / bf16 / fp16 (torch's names float32 / bfloat16 / float16 accepted too)."""
    return _ALIASES.get(value, value)


def device_name(text: str) -> str:
    """argparse type of --device: a device torch knows (cpu, cuda, cuda:1, mps, ...) that this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
    return text


def folder(text: str) -> str:
    """argparse type of --ckpt-dir: an existing folder."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return text


def tokenizer_source(text: str) -> str:
    """argparse type of --tokenizer: a file, or a folder holding tokenizer.json or tokenizer.model."""
    path = Path(text)
    if path.is_dir() and not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise argparse.ArgumentTypeError(f"{text}: a folder without tokenizer.json or tokenizer.model")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return text


def check_model_source(model: str, flag: str = "--model") -> None:
    """--model is a known config name or an existing checkpoint file or folder (before anything loads)."""
    from model.config import CONFIGS

    if model not in CONFIGS and not Path(model).exists():
        raise UserError(f"{flag}: {model!r} is neither a known model ({', '.join(CONFIGS)}) "
                        "nor an existing checkpoint file or folder")


def add_model_flags(p: argparse.ArgumentParser, dtype_default: str | None = "fp32") -> None:
    """--ckpt-dir, --tokenizer and --dtype (--model stays with each CLI: its default and help differ)."""
    p.add_argument("--ckpt-dir", type=folder, help="folder holding the weights of a named config such as llama2-7b")
    p.add_argument("--tokenizer", type=tokenizer_source, help="tokenizer file or folder used instead of the checkpoint's own")
    p.add_argument("--dtype", type=dtype_name, choices=tuple(DTYPES), default=dtype_default,
                   help="fp32, bf16 or fp16" + ("" if dtype_default else " (default: bf16 on CUDA, fp32 on CPU)"))  # fmt: skip
