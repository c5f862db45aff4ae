"""What every command line shares: a user's mistake is one line on stderr, ``error: <file or flag>:
<cause>``, and exit status 1; ``--debug`` anywhere on the command line shows the traceback instead.

    if __name__ == "__main__":
        cli.run(main)
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

from common.errors import Stopped, UserError

# The project's typed errors (UserError and its subclasses: records, caches, checkpoints) and the OS's (a
# missing file, a full disk). Any other exception is a bug and keeps its traceback.
USER_ERRORS = (UserError, OSError)


def run(main: Callable[[list[str]], object], argv: list[str] | None = None) -> object:
    """Call ``main(argv)`` (without ``--debug``); a user error becomes ``SystemExit("error: ...")``, a stop
    by signal one line ``stopped: ...`` and exit status 130 (Ctrl-C) or 143 (SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        with warnings_to(lambda line: print(line, file=sys.stderr)):
            return main(argv)
    except USER_ERRORS as err:
        if debug:
            raise
        raise SystemExit(f"error: {describe(err)}") from None
    except (Stopped, KeyboardInterrupt) as stop:
        if debug:
            raise
        print(f"stopped: {stop if isinstance(stop, Stopped) else 'interrupted (Ctrl-C)'}", file=sys.stderr)
        raise SystemExit(getattr(stop, "status", 130)) from None


@contextmanager
def warnings_to(say: Callable[[str], None]) -> Iterator[None]:
    """The UserWarnings raised inside (a data file's fields ignored, rows dropped), each as its message alone
    through `say`, as they come: a plain line, not a category and a source line. Other warnings pass through."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UserWarning):
                say(str(message))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.simplefilter("always", UserWarning)  # each time it happens, also a second run in one process
        warnings.showwarning = show
        yield


def describe(err: BaseException) -> str:
    """The error as one line; an OSError as ``<file>: <reason>``."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's help ends with its default, ``(default: X)``, unless the sentence already says it, or with
    ``(required)``; descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        if action.required:
            return f"{text} (required)"
        return f"{text} (default: {shown_default(action)})"


def shown_default(action: argparse.Action) -> str:
    value = action.default
    if value is None:
        return "none"
    if isinstance(value, bool) and action.nargs == 0:  # a switch
        return "on" if value else "off"
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text.replace("%", "%%")  # (argparse expands %(...)s in help)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UserError (``--flag: cause``) instead of printing usage and exiting; its help
    shows every flag's default and lists --debug (handled by `run`, before parsing)."""

    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = HelpFormatter  # (a raw description, as some callers ask, included)
        super().__init__(*args, **kwargs)
        if kwargs.get("add_help", True):
            self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help="show the full traceback of an error instead of one line (default: off)")

    def error(self, message: str):
        raise UserError(message.removeprefix("argument "))


def number(kind: type = float, at_least: float | None = None, above: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: an int or a finite float, optionally bounded below."""

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be >= {at_least}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse
