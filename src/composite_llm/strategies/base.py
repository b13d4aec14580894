"""What a strategy is: a typed topology, a way to build one from inline parameters, and `prepare`.

`prepare` runs every stage but the last and returns the final step. The service then runs that step
either as one call or as a token stream, so every strategy streams, counts usage and falls back the
same way without writing that plumbing itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, ClassVar, Optional, Protocol, Union

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


FinalStep = Union[FinalCall, FinalText, FinalRunner]


class Strategy(Protocol):
    """One composite strategy, registered by name in `strategies/__init__.py`."""

    name: ClassVar[str]
    topology_model: ClassVar[type[BaseModel]]
    # Request parameters (kwargs, optional_params, extra_body) this strategy reads to build a topology.
    inline_keys: ClassVar[frozenset[str]]

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        """A topology dict (validated afterwards by `topology_model`) from a model string's final model
        and the request's inline parameters."""
        ...

    async def prepare(self, ctx: RunContext, topology: Any, messages: list[Any]) -> FinalStep: ...

    def member_models(self, topology: Any) -> list[str]:
        """Every model the topology may call (for listings and dependency checks)."""
        ...


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
