"""A client that leaves stops everything, at every stage, the way the LiteLLM proxy actually stops it.

The proxy serves a stream with Starlette's `StreamingResponse`: on `http.disconnect` it cancels the
task that iterates the stream through an anyio cancel scope. anyio only cancels a task whose awaited
future is not done yet, so a stream whose next chunk is always already buffered was never cancelled and
ran to its end after the client had gone. These tests drive a composite stream through that real
response class with an ASGI client that disconnects at a chosen moment, then count what the composite
still did: upstream chunks consumed after the disconnect, and upstream requests the fake server still
has open. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import litellm
import pytest
from starlette.responses import StreamingResponse

from composite_llm import engine
from conftest import user, wait_until

MOA = "composite/moa/openai/agg"
PROPOSERS = ["openai/p1", "openai/p2", "openai/p3"]
LONG_ANSWER = " ".join(f"w{i}" for i in range(3000))


class _Client:
    """An ASGI client for one streamed response: counts what it was sent, disconnects when told."""

    def __init__(self, disconnect_when: Callable[["_Client"], bool]) -> None:
        self.disconnect_when = disconnect_when
        self.content_chunks = 0
        self.reasoning_chunks = 0
        self.disconnected_at: float | None = None
        self.upstream_chunks_after = 0  # upstream chunks the composite read after the disconnect

    async def receive(self) -> dict[str, Any]:
        # Starlette's listen_for_disconnect: the first message after the request body is the disconnect.
        while not self.disconnect_when(self):
            await asyncio.sleep(0.005)
        self.disconnected_at = time.monotonic()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        # Like uvicorn's send while the socket is writable: no suspension.
        body = message.get("body", b"")
        if b'"content":"' in body:
            self.content_chunks += 1
        if b'"reasoning_content":"' in body:
            self.reasoning_chunks += 1


async def _serve(client: _Client, **kwargs: Any) -> None:
    """One composite stream served by Starlette's StreamingResponse (the proxy's response class)."""

    async def body():
        stream = await litellm.acompletion(messages=user("q"), stream=True, **kwargs)
        async for chunk in stream:
            yield f"data: {chunk.model_dump_json()}\n\n"

    await asyncio.wait_for(StreamingResponse(body(), media_type="text/event-stream")({"type": "http"},
                                                                                      client.receive, client.send), 30)


@pytest.fixture()
def upstream_reads(monkeypatch):
    """Counts upstream chunks the final stage reads after `client.disconnected_at` is set."""
    clients: list[_Client] = []
    original = engine._piece_from_chunk

    def counting(chunk):
        for client in clients:
            if client.disconnected_at is not None:
                client.upstream_chunks_after += 1
        return original(chunk)

    monkeypatch.setattr(engine, "_piece_from_chunk", counting)
    return clients


async def test_a_dropped_stream_stops_reading_the_upstream_at_once(server, call_kwargs, upstream_reads):
    """The reproduction: a long, fast aggregator answer (every chunk already buffered) and a client that
    leaves after 5 tokens. Before the fix the composite read the remaining ~3,000 chunks."""
    for name in ("p1", "p2", "p3"):
        server.set_model(name, reply=f"answer from {name}")
    server.set_model("agg", reply=LONG_ANSWER)
    client = _Client(lambda c: c.content_chunks >= 5)
    upstream_reads.append(client)
    await _serve(client, model=MOA, proposers=PROPOSERS, **call_kwargs)
    assert client.disconnected_at is not None
    assert client.upstream_chunks_after == 0
    assert client.content_chunks < 50
    assert await wait_until(lambda: not server.open_requests, 1.0), server.open_requests


def _requests_seen(server, model: str, count: int) -> Callable[[_Client], bool]:
    return lambda _client: len(server.requests_for(model)) >= count


STAGES = {
    # stage: (strategy kwargs, scripted models, when the client leaves)
    "members": (
        dict(model=MOA, proposers=PROPOSERS),
        {"p1": dict(latency_s=30), "p2": dict(latency_s=30), "p3": dict(reply="fast")},
        lambda server: _requests_seen(server, "p1", 1),
    ),
    "reviews": (
        dict(model="composite/council/openai/chair", council=["openai/p1", "openai/p2"],
             reviewers=["openai/r1", "openai/r2"]),
        {"p1": dict(reply="one"), "p2": dict(reply="two"), "r1": dict(latency_s=30), "r2": dict(latency_s=30)},
        lambda server: _requests_seen(server, "r2", 1),
    ),
    "final stream (slow)": (
        dict(model=MOA, proposers=PROPOSERS),
        {"agg": dict(reply=LONG_ANSWER, chunk_delay_s=0.01)},
        lambda server: (lambda client: client.content_chunks >= 3),
    ),
    "final stream (fast)": (
        dict(model=MOA, proposers=PROPOSERS),
        {"agg": dict(reply=LONG_ANSWER)},
        lambda server: (lambda client: client.content_chunks >= 3),
    ),
    "after the last token": (
        dict(model=MOA, proposers=PROPOSERS),
        # every content token, then the upstream holds its finish and usage chunks back
        {"agg": dict(reply="a b c d e", stall_after_chunks=5)},
        lambda server: (lambda client: client.content_chunks >= 5),
    ),
}


@pytest.mark.parametrize("stage", list(STAGES))
async def test_a_client_leaving_at_any_stage_leaves_no_upstream_request_open(server, call_kwargs, stage):
    kwargs, models, when = STAGES[stage]
    for name in ("p1", "p2", "p3", "r1", "r2"):
        server.set_model(name, reply=f"answer from {name}")
    server.set_model("agg", reply="aggregated")
    server.set_model("chair", reply="chairman")
    for name, behavior in models.items():
        server.set_model(name, **behavior)
    client = _Client(when(server))
    await _serve(client, **kwargs, **call_kwargs)
    assert client.disconnected_at is not None
    closed = await wait_until(lambda: not server.open_requests, 1.0)
    assert closed, [(r.model, r.chunks_sent) for r in server.open_requests]
    assert time.monotonic() - client.disconnected_at < 5
    if stage in ("members", "reviews"):
        assert not server.requests_for("agg") and not server.requests_for("chair")
