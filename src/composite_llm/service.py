"""The async core every entry point runs: a CompositeRequest in, an answer (or a stream) out.

Non-streaming: the strategy prepares, then the final step runs as one call. Streaming: the strategy
prepares while its progress lines stream as reasoning deltas, then the final stage streams token by
token. Either way the Trace holds every sub-call, and the request is logged once at the end.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from .budget import check_budget, max_sub_calls_of, nested_resolver
from .engine import MemberResult, RunContext, StreamPiece, current_budget
from .profiles import REGISTRY
from .redact import redact
from .request import CompositeRequest
from .strategies import FinalCall, FinalText
from .trace import Trace
from .trace_log import write_trace


@dataclass
class CompositeResult:
    text: str
    message: Any
    finish_reason: str
    trace: Trace


def _context(request: CompositeRequest, trace: Trace, progress: Any = None,
             on_cost: Callable[[float], None] | None = None) -> RunContext:
    return RunContext(
        trace=trace,
        providers=request.providers,
        shared_params=request.shared_params,
        final_params=request.final_params,
        defaults=request.defaults,
        timeout=request.timeout,
        depth=request.depth,
        stack=request.stack,
        progress=progress,
        where=request.display_model,
        max_sub_calls=max_sub_calls_of(request.topology),
        on_cost=on_cost,
    )


def _check_size(request: CompositeRequest) -> None:
    """A top-level request whose topology needs more sub-calls than its budget is refused before any call
    (a nested composite's calls were counted by the request it belongs to)."""
    if current_budget() is None:
        check_budget(request.strategy, request.topology, request.display_model, nested_resolver(REGISTRY.snapshot))


def _finish(request: CompositeRequest, trace: Trace, error: BaseException | None = None) -> None:
    trace.finished = time.monotonic()
    write_trace(trace, request.document_settings, error=redact(str(error)) if error else None)


async def run(request: CompositeRequest) -> CompositeResult:
    _check_size(request)
    trace = request.new_trace()
    ctx = _context(request, trace)
    try:
        step = await request.strategy.prepare(ctx, request.topology, request.messages)
        if isinstance(step, FinalText):
            result = CompositeResult(step.text, None, step.finish_reason, trace)
        else:
            member: MemberResult = (
                await ctx.final_call(step.candidates, step.messages, settings=step.settings)
                if isinstance(step, FinalCall) else await step.complete(ctx)
            )
            result = CompositeResult(member.text, member.message, member.finish_reason or "stop", trace)
    except BaseException as exc:
        _finish(request, trace, exc)
        raise
    _finish(request, trace)
    return result


async def stream(request: CompositeRequest, on_cost: Callable[[float], None] | None = None
                 ) -> AsyncIterator[StreamPiece | Trace]:
    """Progress (reasoning) pieces, then the final stage's pieces, then the finished Trace last.
    `on_cost` hears the cost so far whenever it grows, and the full cost of what ran if the client leaves."""
    _check_size(request)
    trace = request.new_trace()
    queue: asyncio.Queue[str] = asyncio.Queue()
    ctx = _context(request, trace, progress=queue.put_nowait, on_cost=on_cost)
    preparing = asyncio.ensure_future(request.strategy.prepare(ctx, request.topology, request.messages))
    try:
        yield StreamPiece(reasoning=f"composite {request.strategy.name} · {request.display_model}\n")
        while not preparing.done() or not queue.empty():
            if queue.empty():
                getter = asyncio.ensure_future(queue.get())
                try:
                    await asyncio.wait({preparing, getter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    # Also when the client leaves during the wait: a getter left pending is a task nobody ends.
                    if not getter.done():
                        getter.cancel()
                if not getter.done() or getter.cancelled():
                    continue
                line = getter.result()
            else:
                line = queue.get_nowait()
            yield StreamPiece(reasoning=line + "\n")
        step = preparing.result()
        if isinstance(step, FinalText):
            yield StreamPiece(content=step.text, finish_reason=step.finish_reason)
        else:
            pieces = (ctx.final_stream(step.candidates, step.messages, settings=step.settings)
                      if isinstance(step, FinalCall) else step.stream(ctx))
            async with aclosing(pieces):
                async for piece in pieces:
                    yield piece
    except BaseException as exc:
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            ctx.abandon()  # before the members are cancelled: what they cost stays billed
        cancelled_again = False
        if not preparing.done():
            preparing.cancel()
            try:
                await asyncio.gather(preparing, return_exceptions=True)
            except asyncio.CancelledError:
                cancelled_again = True  # (anyio re-delivers) the members are cancelled already: finish the books
        _finish(request, trace, exc)
        if cancelled_again and not isinstance(exc, asyncio.CancelledError):
            raise asyncio.CancelledError
        raise
    _finish(request, trace)
    yield trace
