"""Profiles: schema, sources and precedence, caching, and errors that say where and what."""

from __future__ import annotations

import os
import time
from pathlib import Path

import litellm
import pytest
import yaml

from composite_llm import CompositeConfigError, load_profiles
from composite_llm.model_string import parse_model_string
from composite_llm.profiles import PROFILES_ENV, REGISTRY
from conftest import API_KEY, user

REPO = Path(__file__).resolve().parents[1]


def _moa(agg="openai/agg", proposers=("openai/p1",)):
    return {"strategy": "moa", "topology": {"aggregator": {"model": agg}, "proposers": [{"model": p} for p in proposers]}}


def test_shipped_profiles_validate():
    source = load_profiles(REPO / "profiles")
    for name in ("moa_light", "moa_hard", "council_basic"):
        assert name in source.profiles
    assert source.providers["cerebras"].litellm_params["api_key"] == "os.environ/CEREBRAS_API_KEY"


def test_seed_proxy_config_shape_is_valid():
    """composite_llm_research's general_settings.composite_llm block (strategy_registry, observability, settings) loads."""
    block = {
        "observability": {"enabled": False, "log_file": "llm_logs.jsonl"},
        "strategy_registry": {"moa": "composite_llm.strategies.moa:MoAStrategy",
                              "council": "composite_llm.strategies.council:CouncilStrategy"},
        "providers": {"openai_test": {"litellm_params": {"api_base": "os.environ/OPENAI_API_BASE",
                                                         "api_key": "os.environ/OPENAI_API_KEY"}}},
        "profiles": {
            "moa_light": {"strategy": "moa", "topology": {
                "aggregator": {"model": "cerebras/llama-3.3-70b"},
                "proposers": [{"model": "cerebras/llama3.1-8b"}], "settings": {"max_tool_iterations": 5}}},
            "council_basic": {"strategy": "council", "topology": {
                "chairman": {"model": "openai/chairman-model", "provider": "openai_test"},
                "council": [{"model": "openai/proposer-1", "provider": "openai_test"},
                            {"model": "openai/proposer-2", "provider": "openai_test"}],
                "reviewers": [{"model": "openai/reviewer-1", "provider": "openai_test"}],
                "settings": {"max_council_size": 4, "include_stage_summaries_in_reasoning": True}}},
        },
    }
    source = load_profiles(block)
    assert set(source.profiles) == {"moa_light", "council_basic"}


def test_invalid_field_error_names_file_profile_and_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"broken": {"strategy": "moa", "topology": {
        "aggregator": {"model": "openai/a"}, "proposers": [{"modle": "openai/p"}]}}}}))
    with pytest.raises(CompositeConfigError) as info:
        load_profiles(path)
    message = str(info.value)
    assert str(path) in message
    assert "'broken'" in message
    assert "topology.proposers[0].model" in message and "topology.proposers[0].modle" in message


def test_all_problems_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"profiles": {
        "a": {"strategy": "nope", "topology": {}},
        "b": {"strategy": "council", "topology": {"chairman": "openai/c", "council": []}},
        "c": {"strategy": "moa", "topology": {"aggregator": "x/y", "proposers": ["x/z"], "settings": {"quorum": 0}}},
    }}))
    with pytest.raises(CompositeConfigError) as info:
        load_profiles(path)
    message = str(info.value)
    assert "unknown strategy 'nope'" in message and "moa" in message and "council" in message
    assert "profile 'b': topology.council" in message
    assert "profile 'c': topology.settings.quorum" in message


def test_unknown_settings_key_rejected():
    with pytest.raises(CompositeConfigError) as info:
        load_profiles({"profiles": {"x": {"strategy": "moa", "topology": {
            "aggregator": "a/b", "proposers": ["a/c"], "settings": {"quorom": 2}}}}})
    assert "topology.settings.quorom: unknown field" in str(info.value)


