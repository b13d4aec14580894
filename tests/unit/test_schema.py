"""schema.py: the pydantic pieces every topology is built from: shorthands, bounds, strictness, expansion."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from composite_llm.schema import (
    DEFAULT_MAX_SUB_CALLS,
    FanOutSettings,
    NodeConfig,
    ProviderBundle,
    SampledNodes,
    check_quorum,
    expand_samples,
)


def _locs(exc: ValidationError) -> list[tuple]:
    return [tuple(error["loc"]) for error in exc.errors()]


# --------------------------------------------------------------------------- NodeConfig
def test_a_string_is_shorthand_for_a_node_with_that_model_and_fallbacks_accept_it_too():
    node = NodeConfig.model_validate({"model": " openai/a ", "fallbacks": ["openai/b", {"model": "openai/c"}]})
    assert node.model == "openai/a"  # stripped
    assert [f.model for f in node.fallbacks] == ["openai/b", "openai/c"]
    assert NodeConfig.model_validate("openai/x") == NodeConfig(model="openai/x")


def test_label_is_the_name_when_given_and_composite_models_are_recognised():
    assert NodeConfig(model="openai/a").label == "openai/a"
    assert NodeConfig(model="openai/a", name="fast").label == "fast"
    assert NodeConfig(model="composite/profile/p").is_composite
    assert not NodeConfig(model="openai/composite/x").is_composite


@pytest.mark.parametrize("data, loc", [
    ({"model": "   "}, ("model",)),
    ({"model": ""}, ("model",)),
    ({"model": "openai/a", "timeout_s": 0}, ("timeout_s",)),
    ({"model": "openai/a", "instruction": ""}, ("instruction",)),
    ({"model": "openai/a", "temprature": 0.2}, ("temprature",)),  # a typo is an error, not ignored
    ({"model": "openai/a", "fallbacks": [{"model": "openai/b", "extra": 1}]}, ("fallbacks", 0, "extra")),
    ({"model": "openai/a", "fallbacks": [""]}, ("fallbacks", 0, "model")),
])
def test_node_errors_name_the_field(data, loc):
    with pytest.raises(ValidationError) as info:
        NodeConfig.model_validate(data)
    assert loc in _locs(info.value)


def test_blank_model_message_says_so():
    with pytest.raises(ValidationError, match="model must not be blank"):
        NodeConfig.model_validate("  \t")


def test_provider_bundle_is_strict():
    assert ProviderBundle.model_validate({"litellm_params": {"api_base": "http://x"}}).litellm_params == {
        "api_base": "http://x"}
    with pytest.raises(ValidationError) as info:
        ProviderBundle.model_validate({"api_base": "http://x"})
    assert ("api_base",) in _locs(info.value)


# --------------------------------------------------------------------------- FanOutSettings
def test_fan_out_defaults():
    settings = FanOutSettings()
    assert (settings.quorum, settings.grace_s, settings.deadline_s, settings.retries, settings.member_tools,
            settings.max_sub_calls) == (1, None, None, 1, False, DEFAULT_MAX_SUB_CALLS)


@pytest.mark.parametrize("data, loc", [
    ({"quorum": 0}, ("quorum",)),
    ({"grace_s": -0.1}, ("grace_s",)),
    ({"deadline_s": 0}, ("deadline_s",)),
    ({"member_timeout_s": 0}, ("member_timeout_s",)),
    ({"retries": 6}, ("retries",)),
    ({"retries": -1}, ("retries",)),
    ({"final_reserve_s": -1}, ("final_reserve_s",)),
    ({"max_sub_calls": 0}, ("max_sub_calls",)),
    ({"qourum": 2}, ("qourum",)),
])
def test_fan_out_bounds_name_the_field(data, loc):
    with pytest.raises(ValidationError) as info:
        FanOutSettings.model_validate(data)
    assert _locs(info.value) == [loc]


def test_check_quorum_refuses_a_quorum_larger_than_the_members():
    check_quorum(FanOutSettings(quorum=3), 3, "proposers")
    with pytest.raises(ValueError, match=r"settings.quorum=4 exceeds the 3 members of proposers"):
        check_quorum(FanOutSettings(quorum=4), 3, "proposers")


# --------------------------------------------------------------------------- the sampled short form
def test_samples_expand_to_labelled_nodes_with_the_temperature_in_params():
    nodes = SampledNodes(model="openai/a", samples=3, temperature=0.7, params={"seed": 1}).nodes()
    assert [n.label for n in nodes] == ["openai/a #1", "openai/a #2", "openai/a #3"]
    assert all(n.model == "openai/a" and n.params == {"seed": 1, "temperature": 0.7} for n in nodes)


def test_each_sample_may_have_its_own_temperature_and_the_count_must_match():
    nodes = SampledNodes(model="openai/a", samples=2, temperatures=[0.0, 1.0], name="s").nodes()
    assert [(n.label, n.params["temperature"]) for n in nodes] == [("s #1", 0.0), ("s #2", 1.0)]
    with pytest.raises(ValueError, match="temperatures has 3 values for 2 samples"):
        SampledNodes(model="openai/a", samples=2, temperatures=[0.1, 0.2, 0.3]).expand()


def test_samples_bounds_and_strictness():
    for bad in ({"model": "openai/a", "samples": 0}, {"model": "openai/a", "samples": 65},
                {"model": "openai/a", "samples": 2, "temperature": -1}, {"model": "openai/a", "samples": 2, "n": 2}):
        with pytest.raises(ValidationError):
            SampledNodes.model_validate(bad)


def test_sampled_of_a_node_keeps_everything_the_node_says():
    node = NodeConfig(model="openai/a", provider="p", params={"seed": 3}, name="n", timeout_s=5, instruction="Think.")
    expanded = SampledNodes.of(node, samples=2, temperature=0.5).nodes()
    assert all((n.provider, n.timeout_s, n.instruction) == ("p", 5, "Think.") for n in expanded)
    assert [n.params for n in expanded] == [{"seed": 3, "temperature": 0.5}] * 2
    assert node.params == {"seed": 3}  # the original node's params are not mutated


def test_expand_samples_passes_node_lists_through():
    nodes = ["openai/a", {"model": "openai/b"}]
    assert expand_samples(nodes) is nodes
    assert [n["name"] for n in expand_samples({"model": "openai/a", "samples": 2})] == ["openai/a #1", "openai/a #2"]
    with pytest.raises(ValidationError):
        expand_samples({"model": "openai/a", "samples": "many"})
