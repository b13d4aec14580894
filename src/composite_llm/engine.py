"""The async engine: every sub-call of a composite request goes through one RunContext.

It owns what strategies must not re-invent: resolving a node into litellm kwargs (provider bundles,
`os.environ/` references, request defaults), per-call timeouts bounded by the request deadline, retries of
one sub-call (never of a whole fan-out), a per-process concurrency limit, quorum/grace/deadline fan-out
with straggler cancellation, streaming of the final stage, and the usage/cost ledger (the Trace).
Strategies describe *what* to call; the engine decides *how*.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, Sequence

import litellm

from . import errors, router_members
from .errors import CompositeConfigError
from .limits import (  # noqa: F401 - set_max_concurrency and its default stay importable from here
    _DEFAULT_MAX_CONCURRENCY,
    BudgetScope,
    NoLimit,
    SubCallBudget,
    current_budget,
    limiter,
    observe_latency,
    observed_latency,
    set_max_concurrency,
)
from .messages import with_instruction
from .redact import redact, secret_values_in
from .schema import DEFAULT_MAX_SUB_CALLS, ENV_REF_PREFIX, FanOutSettings, NodeConfig, ProviderBundle
from .trace import SubCallRecord, Trace, preview
from .usage import PRICE_KEYS, UNSUPPORTED_PRICE_KEYS, UsageTotals, priced_cost, response_cost

DEFAULT_MEMBER_TIMEOUT_S = 600.0
MAX_COMPOSITE_DEPTH = 4
# Slack on top of litellm's own timeout before the engine gives up on a sub-call itself.
_TIMEOUT_SLACK_S = 1.0
_MAX_BACKOFF_S = 5.0
# Prompts up to this size are tokenized for an in-flight cost estimate; larger ones are estimated by length.
_TOKENIZE_UP_TO_CHARS = 32_000
# The model name whose tokenizer counts in-flight prompts: LiteLLM's bundled tiktoken encoding (no download).
_ESTIMATE_TOKENIZER_MODEL = "gpt-4"

ProgressFn = Callable[[str], None]


# --------------------------------------------------------------------------- data
@dataclass
class PlannedCall:
    """A node resolved for one request: the exact litellm kwargs, minus messages."""

    node: NodeConfig
    role: str
    stage: str
    model: str
    params: dict[str, Any]
    secrets: set[str] = field(default_factory=set)
    price: dict[str, float] = field(default_factory=dict)  # the node's own per-token price, if any

    @property
    def label(self) -> str:
        return self.node.label


@dataclass
class MemberResult:
    """The outcome of one planned call; `record` is the trace entry."""

    call: PlannedCall
    record: SubCallRecord
    text: str = ""
    message: Any = None
    finish_reason: str | None = None
    response: Any = None

    @property
    def ok(self) -> bool:
        return self.record.status == "ok"


@dataclass
class StageResult:
    """Every member's result in input order; `answers` are the successful ones."""

    stage: str
    results: list[MemberResult]

    @property
    def answers(self) -> list[MemberResult]:
        return [r for r in self.results if r.ok]


