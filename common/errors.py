"""The one exception type for a user's mistake (a bad flag, a missing or damaged file, a diverged run).

Library code raises it (or a subclass) with a message that starts with the file or flag it is about;
only the command lines turn it into `error: <message>` and an exit status (see `cli.py`).
It is a ValueError, so callers that already catch ValueError keep working.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix; the message names the file or flag first: ``"<file or flag>: <cause>"``."""
