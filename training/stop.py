"""A stop by signal (Ctrl-C, SIGTERM): finish the step and save, or stop at once; say what was written."""
from __future__ import annotations

import signal
from pathlib import Path

from common.errors import Stopped
from training.checkpoint import checkpoints


SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopFlag:
    """SIGINT (Ctrl-C) and SIGTERM. Once `armed` (the loop starts), the first sets `requested` (the signal's
    number): the loop finishes its step, saves and stops. Before that, or a second signal: stop at once. Either
    way the stop says what was written. A context manager: the previous handlers come back however it is left."""

    def __init__(self, out: Path):
        self.out, self.armed, self.requested = out, False, None
        self.previous = {}

    def __enter__(self) -> StopFlag:
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.armed and self.requested is None:
            self.requested = signum
            return
        who = f"a second {SIGNALS[signum]}, at once" if self.requested is not None else SIGNALS[signum]
        found = checkpoints(self.out)
        written = (f": the newest checkpoint is {found[-1]}; resume with --resume {self.out}" if found else
                   " before the first checkpoint: none was written; run the same command again")
        raise Stopped(f"by {who}{written}", signum)
