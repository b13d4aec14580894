"""A fake OpenAI-compatible chat server on 127.0.0.1, for testing composites without API keys.

Public on purpose: users test their own profiles against it the same way this project's tests do.
It is a real HTTP server (aiohttp, in a background thread with its own event loop), so every byte
goes through LiteLLM's real client code. Each model name gets a scripted behaviour: latency, reply,
token counts, failures (HTTP status, hang, garbage body, stalled stream) and tool calls. Every request is
recorded so tests can assert what each member saw.

    with FakeOpenAIServer() as server:
        server.set_model("proposer-1", reply="Paris", latency_s=0.5)
        litellm.completion(model="openai/proposer-1", api_base=server.base_url, api_key="x", ...)
        assert server.requests_for("proposer-1")[0].last_user_text == ...
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from composite_llm.messages import content_text as message_text  # public name of the fake server's text rule

__all__ = ["FakeOpenAIServer", "ModelBehavior", "RecordedRequest", "count_tokens", "message_text",
           "stop_process_group"]

ReplyFn = Callable[["RecordedRequest"], str]


def count_tokens(text: str) -> int:
    """Deterministic stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@dataclass
class ModelBehavior:
    """How the fake server answers one model name.

    reply: fixed text, or a function of the recorded request (e.g. to echo the prompt).
    latency_s: delay before the first byte (streaming) or before the whole answer.
    fail_status: answer with this HTTP status instead (500, 429, 400...); `fail_times` limits it to the
        first N requests (then the model recovers), None means always.
    retry_after: Retry-After header value sent with a failure.
    hang: never answer (the client's timeout must fire).
    garbage: answer 200 with a body that is not JSON.
    stall_after_chunks: streaming only, send this many chunks then hang.
    chunk_delay_s: pause between streamed chunks.
    tool_calls: OpenAI tool_calls to return (finish_reason becomes "tool_calls").
    reasoning_tokens / cached_tokens: reported in usage details, to test exact accounting.
    finish_reason: report this instead of "stop" (e.g. "length": an answer cut off by its token limit).
    raw_body: answer 200 with exactly this body (JSON content type, also to a streaming request), e.g.
        `{"choices": []}` or an error object, for bodies that parse but carry no answer.
    raw_stream: streaming only, send these SSE `data:` payloads verbatim (then nothing else: add
        "[DONE]" yourself), e.g. a stream without a finish_reason or with garbage lines.
    """

    reply: str | ReplyFn | None = None
    latency_s: float = 0.0
    fail_status: int | None = None
    fail_times: int | None = None
    fail_message: str = "simulated failure"
    retry_after: str | None = None
    hang: bool = False
    garbage: bool = False
    stall_after_chunks: int | None = None
    chunk_delay_s: float = 0.0
    tool_calls: list[dict[str, Any]] | None = None
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    raw_body: str | None = None
    raw_stream: list[str] | None = None


@dataclass
class RecordedRequest:
    """One request the server received, with timings for parallelism assertions."""

    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    started: float
    finished: float | None = None
    status: int = 200
    chunks_sent: int = 0
    disconnected: bool = False  # the client closed the connection before the answer was complete

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def system_text(self) -> str:
        return "\n".join(message_text(m.get("content")) for m in self.messages if m.get("role") == "system")

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message_text(message.get("content"))
        return ""

    @property
    def all_text(self) -> str:
        return "\n".join(message_text(m.get("content")) for m in self.messages)

    @property
    def prompt_tokens(self) -> int:
        return count_tokens(self.all_text)


@dataclass
class _ModelState:
    behavior: ModelBehavior
    failures_served: int = 0


