"""Running the async core from sync code, in any context.

`asyncio.run` fails inside a running loop and would give every call a fresh loop (LiteLLM caches HTTP
clients per loop). Instead, one daemon thread per process runs a long-lived event loop; sync entry points
submit coroutines to it and wait. Fan-out stays parallel whether the caller is a plain script, a worker
thread or code already inside an event loop (that caller's loop is blocked while it waits: async callers
should use `litellm.acompletion`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, AsyncIterator, Coroutine, Iterator, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="composite-llm-loop", daemon=True)
            thread.start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and wait; interrupting the wait cancels it."""
    future = asyncio.run_coroutine_threadsafe(coro, _background_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def iterate_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async generator on the background loop from a sync iterator."""
    loop = _background_loop()
    finished = False
    try:
        while True:
            future: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(agen.__anext__(), loop)
            try:
                item = future.result()
            except StopAsyncIteration:
                finished = True
                return
            except BaseException:
                future.cancel()
                raise
            yield item
    finally:
        if not finished and hasattr(agen, "aclose"):
            asyncio.run_coroutine_threadsafe(agen.aclose(), loop).result(timeout=30)
