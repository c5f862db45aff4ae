"""Fingerprints of a run's inputs, recorded in each checkpoint and compared on `--resume`.

The training data, the calibration file, the tokenizer and the starting (pre-trained) weights: a resume on
any other one of them (the same row count with edited text included) would continue a different run
silently. Files are hashed whole, in chunks (SHA-256 of their bytes); the tokenizer by its file and what it
does; the weights by the outlier cache's sampled-and-checksummed fingerprint (sampling/cache.py).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from common.errors import UserError
from sampling.cache import weight_fingerprint

CHUNK = 1 << 20
WHOLE_FILE_UP_TO = 64 << 20  # a tokenizer inside a GGUF model file: its behaviour below, not the gigabytes
PROBE = "Fine-tuning 7B models: ünïcödé, 数字 123 4567, tabs\tand  spaces.\n<s>[INST] Hi [/INST]"
NAMES = {"data": "training data", "calibration": "calibration file", "tokenizer": "tokenizer",
         "weights": "starting weights"}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """Its source file's bytes (when it is a tokenizer file, not a whole GGUF model), its special ids and tokens,
    chat template and the ids of a probe text: what changes the training tokens."""
    digest = hashlib.sha256()
    source = getattr(tokenizer, "source", None)
    if source is not None and Path(source).is_file() and Path(source).stat().st_size <= WHOLE_FILE_UP_TO:
        digest.update(file_digest(source).encode())
    template = getattr(tokenizer, "chat_template", None)
    described = (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                 sorted(getattr(tokenizer, "special_tokens", {}).items()),
                 template if isinstance(template, str) else type(template).__name__, tokenizer.encode(PROBE))
    digest.update(repr(described).encode())
    return digest.hexdigest()


def run_fingerprints(data: str | Path, calib: str | Path | None, tokenizer, model: torch.nn.Module) -> dict:
    """The fingerprints a checkpoint records: {data, calibration (None: the training data), tokenizer, weights}."""
    return {"data": file_digest(data), "calibration": file_digest(calib) if calib else None,
            "tokenizer": tokenizer_digest(tokenizer), "weights": weight_fingerprint(model)}


def check_fingerprints(checkpoint: Path, saved: dict | None, current: dict, allow_changes: bool,
                       say: Callable[[str], None]) -> list[str]:
    """Refuse a resume whose inputs differ from those `checkpoint` recorded (UserError naming them) unless
    `allow_changes`, then one note; a checkpoint without fingerprints: one note. Returns what changed."""
    if not saved:
        say(f"note: --resume {checkpoint}: the checkpoint records no fingerprints of its inputs (written by an "
            f"older version); its training data, calibration, tokenizer and weights are not checked")
        return []
    changed = [NAMES[key] for key in current if saved.get(key) != current[key]]
    if not changed:
        return []
    what = f"the {' and '.join(changed)} differ{'s' if len(changed) == 1 else ''} from the checkpoint's"
    if not allow_changes:
        raise UserError(f"--resume {checkpoint}: {what}; pass --allow-changes to continue with them")
    say(f"note: --resume {checkpoint}: {what}; continuing with them (--allow-changes)")
    return changed
