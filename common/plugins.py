"""--plugin MODULE: a researcher's own module, imported before a command line builds its parser, so the
sampling policies, run-input providers, projectors and model families it registers are choices like the
built-in ones.

MODULE is a dotted module name importable from sys.path or the current folder, or the path of a .py file.
A plugin that cannot be found is the user's mistake (one line, `--plugin X: <cause>`); an exception raised
by the plugin's own code is a programming error and keeps its traceback (`PluginError`, chained to it).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from common.cli import ArgumentParser
from common.errors import UserError

HELP = ("a module of your own (dotted name importable from the current folder, or a .py file) imported before "
        "the flags are read: the policies, projectors and families it registers become choices; repeatable")


class PluginError(RuntimeError):
    """A plugin's own code raised while it was imported (not a user error: the cause's traceback is kept)."""


def plugin_name(text: str) -> str:
    """A .py path made absolute (so a resumed run finds it from any folder); a module name as it is."""
    return str(Path(text).resolve()) if text.endswith(".py") else text


def add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", type=plugin_name, metavar="MODULE", help=HELP)


def preparse(argv: list[str], *flags: str) -> argparse.Namespace:
    """--plugin (every one given, as `plugin`) and the last value of each of `flags`, read from `argv` before
    the parser is built. Flags are spelled in full here, so the parser must not take abbreviations either."""
    parser = ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--plugin", action="append", type=plugin_name, default=[])
    for flag in flags:
        parser.add_argument(flag)
    return parser.parse_known_args(argv)[0]


def plugin_list(value: object, source: str) -> list[str]:
    """A `plugin` value of a config file or saved run: one name or a list of names."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise UserError(f"{source}: plugin: expected a module name or a list of them, got {value!r}")
    return [plugin_name(name) for name in names]


def import_plugins(names: Iterable[str]) -> list[str]:
    """Import every plugin once, in order; the distinct names, in order."""
    unique = list(dict.fromkeys(plugin_name(name) for name in names))
    for name in unique:
        import_plugin(name)
    return unique


def import_plugin(name: str) -> ModuleType:
    if name.endswith(".py"):
        return _import_file(Path(name))
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # `python train.py` puts the script's folder first, not the current one
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):  # the plugin itself is missing
            raise UserError(f"--plugin {name}: no module named {err.name!r} on sys.path or in {os.getcwd()} "
                            "(name a .py file by its path)") from None
        raise PluginError(f"--plugin {name}: its import failed") from err
    except Exception as err:
        raise PluginError(f"--plugin {name}: its code raised {type(err).__name__}") from err


def _import_file(path: Path) -> ModuleType:
    """The .py file as the module named after its stem (imported once, however it is named)."""
    if not path.is_file():
        raise UserError(f"--plugin {path}: no such file")
    module_name = path.stem
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
            return loaded
        raise UserError(f"--plugin {path}: a module named {module_name!r} is already imported "
                        f"({getattr(loaded, '__file__', 'built in')}); rename the file")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"--plugin {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # as `import` does: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise PluginError(f"--plugin {path}: its code raised {type(err).__name__}") from err
    return module
