"""Limits that keep requests from hurting each other: the fair concurrency limit on leaf sub-calls, the
per-request sub-call budget, and the observed latency per model that the deadline planner reads.

The engine uses them for every sub-call; they live here so each can be read (and tested) on its own.
"""

from __future__ import annotations

import asyncio
import collections
import os
import weakref
from contextvars import ContextVar
from typing import Any

from .errors import CompositeConfigError

# --------------------------------------------------------------------------- concurrency limit
_DEFAULT_MAX_CONCURRENCY = int(os.environ.get("COMPOSITE_LLM_MAX_CONCURRENCY", "256"))
_max_concurrency = _DEFAULT_MAX_CONCURRENCY
_per_request: int | None = None
_limiters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FairLimiter]" = weakref.WeakKeyDictionary()


def set_max_concurrency(limit: int, per_request: int | None = None) -> None:
    """Cap the leaf sub-calls in flight per event loop (per process for the usual single loop), and those
    of one request (default: three quarters of the limit, so one request never holds every slot)."""
    global _max_concurrency, _per_request
    if limit < 1 or (per_request is not None and per_request < 1):
        raise ValueError("max concurrency must be at least 1")
    _max_concurrency, _per_request = limit, per_request
    _limiters.clear()


def per_request_limit(limit: int) -> int:
    env = os.environ.get("COMPOSITE_LLM_MAX_CONCURRENCY_PER_REQUEST")
    if _per_request is not None:
        return min(_per_request, limit)
    if env:
        return max(1, min(int(env), limit))
    return max(1, limit - limit // 4)


class FairLimiter:
    """The leaf-call slots of one event loop, handed out fairly across requests.

    A plain semaphore serves waiters first come, first served: a request that queued 1,000 calls made
    every later request wait for all of them. Here each request (a top-level request and every composite
    nested in it share one key) queues its own waiters; a freed slot goes to the waiting request that
    holds the fewest slots, and no request holds more than `per_request` slots at once. A small request
    therefore waits for one slot to free up, not for a large request's whole queue.
    """

    def __init__(self, limit: int, per_request: int) -> None:
        self.limit = limit
        self.per_request = per_request
        self.in_use = 0
        self.held: dict[object, int] = {}
        self.waiting: "collections.OrderedDict[object, collections.deque[asyncio.Future[None]]]" = \
            collections.OrderedDict()

    def slot(self, key: object) -> "_Slot":
        return _Slot(self, key)

    async def acquire(self, key: object) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, collections.deque()).append(future)
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # granted as the cancellation arrived: hand the slot on
            else:
                future.cancel()
                self._forget_done(key)
            raise

    def release(self, key: object) -> None:
        self.in_use -= 1
        left = self.held.get(key, 1) - 1
        if left:
            self.held[key] = left
        else:
            self.held.pop(key, None)
        self._dispatch()

    def _forget_done(self, key: object) -> None:
        queue = self.waiting.get(key)
        while queue and queue[0].done():
            queue.popleft()
        if queue is not None and not queue:
            del self.waiting[key]

    def _dispatch(self) -> None:
        while self.in_use < self.limit:
            best = None
            for key in list(self.waiting):
                self._forget_done(key)
                if key not in self.waiting or self.held.get(key, 0) >= self.per_request:
                    continue
                if best is None or self.held.get(key, 0) < self.held.get(best, 0):
                    best = key
            if best is None:
                return
            future = self.waiting[best].popleft()
            self.waiting.move_to_end(best)  # equal holders take turns
            self._forget_done(best)
            self.in_use += 1
            self.held[best] = self.held.get(best, 0) + 1
            future.set_result(None)


class _Slot:
    def __init__(self, limiter: FairLimiter, key: object) -> None:
        self.limiter, self.key = limiter, key

    async def __aenter__(self) -> None:
        await self.limiter.acquire(self.key)

    async def __aexit__(self, *exc: Any) -> None:
        self.limiter.release(self.key)


def limiter() -> FairLimiter:
    """The running loop's limiter (one per loop: asyncio primitives belong to one loop)."""
    loop = asyncio.get_running_loop()
    found = _limiters.get(loop)
    if found is None:
        found = FairLimiter(_max_concurrency, per_request_limit(_max_concurrency))
        _limiters[loop] = found
    return found


class NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: Any) -> None:
        return None


# --------------------------------------------------------------------------- per-request budget
class SubCallBudget:
    """The leaf sub-calls one top-level request may still make, shared with every composite nested in it
    (a nested composite runs inside its parent's `litellm.acompletion` call and finds the budget in a
    context variable). Also the request's identity for the fair limiter."""

    def __init__(self, limit: int, where: str) -> None:
        self.limit = limit
        self.used = 0
        self.where = where

    def take(self, what: str) -> None:
        if self.used >= self.limit:
            raise CompositeConfigError(
                f"{self.where}: {what} would be leaf sub-call {self.used + 1} of a request limited to "
                f"settings.max_sub_calls={self.limit}")
        self.used += 1


_BUDGET: ContextVar[SubCallBudget | None] = ContextVar("composite_llm_budget", default=None)


def current_budget() -> SubCallBudget | None:
    """The budget of the request this code runs inside (None at top level)."""
    return _BUDGET.get()


class BudgetScope:
    """Makes `budget` the current one while a nested composite call runs in this task."""

    def __init__(self, budget: SubCallBudget | None) -> None:
        self.budget = budget
        self.token: Any = None

    def __enter__(self) -> None:
        if self.budget is not None:
            self.token = _BUDGET.set(self.budget)

    def __exit__(self, *exc: Any) -> None:
        if self.token is not None:
            _BUDGET.reset(self.token)


# --------------------------------------------------------------------------- observed latency
# Seconds a model took to answer, smoothed, per model string, in this process: what the deadline planner
# reserves for a final stage it has seen before.
_LATENCY: dict[str, float] = {}
_LATENCY_WEIGHT = 0.3


def observed_latency(model: str) -> float | None:
    return _LATENCY.get(model)


def observe_latency(model: str, seconds: float) -> None:
    previous = _LATENCY.get(model)
    _LATENCY[model] = seconds if previous is None else previous + _LATENCY_WEIGHT * (seconds - previous)
