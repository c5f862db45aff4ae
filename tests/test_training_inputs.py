"""The table of run-input providers (training/inputs.py) that train.py asks for what a policy names."""
from __future__ import annotations

import pytest

import train  # noqa: F401  (registers the built-in providers)
from common.errors import UserError
from sampling.policies import RUN_INPUTS, Policy
from training.inputs import INPUT_PROVIDERS, check_providers, provide_inputs, register_input


def test_every_input_a_policy_may_name_has_a_provider():
    assert set(RUN_INPUTS) <= set(INPUT_PROVIDERS)


def test_providers_are_called_with_the_context_and_only_for_what_is_needed(monkeypatch):
    calls = []
    monkeypatch.setitem(INPUT_PROVIDERS, "test_seen", lambda c: calls.append(c) or [c * 2])
    monkeypatch.setitem(INPUT_PROVIDERS, "test_unseen", lambda c: calls.append("unseen"))
    assert provide_inputs(Policy("test_policy", lambda test_seen, n_layers: test_seen), 21) == {"test_seen": [42]}
    assert calls == [21]


def test_a_missing_provider_and_a_second_one_for_a_name_are_refused(monkeypatch):
    policy = Policy("test_policy", lambda ratios, test_nothing: ratios)
    with pytest.raises(UserError) as err:  # train.py checks it before any work: one line naming policy and input
        check_providers(policy)
    assert str(err.value).startswith("--sampling test_policy: needs the run input test_nothing, which nothing provides")
    with pytest.raises(UserError, match="test_nothing"):
        provide_inputs(policy, None)
    monkeypatch.setitem(INPUT_PROVIDERS, "test_once", lambda c: 1)
    with pytest.raises(ValueError, match="'test_once' already has a provider"):
        register_input("test_once")(lambda c: 2)
