"""The strategy registry checks a strategy against the `Strategy` protocol when it is registered.

Before this check, a third-party strategy missing `inline_keys` registered silently and failed with an
AttributeError at its first request; these tests register broken strategies and expect a TypeError at
`register_strategy`, naming every problem. No server, no LiteLLM call.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import Field

from composite_llm import strategies
from composite_llm.errors import CompositeConfigError
from composite_llm.request import build_request
from composite_llm.schema import FanOutSettings, NodeConfig, StrictModel
from composite_llm.strategies import FinalText, get_strategy, register_strategy, strategy_names
from composite_llm.strategies.base import strategy_problems


class EchoTopology(StrictModel):
    members: list[NodeConfig] = Field(min_length=1)
    settings: FanOutSettings = Field(default_factory=FanOutSettings)


class EchoStrategy:
    """A complete third-party strategy."""

    name: ClassVar[str] = "unit_echo"
    topology_model: ClassVar[type[EchoTopology]] = EchoTopology
    inline_keys: ClassVar[frozenset[str]] = frozenset({"members", "settings"})

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        return {"members": inline.get("members") or [final_model]}

    def member_models(self, topology: EchoTopology) -> list[str]:
        return [n.model for n in topology.members]

    async def prepare(self, ctx: Any, topology: EchoTopology, messages: list[Any]) -> FinalText:
        return FinalText("echo")


class NoInlineKeys(EchoStrategy):
    name: ClassVar[str] = "unit_no_inline_keys"
    inline_keys = None  # type: ignore[assignment]  # as if the class never declared it


class NoTopologyModel(EchoStrategy):
    name: ClassVar[str] = "unit_no_topology_model"
    topology_model = None  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def restore_registry():
    """Every test leaves the process-wide registry as it found it."""
    saved = dict(strategies._REGISTRY)
    yield
    strategies._REGISTRY.clear()
    strategies._REGISTRY.update(saved)


def _registration_error(strategy: Any) -> str:
    with pytest.raises(TypeError) as info:
        register_strategy(strategy)
    return str(info.value)


def test_builtin_strategies_satisfy_the_protocol():
    for name in strategy_names():
        assert strategy_problems(get_strategy(name)) == [], name


def test_complete_strategy_registers_and_builds_a_typed_topology():
    register_strategy(EchoStrategy())
    assert get_strategy("unit-echo").name == "unit_echo"  # '-' and '_' match
    request = build_request(model="composite/unit_echo/openai/m1", messages=[{"role": "user", "content": "q"}],
                            api_base=None, api_key=None, optional_params={"members": ["openai/a", "openai/b"]},
                            litellm_params={}, timeout=None)
    assert isinstance(request.topology, EchoTopology)
    assert [n.model for n in request.topology.members] == ["openai/a", "openai/b"]


def test_missing_inline_keys_fails_at_registration_naming_it():
    message = _registration_error(NoInlineKeys())
    assert "'unit_no_inline_keys'" in message and "inline_keys is missing" in message
    with pytest.raises(CompositeConfigError, match="unknown strategy"):
        get_strategy("unit_no_inline_keys")  # not registered half-way


def test_missing_topology_model_fails_at_registration_naming_it():
    assert "topology_model is missing" in _registration_error(NoTopologyModel())


@pytest.mark.parametrize(("attribute", "value", "expected"), [
    ("topology_model", dict, "topology_model must be a pydantic BaseModel subclass"),
    ("topology_model", EchoTopology(members=["openai/a"]), "topology_model must be a pydantic BaseModel subclass"),
    ("inline_keys", ["members"], "inline_keys must be a frozenset of parameter names"),
    ("inline_keys", frozenset({"members", 3}), "inline_keys must be a frozenset of parameter names"),
    ("name", "", "name must be a non-empty string"),
    ("name", 7, "name must be a non-empty string"),
])
def test_wrong_member_types_fail_at_registration(attribute, value, expected):
    broken = type("Broken", (EchoStrategy,), {attribute: value})()
    assert expected in _registration_error(broken)


def test_wrong_methods_fail_at_registration():
    class SyncPrepare(EchoStrategy):
        name: ClassVar[str] = "unit_sync_prepare"

        def prepare(self, ctx: Any, topology: Any, messages: list[Any]) -> FinalText:  # type: ignore[override]
            return FinalText("x")

    class OneArgument(EchoStrategy):
        name: ClassVar[str] = "unit_one_argument"

        def topology_from_inline(self, final_model: str) -> dict[str, Any]:  # type: ignore[override]
            return {}

    assert "prepare() must be async" in _registration_error(SyncPrepare())
    assert "topology_from_inline() must take (final_model, inline)" in _registration_error(OneArgument())


def test_every_problem_is_named_at_once_and_a_class_is_not_an_instance():
    message = _registration_error(object())
    for part in ("name is missing", "topology_model is missing", "inline_keys is missing",
                 "topology_from_inline() is missing", "prepare() is missing", "member_models() is missing"):
        assert part in message
    assert "not an instance (register EchoStrategy())" in _registration_error(EchoStrategy)


def test_a_plain_set_of_inline_keys_is_accepted():
    register_strategy(type("SetKeys", (EchoStrategy,), {"name": "unit_set_keys", "inline_keys": {"members"}})())
    assert get_strategy("unit_set_keys").inline_keys == {"members"}


def test_an_optional_sub_call_counter_with_the_wrong_arguments_fails_at_registration():
    class Miscounting(EchoStrategy):
        def count_sub_calls(self, topology):  # the budget calls it with (topology, node)
            return 1

    with pytest.raises(TypeError, match=r"optional method count_sub_calls\(\) must take \(topology, node\)"):
        register_strategy(Miscounting())