class FakeOpenAIServer:
    """OpenAI-compatible `/v1/chat/completions` and `/v1/models` on 127.0.0.1, in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, default: ModelBehavior | None = None) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fake server binds loopback only")
        self._host = host
        self._port = port
        self._default = default or ModelBehavior()
        self._models: dict[str, _ModelState] = {}
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._in_flight = 0
        self.max_in_flight = 0

    # ----------------------------------------------------------------- configuration
    def set_model(self, name: str, behavior: ModelBehavior | None = None, **fields: Any) -> ModelBehavior:
        """Script the behaviour of one model name (keyword fields build a ModelBehavior)."""
        behavior = behavior or ModelBehavior(**fields)
        with self._lock:
            self._models[name] = _ModelState(behavior)
        return behavior

    def set_default(self, behavior: ModelBehavior | None = None, **fields: Any) -> None:
        with self._lock:
            self._default = behavior or ModelBehavior(**fields)

    def reset(self) -> None:
        """Forget scripted models and recorded requests (keeps the server running)."""
        with self._lock:
            self._models.clear()
            self._requests.clear()
            self._default = ModelBehavior()
            self.max_in_flight = 0

    # ----------------------------------------------------------------- inspection
    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}/v1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    @property
    def open_requests(self) -> list[RecordedRequest]:
        """Requests still being answered (a stream still writing, a hang still waiting): the upstream
        connections a client has not closed yet."""
        return [r for r in self.requests if r.finished is None]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self.max_in_flight = 0

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> "FakeOpenAIServer":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._serve, name="fake-openai-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("fake OpenAI server did not start within 10 s")
        if self._start_error is not None:
            raise RuntimeError(f"fake OpenAI server failed to start: {self._start_error}")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            future.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/models", self._list_models)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, backlog=1024)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self._port = sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ----------------------------------------------------------------- handlers
    def _behavior_for(self, model: str) -> tuple[ModelBehavior, bool]:
        """The model's behaviour and whether this request should fail (counts scripted failures)."""
        with self._lock:
            state = self._models.get(model)
            behavior = state.behavior if state else self._default
            failing = behavior.fail_status is not None
            if failing and behavior.fail_times is not None:
                if state is None:
                    state = self._models.setdefault(model, _ModelState(behavior))
                failing = state.failures_served < behavior.fail_times
                if failing:
                    state.failures_served += 1
            return behavior, failing

    async def _list_models(self, request: web.Request) -> web.Response:
        with self._lock:
            names = sorted(self._models)
        return web.json_response(
            {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "fake"} for n in names]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": {"message": "invalid JSON body"}}, status=400)
        model = str(body.get("model", ""))
        record = RecordedRequest(
            model=model, body=body, headers=dict(request.headers), started=time.monotonic()
        )
        with self._lock:
            self._requests.append(record)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return await self._answer(request, record)
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler, or a write fails): what the tests look for.
            record.disconnected = True
            raise
        finally:
            record.finished = time.monotonic()
            with self._lock:
                self._in_flight -= 1

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        behavior, failing = self._behavior_for(record.model)
        if behavior.hang:
            await asyncio.sleep(3600)
        if behavior.latency_s:
            await asyncio.sleep(behavior.latency_s)
        if failing:
            record.status = int(behavior.fail_status or 500)
            headers = {"Retry-After": behavior.retry_after} if behavior.retry_after else None
            return web.json_response(
                {"error": {"message": behavior.fail_message, "type": "fake_error", "code": record.status}},
                status=record.status,
                headers=headers,
            )
        if behavior.garbage:
            return web.Response(text="<html>this is not json", content_type="application/json")
        if behavior.raw_body is not None:
            return web.Response(text=behavior.raw_body, content_type="application/json")

        reply = behavior.reply
        if callable(reply):
            text = reply(record)
        elif reply is None:
            text = f"Answer from {record.model}."
        else:
            text = reply
        usage = self._usage(record, text, behavior)
        if record.stream:
            return await self._stream(request, record, text, usage, behavior)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish_reason = behavior.finish_reason or "stop"
        if behavior.tool_calls:
            message["tool_calls"] = behavior.tool_calls
            finish_reason = "tool_calls"
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": record.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": usage,
                "service_tier": "default",  # as OpenAI sends it; LiteLLM's groq/ adapter requires the field
            }
        )

    @staticmethod
    def _usage(record: RecordedRequest, text: str, behavior: ModelBehavior) -> dict[str, Any]:
        prompt = record.prompt_tokens
        completion = count_tokens(text) + behavior.reasoning_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": behavior.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": behavior.reasoning_tokens},
        }

    async def _stream(self, request: web.Request, record: RecordedRequest, text: str, usage: dict[str, Any],
                      behavior: ModelBehavior) -> web.StreamResponse:
        """Stream the answer; a client that closes the connection mid-stream is recorded, not logged as
        a server error."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            await self._write_stream(response, record, text, usage, behavior)
        except ConnectionError:
            record.disconnected = True
        return response

    async def _write_stream(
        self,
        response: web.StreamResponse,
        record: RecordedRequest,
        text: str,
        usage: dict[str, Any],
        behavior: ModelBehavior,
    ) -> None:
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        def frame(delta: dict[str, Any], finish: str | None = None, with_usage: bool = False) -> bytes:
            payload: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": record.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if not with_usage else [],
            }
            if with_usage:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n".encode()

        if behavior.raw_stream is not None:
            for payload in behavior.raw_stream:
                await response.write(f"data: {payload}\n\n".encode())
                record.chunks_sent += 1
                if behavior.chunk_delay_s:
                    await asyncio.sleep(behavior.chunk_delay_s)
            await response.write_eof()
            return
        words = text.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        await response.write(frame({"role": "assistant", "content": ""}))
        for index, piece in enumerate(pieces):
            if behavior.stall_after_chunks is not None and index >= behavior.stall_after_chunks:
                await asyncio.sleep(3600)
            await response.write(frame({"content": piece}))
            record.chunks_sent += 1
            if behavior.chunk_delay_s:
                await asyncio.sleep(behavior.chunk_delay_s)
        finish = behavior.finish_reason or "stop"
        if behavior.tool_calls:
            for index, call in enumerate(behavior.tool_calls):
                await response.write(frame({"tool_calls": [{"index": index, **call}]}))
            finish = "tool_calls"
        await response.write(frame({}, finish=finish))
        if (record.body.get("stream_options") or {}).get("include_usage"):
            await response.write(frame({}, with_usage=True))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()


def stop_process_group(process: subprocess.Popen | None, *, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Stop a server a test started in its own session (`start_new_session=True`: a proxy, its workers, a
    redis-server) and everything in that process group: `sig`, then SIGKILL after `grace_s`.

    Only the group of the process we started, never processes found by name; one already gone is fine.
    """
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def main() -> None:  # pragma: no cover - manual use: python -m composite_llm.testing
    """Run the fake server in the foreground (for trying profiles by hand)."""
    import argparse

    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="default per-request latency in seconds")
    args = parser.parse_args()
    server = FakeOpenAIServer(port=args.port, default=ModelBehavior(latency_s=args.latency)).start()
    print(f"fake OpenAI server on {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
