"""The exception types a command line reports as one line: a user's mistake, and a stop by signal.

Library code raises `UserError` (or a subclass) with a message that starts with the file or flag it is about;
only the command lines turn it into `error: <message>` and an exit status (see `cli.py`).
It is a ValueError, so callers that already catch ValueError keep working.
"""
from __future__ import annotations

import signal


class UserError(ValueError):
    """A problem the user can fix; the message names the file or flag first: ``"<file or flag>: <cause>"``."""


class Stopped(Exception):
    """A command stopped by SIGINT (Ctrl-C) or SIGTERM; the message says what was and was not written.
    The command line exits with 128 + the signal's number (130, 143), as a shell does."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.status = 128 + int(signum)