@dataclass
class StreamPiece:
    """One streamed delta of the final stage."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[Any] | None = None
    finish_reason: str | None = None


def resolve_env_refs(value: Any, where: str) -> Any:
    """Replace `os.environ/NAME` strings (at any depth) with the variable's value."""
    if isinstance(value, str) and value.startswith(ENV_REF_PREFIX):
        name = value[len(ENV_REF_PREFIX):]
        resolved = os.environ.get(name)
        if not resolved:  # `NAME=` in a .env file is as unset as no line at all
            empty = "" if resolved is None else " (it is empty)"
            raise CompositeConfigError(f"environment variable {name} is not set{empty} (needed by {where})")
        return resolved
    if isinstance(value, dict):
        return {k: resolve_env_refs(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env_refs(v, where) for v in value]
    return value


# --------------------------------------------------------------------------- run context
class RunContext:
    """Per-request state: the trace/ledger, the deadline, request-level params and defaults."""

    def __init__(
        self,
        *,
        trace: Trace,
        providers: dict[str, ProviderBundle],
        shared_params: dict[str, Any],
        final_params: dict[str, Any],
        defaults: dict[str, Any],
        timeout: float | None,
        depth: int = 0,
        stack: Sequence[str] = (),
        progress: ProgressFn | None = None,
        where: str = "",
        max_sub_calls: int | None = None,
        on_cost: Callable[[float], None] | None = None,
    ) -> None:
        self.trace = trace
        self.providers = providers
        self.shared_params = shared_params
        self.final_params = final_params
        self.defaults = {k: v for k, v in defaults.items() if v}
        self.timeout = timeout or None
        self.deadline = time.monotonic() + timeout if timeout else None
        self.depth = depth
        self.stack = tuple(stack)
        self.progress = progress
        self.where = where or trace.model
        self.rng = random.Random(trace.request_id)
        trace.secrets |= secret_values_in(self.defaults)  # previews and progress lines are redacted with them
        # A nested composite spends its parent request's budget; a top-level request starts its own.
        self.budget = current_budget() or SubCallBudget(max_sub_calls or DEFAULT_MAX_SUB_CALLS, self.where)
        self.final_calls: list[PlannedCall] = []
        # Told the request's cost so far whenever a sub-call lands, so a client that leaves early is billed
        # for what already ran (the streaming provider keeps LiteLLM's logging object up to date with it).
        self.on_cost = on_cost
        self.abandoned = False
        # Estimated cost of sub-calls sent and not landed yet (their prompt, and a streamed answer's tokens so
        # far), reported with the landed costs: the proxy bills a dropped stream before this request's own
        # cleanup runs, so the in-flight part must already be in the reported cost.
        self._provisional: dict[int, float] = {}

    def expect_final(self, calls: Sequence[PlannedCall]) -> None:
        """Name the final stage (with fallbacks) before the fan-outs run, so they can leave it time."""
        self.final_calls = list(calls)

    # ------------------------------------------------------------------ planning
    def plan(self, node: NodeConfig, *, role: str, stage: str) -> PlannedCall:
        """Resolve a node: provider bundle < node params, request api_base/api_key where none is set."""
        where = f"{self.where}, {role} node {node.label!r}"
        params: dict[str, Any] = {}
        if node.provider:
            bundle = self.providers.get(node.provider)
            if bundle is None:
                known = ", ".join(sorted(self.providers)) or "none"
                raise CompositeConfigError(f"unknown provider bundle {node.provider!r} in {where} (known: {known})")
            params.update(resolve_env_refs(bundle.litellm_params, where))
        params.update(resolve_env_refs(node.params, where))
        # The request's api_base/api_key are defaults for direct calls; a Router member's deployment has its own.
        for key, value in ({} if router_members.is_router_model(node.model) else self.defaults).items():
            params.setdefault(key, value)
        params.pop("model", None)
        price = {key: params.pop(key) for key in PRICE_KEYS if params.get(key) is not None}
        unsupported = [key for key in UNSUPPORTED_PRICE_KEYS if key in params]
        if unsupported:
            raise CompositeConfigError(f"{', '.join(unsupported)} in {where}: per-second prices are not supported on "
                                       "composite nodes; use input_cost_per_token / output_cost_per_token")
        for key, value in price.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise CompositeConfigError(f"{key}={value!r} in {where}: a price must be a number >= 0")
        if node.is_composite:
            if self.depth + 1 > MAX_COMPOSITE_DEPTH:
                raise CompositeConfigError(
                    f"composites nested deeper than {MAX_COMPOSITE_DEPTH} levels at {where} (a cycle?)"
                )
            if node.model in self.stack:
                chain = " -> ".join([*self.stack, node.model])
                raise CompositeConfigError(f"composite cycle: {chain}")
        elif router_members.is_router_model(node.model):
            router_members.check_call(node.model, stack=self.stack, where=where)
        secrets = secret_values_in(params)
        self.trace.secrets |= secrets
        return PlannedCall(node=node, role=role, stage=stage, model=node.model, params=params, secrets=secrets,
                           price=price)

    def plan_all(self, nodes: Iterable[NodeConfig], *, role: str, stage: str) -> list[PlannedCall]:
        return [self.plan(node, role=role, stage=stage) for node in nodes]

    # ------------------------------------------------------------------ helpers
    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    @staticmethod
    def _configured_timeout(call: PlannedCall, settings: FanOutSettings) -> float:
        """The node's own timeout, the same for every call of it. This is what LiteLLM gets: it keys its
        cached HTTP clients on the timeout, so a per-call value (time left in the request) would build a new
        client and connection for nearly every sub-call."""
        return call.node.timeout_s or settings.member_timeout_s or DEFAULT_MEMBER_TIMEOUT_S

    def _timeout_for(self, call: PlannedCall, settings: FanOutSettings) -> float:
        """How long the engine waits for this call: the configured timeout, bounded by the request deadline."""
        timeout = self._configured_timeout(call, settings)
        remaining = self.remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        if timeout <= 0:
            raise errors.timed_out(f"{self.where}: the request timeout expired before {call.role} {call.label} ran")
        return timeout

    def _wait_limit(self, call: PlannedCall, settings: FanOutSettings, timeout: float) -> float:
        """The engine's own bound: slack after LiteLLM's timeout, or exactly the deadline when that is sooner."""
        configured = self._configured_timeout(call, settings)
        return timeout + _TIMEOUT_SLACK_S if timeout >= configured else timeout

    def _kwargs(self, call: PlannedCall, messages: list[Any], *, final: bool, settings: FanOutSettings) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.shared_params)
        if final or settings.member_tools:
            kwargs.update(self.final_params if final else {
                k: v for k, v in self.final_params.items() if k in ("tools", "tool_choice", "parallel_tool_calls")
            })
        kwargs.update(call.params)
        kwargs["model"] = call.model
        kwargs["messages"] = with_instruction(messages, call.node.instruction)
        kwargs["no-log"] = True  # the composite request is logged once, by LiteLLM, with the summed cost
        if call.node.is_composite:
            kwargs["composite_depth"] = self.depth + 1
            kwargs["composite_stack"] = list(self.stack)  # the nested request appends its own name
        else:
            kwargs.setdefault("max_retries", 0)  # retries are ours, per sub-call, visible in the trace
        return kwargs

    def _acompletion_for(self, call: PlannedCall) -> Callable[..., Any]:
        """What a sub-call awaits: `litellm.acompletion`, or the LiteLLM Router's for a `router/<group>` node."""
        if router_members.is_router_model(call.model):
            return router_members.acompletion_for(call.model, request_id=self.trace.request_id, depth=self.depth,
                                                  stack=self.stack)
        return litellm.acompletion

    def _limit(self, call: PlannedCall) -> Any:
        # A nested composite is not a leaf call: holding a slot while its own members wait for one
        # could deadlock the limit, so only leaf calls take a slot.
        return NoLimit() if call.node.is_composite else limiter().slot(self.budget)

    def _describe_error(self, call: PlannedCall, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        text = text.replace("litellm.", "").strip()
        return preview(redact(text, call.secrets | self._request_secrets()), 300)  # redact, then cut: no half keys

    def _request_secrets(self) -> set[str]:
        return secret_values_in(self.defaults)

    def new_record(self, *, role: str, stage: str, label: str, model: str) -> SubCallRecord:
        """A trace record for a sub-call that is not a LiteLLM call (e.g. a CLI agent run)."""
        return SubCallRecord(stage=stage, role=role, label=label, model=model,
                             started_s=time.monotonic() - self.trace.started)

    def add_record(self, record: SubCallRecord) -> None:
        """Add a finished record to the ledger and report it as progress. The progress line is only
        formatted when someone listens (streaming); non-streamed requests skip that work."""
        self._land(record)
        if self.progress is not None:
            self.progress(self.trace.describe(record))

    def _land(self, record: SubCallRecord) -> None:
        estimated = self._provisional.pop(id(record), None)
        if record.status == "dropped" and record.cost is None and estimated is not None \
                and (self.abandoned or record.streamed):
            # Sent, then cancelled because the client left: the upstream still bills the prompt.
            record.cost = estimated
            record.extra["cost_estimated"] = True
        self.trace.add(record)
        if self.on_cost is not None and (record.cost or estimated):
            self._report_cost()

    def _report_cost(self) -> None:
        if self.on_cost is not None:
            self.on_cost(self.trace.cost + sum(self._provisional.values()))

    def _sent(self, record: SubCallRecord, call: PlannedCall, messages: list[Any]) -> float | None:
        """A leaf call is on the wire: when someone follows the cost (streaming), count its prompt's estimated
        price as spent until it lands. Returns the price of one answer token (None: unpriced)."""
        if self.on_cost is None or call.node.is_composite or id(record) in self._provisional:
            return None
        _usage, cost = _prompt_estimate(call, messages)
        if cost is not None:
            self._provisional[id(record)] = cost
            self._report_cost()
        return _price(call, UsageTotals(completion_tokens=1))

    def _streamed_token(self, record: SubCallRecord, token_price: float | None) -> None:
        if token_price and id(record) in self._provisional:
            self._provisional[id(record)] += token_price
            self._report_cost()

    def abandon(self) -> None:
        """The client left. Call before cancelling the sub-calls in flight: each keeps its estimated cost
        (marked `cost_estimated`) when it lands as dropped, so the request is billed for what ran."""
        self.abandoned = True
        self._report_cost()

    def _record(self, call: PlannedCall) -> SubCallRecord:
        return SubCallRecord(stage=call.stage, role=call.role, label=call.label, model=call.model,
                             started_s=time.monotonic() - self.trace.started)

    @staticmethod
    def _retry_after(exc: BaseException) -> float | None:
        """The upstream's Retry-After in seconds, if it sent one."""
        # LiteLLM keeps the upstream's headers in `litellm_response_headers` (its `response.headers` is empty).
        headers = (getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
                   or getattr(getattr(exc, "response", None), "headers", None) or {})
        try:
            retry_after = headers.get("retry-after") or headers.get("Retry-After")
            return float(retry_after) if retry_after is not None else None
        except (TypeError, ValueError, AttributeError):
            return None

    @classmethod
    def _retry_delay(cls, exc: BaseException, attempt: int) -> float:
        retry_after = cls._retry_after(exc)
        if retry_after is not None:
            return min(retry_after, _MAX_BACKOFF_S)
        return min(0.25 * (2 ** (attempt - 1)), _MAX_BACKOFF_S)

    # ------------------------------------------------------------------ one call
    async def call(
        self, call: PlannedCall, messages: list[Any], *, settings: FanOutSettings, final: bool = False
    ) -> MemberResult:
        """Run one sub-call with retries. Failures are recorded and returned, never raised;
        cancellation is recorded as a dropped member and re-raised."""
        if not call.node.is_composite:
            self.budget.take(f"{call.role} {call.label}")
        record = self._record(call)
        kwargs = self._kwargs(call, messages, final=final, settings=settings)
        started = time.monotonic()
        result = MemberResult(call=call, record=record)
        try:
            while True:
                try:
                    timeout = self._timeout_for(call, settings)
                    async with self._limit(call):
                        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result instead of
                        # raising when a cancellation arrives as the awaited call completes (the cancel is lost).
                        async with asyncio.timeout(self._wait_limit(call, settings, timeout)):
                            with BudgetScope(self.budget if call.node.is_composite else None):
                                self._sent(record, call, messages)
                                response = await self._acompletion_for(call)(
                                    **kwargs, timeout=self._configured_timeout(call, settings))
                    self._accept(result, response, final=final)
                    observe_latency(call.model, time.monotonic() - started)
                    break
                except asyncio.CancelledError:
                    raise
                except CompositeConfigError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every provider failure becomes a trace entry
                    if call.node.is_composite and isinstance(exc, litellm.BadRequestError) \
                            and not errors.is_refused_upstream(exc):
                        # A nested composite answers 400 only for a configuration problem (cycle, depth, missing
                        # variable, bad parameters): the request is misconfigured, not degraded.
                        reason = re.sub(r"^litellm\.\w+: ", "", str(exc))
                        raise CompositeConfigError(f"{call.role} {call.label}: {reason}") from None
                    if isinstance(exc, asyncio.TimeoutError):
                        exc = errors.timed_out(f"no answer within {timeout:.1f} s")
                    remaining = self.remaining()
                    delay = self._retry_delay(exc, record.attempts)
                    # A nested composite already retried its own members: retrying it re-runs a fan-out.
                    if (record.attempts <= settings.retries and errors.is_retryable(exc) and not call.node.is_composite
                            and (remaining is None or remaining > delay + 0.05)):
                        record.attempts += 1
                        await asyncio.sleep(delay)
                        continue
                    record.status = "failed"
                    record.error_type = type(exc).__name__
                    record.error = self._describe_error(call, exc)
                    record.extra["status_code"] = errors.status_code_of(exc)
                    if record.extra["status_code"] == 429 and self._retry_after(exc) is not None:
                        record.extra["retry_after"] = self._retry_after(exc)
                    break
        except asyncio.CancelledError:
            record.status = "dropped"
            record.latency_s = time.monotonic() - started
            self.add_record(record)
            raise
        record.latency_s = time.monotonic() - started
        self.add_record(record)
        return result

    def _accept(self, result: MemberResult, response: Any, *, final: bool) -> None:
        record = result.record
        choice = response.choices[0] if getattr(response, "choices", None) else None
        message = getattr(choice, "message", None)
        text = (getattr(message, "content", None) or "") if message is not None else ""
        tool_calls = getattr(message, "tool_calls", None) if message is not None else None
        record.usage = UsageTotals.from_usage(getattr(response, "usage", None))
        record.cost = priced_cost(record.usage, result.call.price) if result.call.price else response_cost(response)
        record.preview = preview(self.trace.redact(text))  # redacted whole, then cut (never half a key)
        result.text, result.message, result.response = text, message, response
        result.finish_reason = getattr(choice, "finish_reason", None)
        if not text.strip() and not tool_calls:
            if final and self._cut_by_the_client(result.finish_reason, call=result.call):
                return  # the client's own max_tokens ended the answer before any text: a plain model's answer
            # An empty answer is a failure at every stage: a member's would reach no prompt, a final stage's
            # would reach the client as a clean, empty "success"; its fallbacks run instead.
            raise _EmptyAnswer("the model returned no answer" + ("" if choice is not None else " (no choices)"))

    def _cut_by_the_client(self, finish_reason: str | None, *, call: PlannedCall) -> bool:
        """True when a `length` finish comes from a token cap the client (or the node) set."""
        caps = ("max_tokens", "max_completion_tokens")
        return finish_reason == "length" and any(k in self.final_params or k in call.params for k in caps)

    # ------------------------------------------------------------------ fan-out
    async def fan_out(
        self,
        items: Sequence[tuple[PlannedCall, list[Any]]],
        *,
        settings: FanOutSettings,
        stage: str,
        quorum: int | None = None,
    ) -> StageResult:
        """Run calls in parallel; proceed per quorum/grace/deadline; cancel stragglers; raise when
        fewer than `quorum` members answered (with every member's error, redacted)."""
        needed = settings.quorum if quorum is None else quorum
        tasks = [asyncio.ensure_future(self.call(call, messages, settings=settings)) for call, messages in items]
        loop = asyncio.get_running_loop()
        stage_deadline = loop.time() + settings.deadline_s if settings.deadline_s else None
        # With a request deadline, the stage stops waiting for stragglers once the quorum answered and only
        # the final stage's reserve is left (before that point it waits as usual).
        planned_end = self._planned_stage_end(settings)
        planned_end = None if planned_end is None else loop.time() + planned_end
        grace_end: float | None = None
        pending = set(tasks)
        answered = 0
        cut_for_deadline = False
        try:
            while pending:
                # (a stage that needs no answer, like optional reviews, is cut at the planned point as well)
                enough = answered >= needed
                limits = [t for t in (stage_deadline, grace_end, planned_end if enough else None) if t is not None]
                wait_s = min(limits) - loop.time() if limits else None
                if wait_s is not None and wait_s <= 0:
                    cut_for_deadline = planned_end is not None and loop.time() >= planned_end
                    break
                done, pending = await asyncio.wait(pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                answered = sum(1 for t in tasks if t.done() and not t.cancelled() and t.result().ok)
                if answered >= max(needed, 1) and settings.grace_s is not None and grace_end is None:
                    grace_end = loop.time() + settings.grace_s
                if answered + len(pending) < needed:
                    break  # the quorum can no longer be met: fail fast
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        results = []
        for task, (call, _messages) in zip(tasks, items):
            if task.done() and not task.cancelled() and task.exception() is None:
                results.append(task.result())
            elif task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # a configuration error, not a member failure
            else:
                record = next((r for r in reversed(self.trace.records)
                               if r.stage == call.stage and r.label == call.label and r.status == "dropped"),
                              self._record(call))
                results.append(MemberResult(call=call, record=record))
        outcome = StageResult(stage=stage, results=results)
        if cut_for_deadline:
            stragglers = [f"{r.call.role} {r.call.label}" for r in outcome.results if r.record.status == "dropped"]
            if stragglers:
                self.trace.notes.append(
                    f"{stage}: stopped waiting for {', '.join(stragglers)} to leave the final stage "
                    f"{self._final_reserve(settings):.1f} s of the request timeout")
        if len(outcome.answers) < needed:
            raise self.too_few(outcome, needed)
        return outcome

    # ------------------------------------------------------------------ deadline planning
    def _final_reserve(self, settings: FanOutSettings) -> float:
        """Seconds of the request timeout kept for the final stage.

        The setting when given; else twice the final model's observed latency, at least a fifth and at most
        half of the timeout (a loaded machine and LiteLLM's own overhead need slack), or a third of the
        timeout for a model not seen yet; never more than the final node's own timeout. Strategies with no final call (votes) keep a twentieth, to answer before the client's
        own timeout fires."""
        total = self.timeout or 0.0
        if settings.final_reserve_s is not None:
            return settings.final_reserve_s
        if not self.final_calls:
            return min(total / 20, 2.0)
        seen = observed_latency(self.final_calls[0].model)
        reserve = min(total / 2, max(2 * seen, total / 5)) if seen is not None else total / 3
        configured = self.final_calls[0].node.timeout_s
        return min(reserve, configured) if configured else reserve

    def _planned_stage_end(self, settings: FanOutSettings) -> float | None:
        """Seconds from now until a fan-out should stop waiting for stragglers (None: no request deadline)."""
        remaining = self.remaining()
        if remaining is None:
            return None
        return max(remaining - self._final_reserve(settings), 0.0)

    def too_few(self, outcome: StageResult, needed: int) -> Exception:
        """The LiteLLM exception for a stage with fewer than `needed` answers, listing each failure."""
        failures = [r.record for r in outcome.results if not r.ok]
        summary = "; ".join(f"{r.role} {r.label}: {r.error or r.status}" for r in failures)
        message = (f"{self.where}: {outcome.stage}: only {len(outcome.answers)} of {len(outcome.results)} "
                   f"members answered (quorum {needed}). {summary}")
        codes = [r.extra.get("status_code") for r in failures]
        if failures and all(code == 400 for code in codes):
            # Every member refused the request itself (bad parameter, context too long): the client's
            # request is wrong, and a retry or another deployment would fail the same way.
            return errors.refused_upstream(message, self.trace.model)
        if failures and all(code == 429 for code in codes):
            # A client may retry a 429 only when nothing in this request was paid for (no sub-call answered).
            paid = any(r.status == "ok" for r in self.trace.records)
            waits = [r.extra["retry_after"] for r in failures if r.extra.get("retry_after") is not None]
            return errors.rate_limited(message, self.trace.model, client_may_retry=not paid,
                                       retry_after=max(waits) if waits else None)
        if failures and all(r.error_type == "Timeout" or r.status == "dropped" for r in failures):
            return errors.timed_out(message, self.trace.model)
        return errors.unavailable(message, self.trace.model)

    # ------------------------------------------------------------------ final stage
    async def final_call(
        self, candidates: Sequence[PlannedCall], messages: list[Any], *, settings: FanOutSettings
    ) -> MemberResult:
        """The final stage, trying fallbacks in order; raises when every candidate failed."""
        results = []
        for call in candidates:
            result = await self.call(call, messages, settings=settings, final=True)
            if result.ok:
                return result
            results.append(result)
        raise self.too_few(StageResult(stage=candidates[0].stage, results=results), 1)

    async def final_stream(
        self, candidates: Sequence[PlannedCall], messages: list[Any], *, settings: FanOutSettings
    ) -> AsyncIterator[StreamPiece]:
        """Stream the final stage. A candidate that fails before its first token hands over to the next
        fallback; a failure after tokens were sent is raised (the client already has part of an answer)."""
        failures = []
        for call in candidates:
            record = self._record(call)
            record.streamed = True
            started = time.monotonic()
            chunks: list[Any] = []
            sent_any = False
            kwargs = self._kwargs(call, messages, final=True, settings=settings)
            kwargs.update(stream=True, stream_options={"include_usage": True})
            stream = None
            nested = BudgetScope(self.budget if call.node.is_composite else None)
            try:
                if not call.node.is_composite:
                    self.budget.take(f"{call.role} {call.label}")
                timeout = self._timeout_for(call, settings)
                async with self._limit(call):
                    async with asyncio.timeout(self._wait_limit(call, settings, timeout)):
                        with nested:
                            token_price = self._sent(record, call, messages)
                            stream = await self._acompletion_for(call)(
                                **kwargs, timeout=self._configured_timeout(call, settings))
                    text_parts: list[str] = []
                    finish_reason: str | None = None
                    saw_tool_calls = False
                    iterator = stream.__aiter__()
                    while True:
                        remaining = self.remaining()
                        idle = timeout if remaining is None else min(timeout, max(remaining, 0.001))
                        try:
                            # Not wait_for (see `call`): a dropped client must stop this loop at once, even
                            # when the next chunk is already buffered.
                            async with asyncio.timeout(idle + _TIMEOUT_SLACK_S):
                                with nested:  # a nested composite's stream runs its stages in here
                                    chunk = await iterator.__anext__()
                        except StopAsyncIteration:
                            break
                        chunks.append(chunk)
                        piece = _piece_from_chunk(chunk)
                        if piece is None:
                            continue
                        if piece.content:
                            text_parts.append(piece.content)
                            self._streamed_token(record, token_price)
                        finish_reason = piece.finish_reason or finish_reason
                        saw_tool_calls = saw_tool_calls or bool(piece.tool_calls)
                        sent_any = sent_any or bool(piece.content or piece.reasoning or piece.tool_calls)
                        yield piece
                    # A stream that stops without a finish_reason was cut off; one without text or tool calls
                    # said nothing. Either is a failure: a fallback before the client saw anything, else an error
                    # (never a clean finish of a truncated answer).
                    if _upstream_finish(stream, finish_reason) is None:
                        raise _BrokenStream("the stream ended without a finish_reason (cut off)")
                    if not "".join(text_parts).strip() and not saw_tool_calls \
                            and not self._cut_by_the_client(finish_reason, call=call):
                        raise _EmptyAnswer("the model returned no answer")
                record.usage, record.cost = _stream_accounting(chunks, messages, call.price)
                record.preview = preview(self.trace.redact("".join(text_parts)))
                record.latency_s = time.monotonic() - started
                observe_latency(call.model, record.latency_s)
                self._land(record)
                return
            except (asyncio.CancelledError, GeneratorExit):
                # The client left mid-answer: bill what the upstream already produced (its prompt and the
                # tokens read so far), counted from the chunks, before the error leaves this generator.
                record.status, record.latency_s = "dropped", time.monotonic() - started
                if chunks and not call.node.is_composite:
                    record.usage, record.cost = _stream_accounting(chunks, messages, call.price)
                    if record.cost is None:
                        record.cost = _price(call, record.usage)
                self._land(record)  # no chunks yet: the prompt's estimate (see _land)
                raise
            except CompositeConfigError:
                raise
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, asyncio.TimeoutError):
                    exc = errors.timed_out("the stream stalled")
                record.status, record.latency_s = "failed", time.monotonic() - started
                record.error_type, record.error = type(exc).__name__, self._describe_error(call, exc)
                record.extra["status_code"] = errors.status_code_of(exc)
                if chunks:
                    record.usage, record.cost = _stream_accounting(chunks, messages, call.price)
                self.add_record(record)
                failures.append(MemberResult(call=call, record=record))
                if sent_any:
                    raise self.too_few(StageResult(stage=call.stage, results=failures), 1) from None
            finally:
                # Close the upstream stream now (client gone, stall, failure), not when the GC finds it.
                await _aclose_quietly(stream)
        raise self.too_few(StageResult(stage=candidates[0].stage, results=failures), 1)


async def _aclose_quietly(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


class _EmptyAnswer(Exception):
    """A sub-call answered with nothing: a failed member (nothing empty reaches another prompt) or a failed
    final stage (its fallbacks run; the client never gets an empty "success")."""


class _BrokenStream(Exception):
    """A streamed final stage ended without a finish_reason: the answer was cut off."""


def _upstream_finish(stream: Any, seen: str | None) -> str | None:
    """The finish_reason the upstream itself sent. LiteLLM's stream wrapper ends a stream that had none with
    a synthetic "stop", which would pass a cut-off answer as complete; it keeps the real one apart."""
    if _is_router_stream(stream):
        # The Router's wrapper re-yields an inner wrapper's chunks and records no finish of its own: the chunks'
        # finish reason is all there is (a cut-off stream through the Router can look complete; TECH.md).
        return seen
    if hasattr(stream, "received_finish_reason"):
        return getattr(stream, "received_finish_reason", None) or getattr(stream, "intermittent_finish_reason", None)
    return seen


def _is_router_stream(stream: Any) -> bool:
    router_module = sys.modules.get("litellm.router")
    wrapper = getattr(router_module, "FallbackAwareStreamWrapper", None) if router_module is not None else None
    return wrapper is not None and isinstance(stream, wrapper)


def _piece_from_chunk(chunk: Any) -> StreamPiece | None:
    choices = getattr(chunk, "choices", None) or []
    if not choices:
        return None
    choice = choices[0]
    delta = getattr(choice, "delta", None)
    content = (getattr(delta, "content", None) or "") if delta is not None else ""
    reasoning = (getattr(delta, "reasoning_content", None) or "") if delta is not None else ""
    tool_calls = getattr(delta, "tool_calls", None) if delta is not None else None
    finish = getattr(choice, "finish_reason", None)
    if not (content or reasoning or tool_calls or finish):
        return None
    return StreamPiece(content=content, reasoning=reasoning, tool_calls=tool_calls or None, finish_reason=finish)


def _prompt_estimate(call: PlannedCall, messages: list[Any]) -> tuple[UsageTotals, float | None]:
    """Prompt tokens and their price for a call that was sent but never answered (the price from LiteLLM's
    price map, or the node's own `input_cost_per_token`).

    The tokens are counted with the OpenAI tokenizer LiteLLM bundles, whatever the model: for some names
    (`llama-3`, `llama-2`, Cohere's) LiteLLM's model-specific tokenizer is a download from the Hugging Face
    hub, and an estimate must never wait on the network (offline, huggingface_hub retried for 23 s before
    the first member's answer could stream)."""
    size = sum(len(str(m.get("content") or "")) if isinstance(m, dict) else len(str(m)) for m in messages)
    try:
        # Tokenizing runs on the event loop: a huge prompt gets the usual 4-characters-a-token estimate.
        tokens = (litellm.token_counter(model=_ESTIMATE_TOKENIZER_MODEL, messages=messages)
                  if size <= _TOKENIZE_UP_TO_CHARS else size // 4)
    except Exception:  # noqa: BLE001 - no tokenizer: nothing to estimate from
        return UsageTotals(), None
    usage = UsageTotals(prompt_tokens=int(tokens))
    return usage, _price(call, usage)


def _price(call: PlannedCall, usage: UsageTotals) -> float | None:
    """What `usage` costs on this node: its own per-token prices, else LiteLLM's price map (None: unpriced)."""
    if call.price:
        return priced_cost(usage, call.price)
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=call.model, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        return float(prompt_cost) + float(completion_cost)
    except Exception:  # noqa: BLE001 - a model LiteLLM has no price for
        return None


def _stream_accounting(chunks: list[Any], messages: list[Any],
                       price: dict[str, float] | None = None) -> tuple[UsageTotals, float | None]:
    """Usage and cost of a streamed sub-call, from the provider's usage chunk (or LiteLLM's rebuild); a
    node's own price, when it has one, is applied to that usage."""
    if price:
        usage, _cost = _stream_accounting(chunks, messages)
        return usage, priced_cost(usage, price)
    for chunk in reversed(chunks):
        usage = getattr(chunk, "usage", None)
        if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
            cost = getattr(usage, "cost", None)
            if cost is None:
                cost = (getattr(chunk, "_hidden_params", None) or {}).get("response_cost")
            return UsageTotals.from_usage(usage), (float(cost) if cost is not None else None)
    try:
        built = litellm.stream_chunk_builder(chunks, messages=messages)
    except Exception:  # noqa: BLE001 - accounting must not break an answer already streamed
        return UsageTotals(), None
    return UsageTotals.from_usage(getattr(built, "usage", None)), response_cost(built)