def test_quorum_larger_than_members_rejected():
    with pytest.raises(CompositeConfigError) as info:
        load_profiles({"profiles": {"x": {"strategy": "moa", "topology": {
            "aggregator": "a/b", "proposers": ["a/c"], "settings": {"quorum": 3}}}}})
    assert "quorum=3 exceeds the 1 members" in str(info.value)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("profiles:\n  x: [unclosed\n")
    with pytest.raises(CompositeConfigError) as info:
        load_profiles(path)
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_unknown_provider_bundle_listed():
    with pytest.raises(CompositeConfigError) as info:
        load_profiles({"providers": {"real": {}}, "profiles": {"x": {"strategy": "moa", "topology": {
            "aggregator": {"model": "a/b", "provider": "typo"}, "proposers": ["a/c"]}}}})
    assert "unknown provider 'typo'" in str(info.value) and "real" in str(info.value)


def test_duplicate_profile_across_folder_files(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"profiles": {"dup": _moa()}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"profiles": {"dup": _moa()}}))
    with pytest.raises(CompositeConfigError) as info:
        load_profiles(tmp_path)
    assert "a.yaml" in str(info.value) and "b.yaml" in str(info.value)


def test_unknown_profile_lists_known_ones(server, call_kwargs, explicit_profiles):
    explicit_profiles({"profiles": {"only_one": _moa()}})
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/profile/nope", messages=user("q"), **call_kwargs)
    assert "unknown profile 'nope'" in str(info.value)
    assert "only_one" in str(info.value) and "moa_light" in str(info.value)


def test_unknown_strategy_named_with_registered_ones(server, call_kwargs):
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/debait/openai/x", messages=user("q"), **call_kwargs)
    assert "'debait'" in str(info.value) and "moa" in str(info.value) and "council" in str(info.value)


def test_profile_name_may_contain_slash(server, call_kwargs, explicit_profiles):
    server.set_model("p1", reply="p")
    server.set_model("agg", reply="team answer")
    explicit_profiles({"profiles": {"team/fast": _moa()}})
    response = litellm.completion(model="composite/profile/team/fast", messages=user("q"), **call_kwargs)
    assert response.choices[0].message.content == "team answer"
    assert response.model == "composite/profile/team/fast"


def test_env_reference_resolved_at_call_time(server, explicit_profiles, monkeypatch):
    server.set_model("p1", reply="p")
    server.set_model("agg", reply="ok")
    explicit_profiles({
        "providers": {"fake": {"litellm_params": {"api_base": "os.environ/FAKE_BASE", "api_key": "os.environ/FAKE_KEY"}}},
        "profiles": {"envy": {"strategy": "moa", "topology": {
            "aggregator": {"model": "openai/agg", "provider": "fake"},
            "proposers": [{"model": "openai/p1", "provider": "fake"}]}}},
    })
    monkeypatch.delenv("FAKE_KEY", raising=False)
    monkeypatch.setenv("FAKE_BASE", server.base_url)
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/profile/envy", messages=user("q"))
    assert "FAKE_KEY" in str(info.value) and "node" in str(info.value)
    assert not server.requests  # nothing was called with a half-resolved topology
    monkeypatch.setenv("FAKE_KEY", API_KEY)
    response = litellm.completion(model="composite/profile/envy", messages=user("q"))
    assert response.choices[0].message.content == "ok"
    assert server.requests_for("agg")[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_env_var_source_and_reload_on_change(server, call_kwargs, tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"mine": _moa(agg="openai/one")}}))
    monkeypatch.setenv(PROFILES_ENV, str(path))
    server.set_model("p1", reply="p")
    server.set_model("one", reply="from one")
    server.set_model("two", reply="from two")
    assert litellm.completion(model="composite/profile/mine", messages=user("q"), **call_kwargs
                              ).choices[0].message.content == "from one"
    time.sleep(0.01)
    path.write_text(yaml.safe_dump({"profiles": {"mine": _moa(agg="openai/two")}}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert litellm.completion(model="composite/profile/mine", messages=user("q"), **call_kwargs
                              ).choices[0].message.content == "from two"


def test_explicit_source_wins_over_env(server, call_kwargs, tmp_path, monkeypatch, explicit_profiles):
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"same": _moa(agg="openai/one")}}))
    monkeypatch.setenv(PROFILES_ENV, str(path))
    explicit_profiles({"profiles": {"same": _moa(agg="openai/two")}})
    server.set_model("p1", reply="p")
    server.set_model("two", reply="explicit")
    assert litellm.completion(model="composite/profile/same", messages=user("q"), **call_kwargs
                              ).choices[0].message.content == "explicit"


