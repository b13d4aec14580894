"""Coding-agent CLIs as models: `composite/composer-cli/<model>`, `composite/cli/<spec>/<model>` and
profiles with `strategy: composer-cli`.

The CLI run is the whole answer, so `prepare` returns a FinalRunner: the service runs it once or streams
its deltas like any final stage, and it records its own sub-call (usage and cost when the CLI reports
them). The subprocess hygiene lives in `composite_llm.cli_agents`; this module only adapts it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing, contextmanager
from typing import Any, AsyncIterator, ClassVar

from pydantic import Field, field_validator

from .. import errors
from ..engine import MemberResult, PlannedCall, RunContext, StreamPiece
from ..errors import CompositeConfigError
from ..schema import NodeConfig, StrictModel
from ..strategies.base import inline_keys_of, inline_topology
from ..trace import SubCallRecord, preview
from . import (
    CLIAgentError,
    CLIExitError,
    CLINotFoundError,
    CLIResult,
    CLISettings,
    CLISpec,
    CLISpecError,
    CLITimeoutError,
    TextDelta,
    get_spec,
    known_spec_names,
    run_cli_agent,
    stream_cli_agent,
)

STAGE = "cli agent"
ROLE = "agent"


class ComposerCLITopology(StrictModel):
    """`model` is what the CLI runs (e.g. composer-1); `cli` names a built-in spec (cursor, claude,
    codex, gemini) unless `spec` gives a whole custom one."""

    model: str = Field(min_length=1)
    cli: str = "cursor"
    spec: CLISpec | None = None
    settings: CLISettings = Field(default_factory=CLISettings)

    @field_validator("cli")
    @classmethod
    def _known_cli(cls, value: str) -> str:
        try:
            get_spec(value)
        except CLISpecError as exc:
            raise ValueError(str(exc)) from None
        return value

    def resolved_spec(self) -> CLISpec:
        return self.spec if self.spec is not None else get_spec(self.cli)


def _as_litellm_error(exc: CLIAgentError, model: str) -> Exception:
    if isinstance(exc, CLISpecError):
        return CompositeConfigError(str(exc))
    if isinstance(exc, CLINotFoundError):
        return errors.unavailable(str(exc), model)
    if isinstance(exc, CLITimeoutError):
        return errors.timed_out(str(exc), model)
    # The CLI's model API refused the request (e.g. 400 context too long): the client gets that
    # status with the CLI's message, not a generic 502.
    upstream = exc.upstream_status if isinstance(exc, CLIExitError) else None
    if upstream == 400:
        return errors.bad_request(str(exc), model)
    if upstream == 429:
        return errors.rate_limited(str(exc), model)
    if upstream is not None and 400 <= upstream < 600:
        return errors.upstream_failed(str(exc), model, upstream)
    return errors.upstream_failed(str(exc), model, getattr(exc, "status_code", 502) or 502)


def finish_reason_of(result: CLIResult) -> str:
    """``length`` when the answer was cut at ``max_output_bytes`` (a trace note says so), else ``stop``."""
    return "length" if result.truncated else "stop"


class _CLIRunner:
    """The final step: one CLI run, recorded in the trace like any sub-call."""

    def __init__(self, topology: ComposerCLITopology, messages: list[Any]) -> None:
        self.topology = topology
        self.spec = topology.resolved_spec()
        self.messages = messages

    def _record(self, ctx: RunContext) -> SubCallRecord:
        return ctx.new_record(role=ROLE, stage=STAGE, label=f"{self.spec.name}:{self.topology.model}",
                              model=f"cli/{self.spec.name}/{self.topology.model}")

    def _finish(self, ctx: RunContext, record: SubCallRecord, result: CLIResult, started: float) -> None:
        record.usage = dataclasses.replace(result.usage)
        record.cost = result.cost_usd
        record.latency_s = time.monotonic() - started
        record.preview = preview(result.text)
        record.extra.update({"argv": result.argv, "exit_code": result.exit_code, "session_id": result.session_id,
                             "truncated": result.truncated, "stop_reason": result.stop_reason,
                             "usage_reported": result.usage_reported, "warnings": result.warnings})
        if result.truncated:
            ctx.trace.notes.append(f"CLI output truncated at {self.topology.settings.max_output_bytes} bytes: "
                                   "the answer is cut (finish_reason length)")
        for warning in result.warnings:
            ctx.trace.notes.append(f"{self.spec.name} CLI warning: {warning}")
        ctx.add_record(record)

    @contextmanager
    def _failure_recorded(self, ctx: RunContext, record: SubCallRecord, started: float) -> Iterator[None]:
        """A run that fails (or is cancelled: "dropped") still leaves its sub-call in the trace; a CLI error
        leaves as LiteLLM's exception type. One place for the run and the stream."""
        try:
            yield
        except BaseException as exc:
            record.status = "dropped" if not isinstance(exc, Exception) else "failed"
            record.latency_s = time.monotonic() - started
            record.error_type, record.error = type(exc).__name__, str(exc)[:300]
            ctx.add_record(record)
            if isinstance(exc, CLIAgentError):
                raise _as_litellm_error(exc, ctx.trace.model) from None
            raise

    async def complete(self, ctx: RunContext) -> MemberResult:
        record, started = self._record(ctx), time.monotonic()
        with self._failure_recorded(ctx, record, started):
            result = await run_cli_agent(self.spec, self.topology.model, self.messages, self.topology.settings,
                                         timeout=ctx.remaining())
        self._finish(ctx, record, result, started)
        call = PlannedCall(node=NodeConfig(model=record.model), role=ROLE, stage=STAGE, model=record.model, params={})
        return MemberResult(call=call, record=record, text=result.text, finish_reason=finish_reason_of(result))

    async def stream(self, ctx: RunContext) -> AsyncIterator[StreamPiece]:
        record, started = self._record(ctx), time.monotonic()
        events = stream_cli_agent(self.spec, self.topology.model, self.messages, self.topology.settings,
                                  timeout=ctx.remaining())
        finish = "stop"
        with self._failure_recorded(ctx, record, started):
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, TextDelta):
                        if event.text:
                            yield StreamPiece(content=event.text)
                    else:
                        self._finish(ctx, record, event, started)
                        finish = finish_reason_of(event)
        yield StreamPiece(finish_reason=finish)


class ComposerCLIStrategy:
    name: ClassVar[str] = "composer_cli"
    topology_model: ClassVar[type[ComposerCLITopology]] = ComposerCLITopology
    inline_keys: ClassVar[frozenset[str]] = inline_keys_of({"settings", "cli", "spec"}, CLISettings)

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        return inline_topology(inline, CLISettings, ("cli", "spec"), model=final_model)

    def count_sub_calls(self, topology: ComposerCLITopology, node: Callable[[NodeConfig], int]) -> int:
        """One CLI run (the CLI's own model calls are its business, not sub-calls of ours)."""
        return 1

    def member_models(self, topology: ComposerCLITopology) -> list[str]:
        return [f"cli/{topology.resolved_spec().name}/{topology.model}"]

    async def prepare(self, ctx: RunContext, topology: ComposerCLITopology, messages: list[Any]) -> _CLIRunner:
        return _CLIRunner(topology, messages)


__all__ = ["ComposerCLIStrategy", "ComposerCLITopology", "known_spec_names"]
