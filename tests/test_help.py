"""`--help` of every command line: each flag has a sentence and shows its default (or that it is required),
and `--debug` is listed."""
from __future__ import annotations

import argparse

import pytest

import bench.gguf_read
import bench.load_memory
import bench.memory
import bench.reproduce
import bench.start_time
import bench.step_compare
import bench.svd
import data.commonsense
import eval.__main__
import sampling.__main__
import train
import training.export
from common import cli

COMMANDS = {  # prog: (main, the arguments that reach its parser)
    "train.py": (train.main, []),
    "python -m training.export": (training.export.main, []),
    "python -m eval": (eval.__main__._dispatch, []),
    "python -m eval generate": (eval.__main__._dispatch, ["generate"]),
    "python -m eval mtbench": (eval.__main__._dispatch, ["mtbench"]),
    "python -m sampling": (sampling.__main__.main, []),
    "python -m data.commonsense": (data.commonsense.main, []),
    "python -m bench.memory": (bench.memory.main, []),
    "python -m bench.load_memory": (bench.load_memory.main, []),
    "python -m bench.step_compare": (bench.step_compare.main, []),
    "python -m bench.svd": (bench.svd.main, []),
    "python -m bench.reproduce": (bench.reproduce.main, []),
    "python -m bench.gguf_read": (bench.gguf_read.main, []),
    "python -m bench.start_time": (bench.start_time.main, []),
}


class Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser `command` builds, caught when it parses (nothing else runs)."""
    def capture(self, *args, **kwargs):
        raise Captured(self)

    monkeypatch.setattr(cli.ArgumentParser, "parse_args", capture)
    main, argv = COMMANDS[command]
    with pytest.raises(Captured) as caught:
        main(argv)
    return caught.value.parser


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_a_sentence_and_shows_its_default(command, monkeypatch):
    parser = parser_of(command, monkeypatch)
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._expand_help(action) if action.help else ""
        words = text.split()
        if len(words) < 3:
            missing.append(f"{action.option_strings or action.dest}: no help sentence ({text!r})")
        elif action.option_strings and "default" not in text.lower() and "(required)" not in text:
            missing.append(f"{action.option_strings}: no default shown ({text!r})")
    assert not missing, "\n".join(missing)
    assert "--debug" in parser.format_help()


def test_defaults_are_rendered_as_values():
    parser = cli.ArgumentParser(prog="x")
    parser.add_argument("--n", type=int, default=4, help="how many")
    parser.add_argument("--name", help="a name")
    parser.add_argument("--on", action="store_true", help="a switch")
    parser.add_argument("--need", required=True, help="needed")
    parser.add_argument("--said", default=2, help="two (default: two, as the paper)")
    text = " ".join(parser.format_help().split())
    for shown in ("how many (default: 4)", "a name (default: none)", "a switch (default: off)", "needed (required)",
                  "two (default: two, as the paper)", "--debug show the full traceback"):
        assert shown in text
