"""Where a command writes, checked before its work (so a wrong path never costs the work).

An output file must not be a folder nor lie under a file. An output folder that receives a whole set of files
(a model export) must be empty, or the user says `--overwrite`, which clears it first; never a folder the
command reads from. Files of another set left beside the new one would make a mixed set (a stale shard
index, an extra consolidated.NN.pth). Check and clear a folder under its lock (common/lock.py).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from common.errors import UserError
from common.io import is_temporary
from common.lock import LOCK_FILE


def check_output_file(path: str | Path, flag: str) -> None:
    """Refuse an output file path that is a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; name a file")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")


def check_output_folder(folder: Path, flag: str, overwrite: bool, reads: Iterable[Path] = ()) -> list[Path]:
    """The entries `folder` holds, to be cleared before writing; refuse a file, a folder holding one of
    `reads` (what the command reads), or a folder that holds files without `overwrite`. Temporary files of an
    interrupted write are removed here."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: is a file, not a folder")
    for source in reads:
        if source.exists() and source.resolve().is_relative_to(folder.resolve()):
            raise UserError(f"{flag} {folder}: holds {source}, which this command reads; choose another {flag}")
    entries = sorted(p for p in folder.iterdir() if p.name != LOCK_FILE) if folder.is_dir() else []
    for stray in [p for p in entries if is_temporary(p.name) and p.is_file()]:
        stray.unlink()
        entries.remove(stray)
    if entries and not overwrite:
        listed = ", ".join(p.name for p in entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise UserError(f"{flag} {folder}: already holds files ({listed}); pass --overwrite to replace them, or "
                        f"choose another {flag}")
    return entries


def clear_output_folder(entries: Iterable[Path]) -> None:
    """Remove what `check_output_folder` found."""
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
