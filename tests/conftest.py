"""Shared fixtures: one fake OpenAI server for the session, the composite provider registered once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")

import litellm  # noqa: E402
import pytest  # noqa: E402

from composite_llm import register_composite_provider  # noqa: E402
from composite_llm.profiles import REGISTRY  # noqa: E402
from composite_llm.testing import FakeOpenAIServer  # noqa: E402

litellm.suppress_debug_info = True
API_KEY = "sk-test-sentinel-0123456789"


@pytest.fixture(scope="session")
def fake_server():
    with FakeOpenAIServer() as server:
        # LiteLLM imports its HTTP stack lazily on the first call (hundreds of ms, blocking the loop);
        # warm it up once so timing assertions measure steady state.
        litellm.completion(model="openai/warmup", messages=[{"role": "user", "content": "hi"}],
                           api_base=server.base_url, api_key=API_KEY)
        yield server


@pytest.fixture()
def server(fake_server):
    """The session's fake server, with scripted models and recorded requests reset for this test."""
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture(autouse=True, scope="session")
def _registered():
    register_composite_provider()
    yield


@pytest.fixture()
def explicit_profiles():
    """Register an explicit profile source for one test, restoring none afterwards."""
    def use(source):
        REGISTRY.set_explicit(source)
    yield use
    REGISTRY.set_explicit(None)


@pytest.fixture()
def call_kwargs(server):
    return {"api_base": server.base_url, "api_key": API_KEY}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def collect(stream) -> tuple[str, str, object]:
    """A sync stream's content, reasoning_content and last usage."""
    content, reasoning, usage = [], [], None
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            content.append(delta.content or "")
            reasoning.append(getattr(delta, "reasoning_content", None) or "")
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    return "".join(content), "".join(reasoning), usage


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False); the caller asserts."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def cancel_once_sent(task: asyncio.Future, server, sent: int) -> None:
    """Wait (at most 5 s) until `sent` requests reached the fake server, cancel `task`, and check that the
    server saw every one of them end (the sub-calls were cancelled, not left running)."""
    await wait_until(lambda: len(server.requests) >= sent)
    assert len(server.requests) == sent
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_until(lambda: all(r.finished is not None for r in server.requests))  # disconnects seen


# --- offline means offline -------------------------------------------------------------------

_LOOPBACK = {"127.0.0.1", "::1", "localhost", "0.0.0.0"}
_guard = {"active": False, "attempts": []}


def _network_guard(event: str, args: tuple) -> None:
    """Audit hook: refuse (and record) any DNS lookup or connect that is not to this machine.

    Recorded as well as raised because libraries swallow the error and retry (LiteLLM falls back to
    another tokenizer after huggingface_hub's retries): the fixture fails the test on any attempt.
    """
    if not _guard["active"] or event not in ("socket.connect", "socket.getaddrinfo"):
        return
    target = args[1] if event == "socket.connect" else args
    host = target[0] if isinstance(target, tuple) and target else None
    if host is None or (isinstance(host, (str, bytes)) and (host.decode() if isinstance(host, bytes) else host)
                        in _LOOPBACK):
        return
    _guard["attempts"].append(f"{event} {host!r}")
    raise OSError(f"tests: outbound network attempt blocked: {event} {host!r}")


sys.addaudithook(_network_guard)


@pytest.fixture()
def no_network():
    """Fail the test on any outbound connection attempt (a DNS lookup or connect not to this machine);
    yields the list of attempts. The local-model tests use it for every test."""
    _guard["attempts"].clear()
    _guard["active"] = True
    try:
        yield _guard["attempts"]
    finally:
        _guard["active"] = False
    assert not _guard["attempts"], f"outbound network attempts: {_guard['attempts'][:5]}"
