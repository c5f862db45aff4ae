"""Run inputs of the sampling policies: the table of providers, name -> function of the run.

A policy names the inputs it needs (its parameters other than the sampler's own, `Policy.needs`);
train.py asks this table for each of them, passing its run context (train.py's `Context`: the arguments,
the pre-trained model, the data records, the process group). train.py registers the built-in ones
(`ratios`, `alphas`, `fixed_layers`); a policy that needs another input registers its provider here, in
the same module (a --plugin). A provider returns plain values (lists, numbers): the checkpoint keeps them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.errors import UserError
from sampling.policies import Policy

INPUT_PROVIDERS: dict[str, Callable[[Any], object]] = {}


def register_input(name: str):
    """Decorator: `provide(context)` gives the run input `name` to every policy that names it."""

    def register(provide: Callable[[Any], object]) -> Callable[[Any], object]:
        if name in INPUT_PROVIDERS:
            raise ValueError(f"run input {name!r} already has a provider")
        INPUT_PROVIDERS[name] = provide
        return provide

    return register


def check_providers(policy: Policy) -> None:
    """Every run input the sampling policy needs has a provider (checked by train.py before any work)."""
    missing = [name for name in policy.needs if name not in INPUT_PROVIDERS]
    if missing:
        raise UserError(f"--sampling {policy.name}: needs the run input {', '.join(missing)}, which nothing "
                        "provides (training.inputs.register_input, in the policy's --plugin module)")


def provide_inputs(policy: Policy, context: Any) -> dict[str, object]:
    """{name: value} of every input the policy needs, each from its provider, in order."""
    check_providers(policy)
    return {name: INPUT_PROVIDERS[name](context) for name in policy.needs}
