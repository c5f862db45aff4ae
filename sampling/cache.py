"""The outlier-ratio cache: a JSON file tied to the weights, M and calibration set it was computed with.

The weight fingerprint hashes, per parameter, its name and shape, a fixed strided sample of 1024
values and an exact integer checksum of all its values (the bf16 bit patterns summed as int64). Values
are taken at bf16 precision, so an fp32 and a bf16 load of the same checkpoint agree, while any
changed weight changes the checksum. A cache whose fingerprint, M, model name, block count or calibration
(its tokens and their shape) differ from the current ones is stale: recomputed, or refused where the caller
says so. Every value the record holds is part of that key except the calibration's provenance (its source and
seed: how the tokens were drawn; the tokens themselves are compared) and the outputs (the ratios and what
`python -m sampling` adds beside them).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from common.errors import UserError
from common.io import write_json
from sampling.calibration import describe
from sampling.outliers import outlier_ratios

SAMPLE = 1024
CHUNK = 1 << 24
KEY = ("model_name", "fingerprint", "M")  # plus the block count, len(ratios)
CALIBRATION_KEY = ("tokens_sha256", "n_windows", "seq_len")
PROVENANCE = ("source", "seed")  # of the calibration: described, not compared


class CacheError(UserError):
    """An outlier-ratio cache that cannot be used: corrupt, or (StaleCacheError) made for something else."""


class StaleCacheError(CacheError):
    """The cache was computed for other weights, another M, model name, block count or calibration set."""


def weight_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if any("lora" in part.lower() for part in name.split(".")):
            continue
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].to(torch.bfloat16).view(torch.int16)
        checksum = sum(_bit_sum(c) for c in flat.split(CHUNK))
        digest.update(f"{name}:{tuple(param.shape)}:{checksum};".encode())
        digest.update(sample.cpu().numpy().tobytes())
    return digest.hexdigest()


def _bit_sum(values: torch.Tensor) -> int:
    """Exact (order-independent) sum of the bf16 bit patterns; numpy's int16 sum is far faster on CPU."""
    bits = values.to(torch.bfloat16).view(torch.int16)
    return int(bits.numpy().sum(dtype=np.int64)) if bits.device.type == "cpu" else int(bits.sum(dtype=torch.int64))


def read_cache(path: str | Path) -> dict:
    """The cache record, validated for shape; a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no outlier-ratio cache")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{path}: corrupt outlier-ratio cache ({err})") from None
    keys = ("model_name", "fingerprint", "M", "calibration", "ratios")
    if not isinstance(record, dict) or any(k not in record for k in keys):
        raise CacheError(f"{path}: not an outlier-ratio cache (needs keys {', '.join(keys)})")
    ratios = record["ratios"]
    if not isinstance(ratios, list) or not all(isinstance(r, (int, float)) and math.isfinite(r) and r >= 0 for r in ratios):
        raise CacheError(f"{path}: 'ratios' must be a list of finite non-negative numbers")
    if not isinstance(record["M"], (int, float)) or not isinstance(record["calibration"], dict):
        raise CacheError(f"{path}: 'M' must be a number and 'calibration' an object")
    return record


def cached_ratios(path: str | Path, model: nn.Module, model_name: str, M: float,
                  calibration: dict | None = None, fingerprint: str | None = None) -> list[float]:
    """Ratios from the cache if it matches this model, M and (when given) calibration; else StaleCacheError.
    `fingerprint`: the model's `weight_fingerprint`, when the caller has it already (a pass over every weight)."""
    record = read_cache(path)
    checks = [("model name", record["model_name"], model_name), ("M", float(record["M"]), float(M)),
              ("number of blocks", len(record["ratios"]), len(model.layers))]
    for what, cached, current in checks:
        if cached != current:
            raise StaleCacheError(f"{path}: stale outlier-ratio cache: {what} is {cached!r} there but {current!r} now")
    if record["fingerprint"] != (fingerprint or weight_fingerprint(model)):
        raise StaleCacheError(f"{path}: stale outlier-ratio cache: the model weights changed since it was written")
    if calibration is not None:
        cached = record["calibration"]
        shape = lambda c: f"{c.get('n_windows')} x {c.get('seq_len')}"  # noqa: E731
        if shape(cached) != shape(calibration):
            raise StaleCacheError(f"{path}: stale outlier-ratio cache: the calibration windows are {shape(cached)} "
                                  f"tokens there but {shape(calibration)} now")
        if cached.get("tokens_sha256") != calibration["tokens_sha256"]:
            raise StaleCacheError(f"{path}: stale outlier-ratio cache: the calibration tokens differ (there: from "
                                  f"{cached.get('source')}; now: from {calibration['source']})")
    return [float(r) for r in record["ratios"]]


def make_record(model: nn.Module, model_name: str, M: float, calibration: dict, ratios: list[float],
                fingerprint: str | None = None, **extra) -> dict:
    return {"model_name": model_name, "fingerprint": fingerprint or weight_fingerprint(model), "M": float(M),
            "calibration": calibration, "ratios": [float(r) for r in ratios], **extra}


def load_or_compute_ratios(model: nn.Module, model_name: str,
                           calibration_batches: Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]] | None,
                           M: float, cache_path: str | Path, calibration_source: str = "batches given in Python",
                           on_stale: str = "recompute", progress: bool = False,
                           fingerprint: str | None = None) -> list[float]:
    """Cached D_l when the cache matches; otherwise compute them and (re)write the cache.

    `calibration_batches` given as batches: the cache must have been made with these tokens. Given as a
    function returning them: any calibration in the cache is accepted, and the function is called only
    when the ratios must be (re)computed. None: any calibration is accepted, nothing can be recomputed.
    A stale cache is recomputed with a one-line note on stderr, or with `on_stale="error"` raises
    StaleCacheError; a corrupt one raises CacheError. `progress`: a progress bar while computing.
    `fingerprint`: the model's `weight_fingerprint`, if the caller computed it already.
    """
    if on_stale not in ("recompute", "error"):
        raise ValueError(f"on_stale must be 'recompute' or 'error', got {on_stale!r}")
    lazy = callable(calibration_batches)
    windows = None if calibration_batches is None or lazy else _nonempty(calibration_batches)
    calibration = None if windows is None else describe(windows, calibration_source, seed=None)
    if Path(cache_path).is_file():
        try:
            return cached_ratios(cache_path, model, model_name, M, calibration, fingerprint)
        except StaleCacheError as err:
            if on_stale == "error" or calibration_batches is None:
                raise
            print(f"note: {err}; recomputing from {calibration_source}", file=sys.stderr)
    elif calibration_batches is None:
        raise FileNotFoundError(f"{cache_path}: no outlier-ratio cache and no calibration batches to compute one")
    if lazy:
        windows = _nonempty(calibration_batches())
        calibration = describe(windows, calibration_source, seed=None)
    ratios = outlier_ratios(model, windows, M, progress=progress)
    write_json(cache_path, make_record(model, model_name, M, calibration, ratios, fingerprint), allow_nan=False)
    return ratios


def _nonempty(batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    windows = list(batches)
    if not windows:
        raise ValueError("calibration_batches is empty")
    return windows
