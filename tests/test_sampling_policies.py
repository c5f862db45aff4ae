"""Sampling policies: the registry, the HT-SR heavy-tail policy and the dynamic-policy contract."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from model import Transformer, get_config
from sampling.htsr import block_alphas
from sampling.policies import POLICIES, get_policy, heavy_tail_weights, observe_alphas, register_policy
from sampling.sampler import LayerSampler
from training.methods import METHODS

alpha_lists = st.lists(st.floats(1.01, 20.0, allow_nan=False), min_size=2, max_size=40)


@given(alpha_lists)
def test_lower_alpha_means_higher_probability(alphas):
    p = LayerSampler("htsr", gamma=1, period=1, seed=0, n_layers=len(alphas), alphas=alphas).probabilities
    assert sum(p) == pytest.approx(1.0)
    for i in range(len(alphas)):
        for j in range(len(alphas)):
            if alphas[i] < alphas[j]:
                assert p[i] > p[j]
            elif alphas[i] == alphas[j]:
                assert p[i] == p[j]


def test_heavy_tail_weight_is_the_hill_statistic():
    # 1 / (alpha - 1) = k^-1 sum ln(lambda_i / lambda_(N-k)): the mean log-excess of the upper half
    lam = np.array([1.0, 2.0, 3.0, 5.0, 8.0, 13.0])
    k, threshold = 3, 3.0
    alpha = 1 + k / np.log(lam[3:] / threshold).sum()
    assert heavy_tail_weights([alpha])[0] == pytest.approx(np.log(lam[3:] / threshold).mean())


def test_every_method_defaults_to_a_registered_policy():
    for method in METHODS.values():
        assert (method.default_sampling in POLICIES) == method.sampled
        assert not (method.sampled and method.adapters)


def test_policies_declare_what_they_need():
    assert get_policy("owlore").needs == ("ratios",) and get_policy("owlore_reverse").needs == ("ratios",)
    assert get_policy("htsr").needs == ("alphas",) and get_policy("fixed").needs == ("fixed_layers",)
    for name in ("uniform", "decrease", "increase", "htsr_dynamic"):
        assert get_policy(name).needs == ()
    assert get_policy("htsr_dynamic").dynamic and not get_policy("htsr").dynamic


def test_registration_refuses_duplicates_and_a_state_without_observe():
    register_policy("test_new_input")(lambda gradients, n_layers: np.ones(n_layers))
    assert get_policy("test_new_input").needs == ("gradients",)  # a run input a provider must give (training.inputs)
    with pytest.raises(ValueError, match="already registered"):
        register_policy("owlore")(lambda ratios: ratios)
    with pytest.raises(ValueError, match="exactly when observe is given"):
        register_policy("test_state_without_observe")(lambda state: state["w"])
    with pytest.raises(ValueError, match="exactly when observe is given"):
        register_policy("test_observe_without_state", observe=lambda model: {})(lambda n_layers: np.ones(n_layers))
    register_policy("test_state_without_observe")(lambda n_layers: np.ones(n_layers))  # a refused one left no entry


def test_a_policy_returning_bad_weights_is_refused():
    register_policy("test_negative_weight")(lambda n_layers: -np.ones(n_layers))
    register_policy("test_wrong_length")(lambda n_layers: np.ones(n_layers + 1))
    with pytest.raises(ValueError, match="finite and non-negative"):
        LayerSampler("test_negative_weight", 1, 1, 0, 4)
    with pytest.raises(ValueError, match=r"returned \(5,\) weights for 4 blocks"):
        LayerSampler("test_wrong_length", 1, 1, 0, 4)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(dataclasses.replace(get_config("tiny"), n_layers=4))


def heavier_tail(model, block):
    """Stretch the top singular values of every matrix in `block`: its spectrum's tail gets heavier."""
    with torch.no_grad():
        for p in model.layers[block].parameters():
            if p.ndim == 2:
                u, s, vh = torch.linalg.svd(p, full_matrices=False)
                s[: len(s) // 8] *= 6.0
                p.copy_(u @ torch.diag(s) @ vh)


def test_dynamic_htsr_follows_the_current_weights():
    model = tiny_model()
    sampler = LayerSampler("htsr_dynamic", gamma=2, period=3, seed=0, n_layers=4)
    with pytest.raises(ValueError, match="is dynamic"):
        sampler.probabilities
    sampler.active_layers(0, model)
    before = sampler.probabilities
    assert sampler.state == {"alphas": block_alphas(model)[0]}
    heavier_tail(model, 2)
    sampler.active_layers(2, model)  # same period: the state of its first step stays
    assert sampler.probabilities == before
    sampler.active_layers(3, model)  # next period: observed again
    assert sampler.state["alphas"][2] < 0.9 * sampler.state["alphas"][0]
    assert sampler.probabilities[2] > before[2] and max(sampler.probabilities) == sampler.probabilities[2]


def test_dynamic_state_resumes_inside_a_period_without_observing_again():
    calls = []

    def counted(model):
        calls.append(1)
        return observe_alphas(model)

    register_policy("test_counted_htsr", observe=counted)(POLICIES["htsr_dynamic"].weights)
    model = tiny_model()
    straight = LayerSampler("test_counted_htsr", gamma=2, period=4, seed=3, n_layers=4)
    draws = [straight.active_layers(s, model) for s in range(6)]
    state = json.loads(json.dumps(straight.state_dict()))  # plain types
    assert len(calls) == 2 and state["state_period"] == 1
    heavier_tail(model, 0)  # weights moved since the period began: a resumed run must not look at them
    resumed = LayerSampler("test_counted_htsr", gamma=2, period=4, seed=3, n_layers=4)
    resumed.load_state_dict(state)
    assert resumed.active_layers(6, model) == draws[5] and len(calls) == 2
    assert resumed.probabilities == straight.probabilities and resumed.counts == straight.counts
    resumed.active_layers(8, model)
    assert len(calls) == 3 and resumed.state != straight.state


def test_the_draw_is_a_pure_function_of_seed_period_and_state():
    state = {"alphas": [2.0, 3.5, 2.5, 6.0, 4.0]}
    a = LayerSampler("htsr_dynamic", gamma=2, period=1, seed=9, n_layers=5)
    b = LayerSampler("htsr_dynamic", gamma=2, period=1, seed=9, n_layers=5)
    a.load_state_dict(a.state_dict() | {"state": state, "state_period": 0})
    b.load_state_dict(b.state_dict() | {"state": state, "state_period": 7})
    assert [a.draw(t) for t in range(50)] == [b.draw(t) for t in range(50)]
    static = LayerSampler("htsr", gamma=2, period=1, seed=9, n_layers=5, alphas=state["alphas"])
    assert [a.draw(t) for t in range(50)] == [static.draw(t) for t in range(50)]


def test_a_dynamic_policy_needs_the_model():
    sampler = LayerSampler("htsr_dynamic", gamma=1, period=1, seed=0, n_layers=4)
    with pytest.raises(ValueError, match="needs the model"):
        sampler.active_layers(0)
