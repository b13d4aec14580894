"""The helpers every strategy builds its inline parameters with (`strategies/base.py`) and the sampled node
list of `schema.py`: one home for what moa, debate, self-consistency, best-of-n, fusion, council, cascade
and composer-cli each wrote out. No server, no LiteLLM call."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from composite_llm.schema import FanOutSettings, SampledNodeList, StrictModel, validation_problems
from composite_llm.strategies import get_strategy
from composite_llm.strategies.base import inline_keys_of, inline_topology


class Members(StrictModel):
    members: SampledNodeList = []


def test_inline_keys_are_the_topology_keys_and_every_settings_field():
    keys = inline_keys_of({"members", "settings"}, FanOutSettings)
    assert isinstance(keys, frozenset)
    assert {"members", "settings", "quorum", "grace_s", "max_sub_calls"} <= keys


def test_inline_topology_copies_given_keys_and_merges_top_level_settings():
    inline = {"members": ["a", "b"], "settings": {"quorum": 2}, "grace_s": 1.5}
    topology = inline_topology(inline, FanOutSettings, ("members", "rounds"), aggregator="final")
    assert topology == {"aggregator": "final", "members": ["a", "b"], "settings": {"quorum": 2, "grace_s": 1.5}}
    assert "rounds" not in topology  # absent keys keep the model's default


@pytest.mark.parametrize(("name", "model_string_model", "inline", "expected"), [
    ("moa", "agg", {"proposers": ["p"]}, {"aggregator": "agg", "proposers": ["p"], "settings": {}}),
    ("moa", "agg", {"aggregator": "a2", "retries": 2}, {"aggregator": "a2", "settings": {"retries": 2}}),
    ("debate", "agg", {"members": ["a", "b"], "rounds": 1}, {"aggregator": "agg", "members": ["a", "b"], "rounds": 1,
                                                            "settings": {}}),
    ("self_consistency", "m", {"samples": 5}, {"model": "m", "samples": 5, "settings": {}}),
    ("best_of_n", "j", {"candidates": ["a"]}, {"judge": "j", "candidates": ["a"], "settings": {}}),
    ("composer_cli", "composer-1", {"cli": "cursor", "settings": {"max_output_bytes": 10}, "timeout_seconds": 5},
     {"model": "composer-1", "cli": "cursor", "settings": {"max_output_bytes": 10, "timeout_seconds": 5}}),
])
def test_each_strategy_builds_its_inline_topology_through_the_shared_helper(name, model_string_model, inline, expected):
    strategy = get_strategy(name)
    assert set(inline) <= strategy.inline_keys
    assert strategy.topology_from_inline(model_string_model, inline) == expected


def test_sampled_node_list_expands_the_short_form_and_reports_paths():
    members = Members.model_validate({"members": {"model": "openai/m", "samples": 3, "temperature": 0.5}}).members
    assert [n.model for n in members] == ["openai/m"] * 3
    assert Members.model_validate({"members": ["a", {"model": "b"}]}).members[1].model == "b"
    with pytest.raises(ValidationError) as info:
        Members.model_validate({"members": [{"model": "a"}, {"mdl": "b"}]})
    assert validation_problems(info.value, "topology") == ["topology.members[1].model: Field required",
                                                           "topology.members[1].mdl: unknown field (not allowed here)"]
