"""Who owns a run folder (`--out`) and what it may hold before a run starts."""
from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from common.errors import UserError
from common.lock import FolderLock
from training.checkpoint import EXPORTS, checkpoints, run_outputs


def check_out_folder(out: Path, resumed_from: Path | None, overwrite: bool) -> bool:
    """Whether `out` holds outputs to clear first: another run's (with --overwrite), or those of a run that
    stopped before its first checkpoint (not a run to protect: nothing there can be resumed); refuse otherwise."""
    held = run_outputs(out)
    if resumed_from is not None and resumed_from.parent.resolve() == out.resolve():
        names = [p.name for p in checkpoints(out)]
        newer = names[names.index(resumed_from.name) + 1:] if resumed_from.name in names else []
        if newer:  # they belong to the abandoned continuation, and the newest checkpoint wins a later resume
            raise UserError(f"--resume {resumed_from}: {out} holds newer checkpoints ({', '.join(newer)}); "
                            f"resume the newest with --resume {out}, or branch off with another --out")
        exported = [name for name in EXPORTS if (out / name).exists()]
        if exported and not overwrite:  # (checked now, not after the training)
            raise UserError(f"--resume {out}: the run was exported already ({', '.join(exported)}); pass "
                            "--overwrite to replace the export when this run ends")
        return False
    if not held:
        return False
    if not checkpoints(out) and not set(held) & set(EXPORTS):
        return True
    if not overwrite:
        raise UserError(f"--out {out}: already holds a run ({', '.join(held)}); continue it with --resume {out}, "
                        "replace it with --overwrite, or choose another --out")
    return True


def own_out(args: argparse.Namespace) -> FolderLock | contextlib.nullcontext:
    """One run owns --out: its main rank holds the folder's OS lock from before the check of what the folder
    holds until the run ends (the OS drops it if the process dies); a second run gets one line with its pid."""
    main_rank = int(os.environ.get("RANK", "0")) == 0  # (before the process group exists)
    return FolderLock(Path(args.out), "--out") if main_rank else contextlib.nullcontext()