def test_register_with_bad_file_fails_at_registration(tmp_path):
    from composite_llm import register_composite_provider

    path = tmp_path / "bad.yaml"
    path.write_text("profiles: {x: {strategy: moa}}\n")
    with pytest.raises(CompositeConfigError):
        register_composite_provider(profiles=path)
    REGISTRY.set_explicit(None)


def test_register_is_idempotent_and_keeps_other_providers():
    from composite_llm import register_composite_provider
    from litellm.llms.custom_llm import CustomLLM

    other = {"provider": "someone-else", "custom_handler": CustomLLM()}
    litellm.custom_provider_map.append(other)
    try:
        register_composite_provider()
        register_composite_provider()
        providers = [e["provider"] for e in litellm.custom_provider_map]
        assert providers.count("composite") == 1 and "someone-else" in providers
    finally:
        litellm.custom_provider_map.remove(other)


def test_inline_override_of_profile_settings(server, call_kwargs, explicit_profiles):
    server.set_model("p1", reply="p")
    server.set_model("agg", reply="a")
    explicit_profiles({"profiles": {"base": _moa()}})
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/profile/base", messages=user("q"), quorum=5, **call_kwargs)
    assert "profile 'base' with request overrides" in str(info.value) and "quorum" in str(info.value)


# ---------------------------------------------------------------------------- model strings and requests
@pytest.mark.parametrize("model,expected", [
    ("composite/profile/moa_light", {"profile": "moa_light"}),
    ("profile/team/a", {"profile": "team/a"}),
    ("composite/moa/openai/gpt-4o", {"strategy": "moa", "final_model": "openai/gpt-4o"}),
    ("composite/council/cerebras/llama-3.3-70b", {"strategy": "council", "final_model": "cerebras/llama-3.3-70b"}),
    ("composite/composer-cli/composer-1", {"strategy": "composer_cli", "final_model": "composer-1",
                                           "cli_spec": "cursor"}),
    ("composite/cli/claude/sonnet", {"strategy": "composer_cli", "final_model": "sonnet", "cli_spec": "claude"}),
])
def test_model_string_grammar(model, expected):
    target = parse_model_string(model)
    for key, value in expected.items():
        assert getattr(target, key) == value


@pytest.mark.parametrize("model", ["composite/", "composite/profile/", "composite/moa/gpt-4o", "composite/cli/x"])
def test_model_string_errors(model):
    with pytest.raises(CompositeConfigError):
        parse_model_string(model)


@pytest.mark.parametrize("messages,needle", [
    ([], "non-empty"),
    ([{"role": "system", "content": "x"}], "no user message"),
    ([{"role": "wizard", "content": "x"}], "unknown role"),
])
def test_bad_messages_are_bad_requests(server, call_kwargs, messages, needle):
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/moa/openai/agg", messages=messages, proposers=["openai/p1"], **call_kwargs)
    assert needle in str(info.value)


def test_unknown_parameter_named(server, call_kwargs):
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/moa/openai/agg", messages=user("q"), proposers=["openai/p1"],
                           propsers=["x"], **call_kwargs)
    assert "propsers" in str(info.value)


def test_broken_low_precedence_source_does_not_break_earlier_profiles(server, call_kwargs, tmp_path, monkeypatch,
                                                                      explicit_profiles):
    """A broken ./profiles/ file must not break a profile registered explicitly; a lookup that reaches
    the broken source reports its error instead of 'unknown profile'."""
    broken = tmp_path / "profiles"
    broken.mkdir()
    (broken / "bad.yaml").write_text("profiles: {oops: {strategy: moa, topology: {aggregator: a/b}}}\n")
    monkeypatch.chdir(tmp_path)
    explicit_profiles({"profiles": {"fine": _moa()}})
    server.set_model("p1", reply="p")
    server.set_model("agg", reply="fine answer")
    assert litellm.completion(model="composite/profile/fine", messages=user("q"), **call_kwargs
                              ).choices[0].message.content == "fine answer"
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/profile/oops", messages=user("q"), **call_kwargs)
    assert "bad.yaml" in str(info.value) and "proposers" in str(info.value)
