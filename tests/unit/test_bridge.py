"""bridge.py: sync code runs coroutines and async generators on one long-lived background loop, from a plain
thread, from worker threads, and from inside a running event loop (where `asyncio.run` fails)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from composite_llm.bridge import iterate_sync, run_sync

LOOP_THREAD = "composite-llm-loop"


async def _where() -> tuple[asyncio.AbstractEventLoop, str]:
    return asyncio.get_running_loop(), threading.current_thread().name


def test_run_sync_returns_the_result_from_the_one_background_loop():
    first_loop, thread = run_sync(_where())
    second_loop, _ = run_sync(_where())
    assert thread == LOOP_THREAD and threading.current_thread().name != LOOP_THREAD
    assert first_loop is second_loop  # one long-lived loop: LiteLLM's per-loop HTTP clients stay warm


def test_run_sync_works_inside_a_running_loop_where_asyncio_run_cannot():
    async def caller():
        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            coroutine = _where()
            try:
                asyncio.run(coroutine)
            finally:
                coroutine.close()
        loop, thread = run_sync(_where())  # blocks this loop while it waits, by design
        return loop is not asyncio.get_running_loop() and thread == LOOP_THREAD

    assert asyncio.run(caller())


def test_coroutines_inside_run_sync_run_concurrently():
    """Fan-out from sync code stays parallel: counted by overlap, not by time."""
    state = {"running": 0, "peak": 0}

    async def member(release: asyncio.Event) -> None:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        await asyncio.wait_for(release.wait(), 10)
        state["running"] -= 1

    async def fan_out() -> int:
        release = asyncio.Event()
        tasks = [asyncio.ensure_future(member(release)) for _ in range(4)]
        while state["running"] < 4:
            await asyncio.sleep(0.001)
        release.set()
        await asyncio.gather(*tasks)
        return state["peak"]

    assert run_sync(asyncio.wait_for(fan_out(), 10)) == 4


def test_worker_threads_share_the_loop():
    with ThreadPoolExecutor(4) as pool:
        loops = {loop for loop, _thread in pool.map(lambda _: run_sync(_where()), range(8))}
    assert len(loops) == 1 and loops == {run_sync(_where())[0]}


def test_errors_propagate_with_their_type():
    async def fail():
        raise KeyError("member x")

    with pytest.raises(KeyError, match="member x"):
        run_sync(fail())


def test_iterate_sync_yields_in_order_and_raises_the_generators_error():
    async def numbers():
        for i in range(3):
            await asyncio.sleep(0)
            yield i
        raise ValueError("stream broke")

    seen = []
    with pytest.raises(ValueError, match="stream broke"):
        for item in iterate_sync(numbers()):
            seen.append(item)
    assert seen == [0, 1, 2]


def test_leaving_a_sync_iteration_early_closes_the_generator_on_the_loop():
    """A client that stops reading a stream: the async generator's cleanup (closing upstream streams) runs,
    on the background loop, before the sync side goes on."""
    closed: list[str] = []

    async def endless():
        try:
            while True:
                await asyncio.sleep(0)
                yield "token"
        finally:
            closed.append(threading.current_thread().name)

    iterator = iterate_sync(endless())
    assert next(iterator) == "token"
    iterator.close()
    assert closed == [LOOP_THREAD]


def test_a_finished_generator_is_not_closed_again():
    closes = []

    class Agen:
        def __init__(self):
            self.items = [1, 2]

        def __aiter__(self):
            return self

        async def __anext__(self):
            if not self.items:
                raise StopAsyncIteration
            return self.items.pop(0)

        async def aclose(self):
            closes.append(True)

    assert list(iterate_sync(Agen())) == [1, 2] and closes == []
