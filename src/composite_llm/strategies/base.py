"""What a strategy is: a typed topology, a way to build one from inline parameters, and `prepare`.

`prepare` runs every stage but the last and returns the final step. The service then runs that step
either as one call or as a token stream, so every strategy streams, counts usage and falls back the
same way without writing that plumbing itself.

`Strategy` is the one extension point: a third-party strategy is a class with these members, registered
with `register_strategy(MyStrategy())`, which checks it against this protocol (`strategy_problems`) so a
missing or mistyped member fails at registration, not at a request's first use.
"""

from __future__ import annotations

import inspect
from collections.abc import Set
from dataclasses import dataclass
from typing import Any, AsyncIterator, ClassVar, Protocol, TypeVar

from pydantic import BaseModel

from ..engine import MemberResult, PlannedCall, RunContext, StreamPiece
from ..schema import FanOutSettings


@dataclass
class FinalCall:
    """The last stage is one model call (with fallbacks): the aggregator, the chairman..."""

    candidates: list[PlannedCall]
    messages: list[Any]
    settings: FanOutSettings


@dataclass
class FinalText:
    """The strategy already has the answer (e.g. a vote); nothing more to call."""

    text: str
    finish_reason: str = "stop"


class FinalRunner(Protocol):
    """A final stage that is not a LiteLLM call (e.g. a CLI agent): it runs or streams itself and
    records its own sub-call in the context's trace."""

    async def complete(self, ctx: RunContext) -> MemberResult: ...

    def stream(self, ctx: RunContext) -> AsyncIterator[StreamPiece]: ...


FinalStep = FinalCall | FinalText | FinalRunner


# Every topology is a pydantic model (in practice a `schema.StrictModel`, so unknown keys are errors): profiles
# and inline parameters are validated against the strategy's `topology_model` before `prepare` sees them.
Topology = BaseModel
# The topology type of one strategy; contravariant, because a strategy only ever receives its topology.
TopologyT = TypeVar("TopologyT", bound=BaseModel, contravariant=True)


class Strategy(Protocol[TopologyT]):
    """One composite strategy, registered by name with `strategies.register_strategy`.

    `prepare` and `member_models` receive an instance of `topology_model`, already validated."""

    name: ClassVar[str]
    topology_model: ClassVar[type[BaseModel]]
    # Request parameters (kwargs, optional_params, extra_body) this strategy reads to build a topology.
    inline_keys: ClassVar[frozenset[str]]

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        """A topology dict (validated afterwards by `topology_model`) from a model string's final model
        and the request's inline parameters."""
        ...

    async def prepare(self, ctx: RunContext, topology: TopologyT, messages: list[Any]) -> FinalStep: ...

    def member_models(self, topology: TopologyT) -> list[str]:
        """Every model the topology may call (for listings and dependency checks)."""
        ...

    # Optional: `count_sub_calls(self, topology, node) -> int`, an upper bound of the leaf sub-calls one run
    # makes, `node(n)` counting one node (1, or a nested composite's own count); the request's
    # `settings.max_sub_calls` is checked against it before any call (composite_llm.budget). Without it, a
    # strategy counts as one call per model of `member_models`.


# How the library calls each method (positional arguments after self), to check a strategy's signatures.
_METHOD_ARGS: dict[str, tuple[str, ...]] = {
    "topology_from_inline": ("final_model", "inline"),
    "prepare": ("ctx", "topology", "messages"),
    "member_models": ("topology",),
}
_OPTIONAL_METHOD_ARGS: dict[str, tuple[str, ...]] = {"count_sub_calls": ("topology", "node")}


def strategy_problems(strategy: object) -> list[str]:
    """What keeps `strategy` from satisfying `Strategy`, one phrase per problem (empty when it does).

    Checked at registration: a strategy missing `inline_keys` would otherwise fail at its first request,
    and a `topology_model` that is not a pydantic model at its first profile load."""
    if isinstance(strategy, type):
        return [f"it is the class {strategy.__name__}, not an instance (register {strategy.__name__}())"]
    problems = []
    name = getattr(strategy, "name", None)
    if not isinstance(name, str) or not name.strip():
        problems.append("name is missing" if name is None else f"name must be a non-empty string, got {name!r}")
    model = getattr(strategy, "topology_model", None)
    if model is None:
        problems.append("topology_model is missing (the pydantic model a topology is validated against)")
    elif not (isinstance(model, type) and issubclass(model, BaseModel)):
        problems.append(f"topology_model must be a pydantic BaseModel subclass, got {model!r}")
    keys = getattr(strategy, "inline_keys", None)
    if keys is None:
        problems.append("inline_keys is missing (the request parameters it reads, e.g. frozenset({'settings'}))")
    elif not isinstance(keys, Set) or not all(isinstance(key, str) for key in keys):
        problems.append(f"inline_keys must be a frozenset of parameter names, got {keys!r}")
    for method, args in _METHOD_ARGS.items():
        function = getattr(strategy, method, None)
        if not callable(function):
            problems.append(f"method {method}() is missing")
            continue
        try:
            inspect.signature(function).bind(*args)
        except TypeError:
            problems.append(f"method {method}() must take ({', '.join(args)})")
        except ValueError:  # no signature to read (a builtin): trust it
            pass
        if method == "prepare" and not inspect.iscoroutinefunction(function):
            problems.append("method prepare() must be async (async def prepare(self, ctx, topology, messages))")
    for method, args in _OPTIONAL_METHOD_ARGS.items():
        function = getattr(strategy, method, None)
        if function is None:
            continue
        try:
            inspect.signature(function).bind(*args)
        except TypeError:
            problems.append(f"optional method {method}() must take ({', '.join(args)})")
        except ValueError:
            pass
    return problems


def inline_keys_of(keys: Set[str], settings_model: type[BaseModel]) -> frozenset[str]:
    """A strategy's `inline_keys`: its topology keys (with `settings`) plus every settings field, which may
    also be given at the top level (`quorum=2` as well as `settings={"quorum": 2}`)."""
    return frozenset(keys) | frozenset(settings_model.model_fields)


def inline_topology(inline: dict[str, Any], settings_model: type[BaseModel], keys: tuple[str, ...], **fixed: Any
                    ) -> dict[str, Any]:
    """A topology dict from inline parameters: the `fixed` entries (e.g. the model string's model in its role),
    the settings (`split_settings`) and those of `keys` the request gave (absent ones keep the defaults)."""
    return {**fixed, "settings": split_settings(inline, settings_model), **{k: inline[k] for k in keys if k in inline}}


def split_settings(inline: dict[str, Any], settings_model: type[BaseModel]) -> dict[str, Any]:
    """Settings given inline: a `settings` dict plus top-level keys that are settings fields."""
    settings = dict(inline.get("settings") or {})
    for key in settings_model.model_fields:
        if key in inline:
            settings[key] = inline[key]
    return settings


def final_candidates(ctx: RunContext, node: Any, *, role: str, stage: str) -> list[PlannedCall]:
    """The final node followed by its fallbacks, all planned; the context keeps time for them."""
    calls = [ctx.plan(n, role=role, stage=stage) for n in [node, *node.fallbacks]]
    ctx.expect_final(calls)
    return calls
