"""Run inputs of the sampling policies: the table of providers, name -> function of the run.

A policy names the inputs it needs (its parameters among `sampling.policies.RUN_INPUTS`, `Policy.needs`);
train.py asks this table for each of them, passing its run context (train.py's `Context`: the arguments,
the pre-trained model, the data records, the process group). train.py registers the built-in ones
(`ratios`, `alphas`, `fixed_layers`); a policy that needs another input registers its provider here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

INPUT_PROVIDERS: dict[str, Callable[[Any], object]] = {}


def register_input(name: str):
    """Decorator: `provide(context)` gives the run input `name` to every policy that names it."""

    def register(provide: Callable[[Any], object]) -> Callable[[Any], object]:
        if name in INPUT_PROVIDERS:
            raise ValueError(f"run input {name!r} already has a provider")
        INPUT_PROVIDERS[name] = provide
        return provide

    return register


def provide_inputs(needs: Iterable[str], context: Any) -> dict[str, object]:
    """{name: value} of every input in `needs`, each from its provider, in order."""
    needs = tuple(needs)
    missing = [name for name in needs if name not in INPUT_PROVIDERS]
    if missing:
        raise ValueError(f"no provider for run input {', '.join(missing)} (training.inputs.register_input)")
    return {name: INPUT_PROVIDERS[name](context) for name in needs}
