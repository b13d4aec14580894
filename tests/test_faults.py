"""Fault injection: every way a sub-call can fail, and what the composite does about it.

Each test scripts the FakeOpenAIServer (or points a node at a dead port) and checks three things: the
request keeps answering where a quorum holds, it fails fast with a LiteLLM exception that names the failed
node where not, and nothing is left running afterwards (asyncio tasks, HTTP requests, CLI processes).
Faults already covered elsewhere are listed in TESTING.md with the test that holds them; they are not
repeated here. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import litellm
import openai
import pytest

from composite_llm import engine
from conftest import API_KEY, user, wait_until
from test_cli_agents import PASSTHROUGH, alive, group_members, wait_for_file, wait_gone
from test_cli_agents import fake  # noqa: F401 - a fixture

PROPOSERS = ["openai/p1", "openai/p2", "openai/p3"]
MOA = "composite/moa/openai/agg"
COUNCIL = "composite/council/openai/chair"
CLI_SETTINGS = {"env_passthrough": PASSTHROUGH, "kill_grace_seconds": 0.5}


# --------------------------------------------------------------------------- helpers
def _script(server, latency: float = 0.0) -> None:
    for name in ("p1", "p2", "p3", "c1", "c2", "c3"):
        server.set_model(name, reply=f"answer from {name}", latency_s=latency)
    server.set_model("agg", reply="aggregated answer", latency_s=latency)
    server.set_model("chair", reply="chairman answer", latency_s=latency)


def _trace(response) -> dict:
    return response.choices[0].message.provider_specific_fields["composite"]


def _sub_call(response, model: str) -> dict:
    return next(c for c in _trace(response)["sub_calls"] if c["model"] == model)


def _dead_base_url() -> str:
    """An address where nothing listens: bind a port, close it, use it (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# Process-wide LiteLLM workers started lazily by the first call on a loop: not owned by any request.
LITELLM_SINGLETONS = {"LoggingWorker._worker_loop"}


def _orphans(before: set) -> list[asyncio.Task]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()
            and getattr(t.get_coro(), "__qualname__", "") not in LITELLM_SINGLETONS]


async def _wait_no_orphans(before: set, timeout: float = 5.0) -> list[asyncio.Task]:
    """Tasks created since `before` that are still running after `timeout` (cleanup may take a few ticks)."""
    deadline = time.monotonic() + timeout
    while True:
        left = _orphans(before)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- 429 with Retry-After


@pytest.fixture()
def retry_delays(monkeypatch):
    """The delays the engine chose before each retry (the wait itself is also checked, loosely, by timing)."""
    chosen: list[float] = []
    original = engine.RunContext._retry_delay

    def spy(exc, attempt):
        delay = original(exc, attempt)
        chosen.append(delay)
        return delay

    monkeypatch.setattr(engine.RunContext, "_retry_delay", staticmethod(spy))
    return chosen


def test_429_retry_after_is_waited_before_the_retry(server, call_kwargs, retry_delays):
    _script(server)
    server.set_model("p1", reply="after the wait", fail_status=429, fail_times=1, retry_after="1")
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    assert response.choices[0].message.content == "aggregated answer"
    assert retry_delays == [1.0]  # the server's Retry-After, not the default 0.25 s backoff
    first, second = server.requests_for("p1")
    assert first.status == 429 and second.status == 200
    assert second.started - first.finished >= 0.95
    p1 = _sub_call(response, "openai/p1")
    assert p1["status"] == "ok" and p1["attempts"] == 2
    assert _trace(response)["degraded"] is False


def test_429_retry_after_is_capped(server, call_kwargs, monkeypatch, retry_delays):
    """A huge Retry-After is not obeyed blindly: the wait is capped (the cap shortened here to keep it fast)."""
    monkeypatch.setattr(engine, "_MAX_BACKOFF_S", 0.5)
    _script(server)
    server.set_model("p1", fail_status=429, fail_times=1, retry_after="3600")
    started = time.monotonic()
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    assert time.monotonic() - started < 5
    assert retry_delays == [0.5]
    first, second = server.requests_for("p1")
    assert 0.45 <= second.started - first.finished < 3
    assert _sub_call(response, "openai/p1")["attempts"] == 2


def test_429_retry_after_past_the_deadline_fails_fast(server, call_kwargs):
    """Waiting 30 s would overrun the 3 s request timeout: no retry, a RateLimitError at once."""
    _script(server)
    for name in ("p1", "p2", "p3"):
        server.set_model(name, fail_status=429, retry_after="30", fail_message="slow down")
    started = time.monotonic()
    with pytest.raises(litellm.RateLimitError) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, timeout=3, **call_kwargs)
    assert time.monotonic() - started < 2.5
    assert all(len(server.requests_for(n)) == 1 for n in ("p1", "p2", "p3"))
    assert "openai/p1" in str(info.value) and "slow down" in str(info.value)
    assert not server.requests_for("agg")


# --------------------------------------------------------------------------- hangs past the timeout
def test_aggregator_hang_past_the_timeout_raises_timeout(server, call_kwargs):
    _script(server)
    server.set_model("agg", hang=True)
    started = time.monotonic()
    with pytest.raises(litellm.Timeout) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, timeout=1, **call_kwargs)
    assert time.monotonic() - started < 3.5
    assert "aggregator openai/agg" in str(info.value)


def test_all_members_hang_raises_timeout_within_the_member_timeout(server, call_kwargs):
    _script(server)
    for name in ("p1", "p2", "p3"):
        server.set_model(name, hang=True)
    started = time.monotonic()
    with pytest.raises(litellm.Timeout) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, member_timeout_s=1, **call_kwargs)
    assert time.monotonic() - started < 3.5
    assert "only 0 of 3 members answered" in str(info.value)
    assert all(len(server.requests_for(n)) == 1 for n in ("p1", "p2", "p3"))  # a timeout is not retried


# --------------------------------------------------------------------------- garbage body
def test_garbage_body_member_is_left_out_and_named(server, call_kwargs):
    _script(server)
    server.set_model("p2", garbage=True)
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    assert response.choices[0].message.content == "aggregated answer"
    trace = _trace(response)
    assert any("openai/p2" in m for m in trace["failed_members"])
    agg_prompt = server.requests_for("agg")[0].all_text
    assert "answer from p1" in agg_prompt and "not json" not in agg_prompt


def test_garbage_body_from_the_aggregator_raises_naming_it(server, call_kwargs):
    _script(server)
    server.set_model("agg", garbage=True)
    started = time.monotonic()
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    assert time.monotonic() - started < 5
    assert "aggregator openai/agg" in str(info.value)


# --------------------------------------------------------------------------- connection refused
def test_connection_refused_member_is_named(server, call_kwargs):
    _script(server)
    dead = _dead_base_url()
    proposers = ["openai/p1", {"model": "openai/p2", "params": {"api_base": dead}}, "openai/p3"]
    started = time.monotonic()
    response = litellm.completion(model=MOA, messages=user("q"), proposers=proposers, **call_kwargs)
    assert time.monotonic() - started < 5
    assert response.choices[0].message.content == "aggregated answer"
    p2 = _sub_call(response, "openai/p2")
    assert p2["status"] == "failed" and p2["attempts"] == 2  # a connection error is retried once
    assert "Connection error" in p2["error"]
    assert not server.requests_for("p2")


def test_connection_refused_everywhere_raises_quickly(server):
    dead = _dead_base_url()
    started = time.monotonic()
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, api_base=dead, api_key=API_KEY)
    assert time.monotonic() - started < 5
    assert "only 0 of 3 members answered" in str(info.value) and "openai/p3" in str(info.value)
    assert API_KEY not in str(info.value)


# --------------------------------------------------------------------------- final stage down
@pytest.mark.parametrize("model,kwargs,final", [
    (MOA, {"proposers": PROPOSERS}, "aggregator openai/agg"),
    (COUNCIL, {"council_models": ["openai/c1", "openai/c2"]}, "chairman openai/chair"),
], ids=["moa-aggregator", "council-chairman"])
def test_final_stage_down_without_fallbacks_raises_naming_it(server, call_kwargs, model, kwargs, final):
    _script(server)
    server.set_model(final.rsplit("/", 1)[1], fail_status=500, fail_message="final stage exploded")
    started = time.monotonic()
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model=model, messages=user("q"), **kwargs, **call_kwargs)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert final in message and "final stage exploded" in message
    assert "only 0 of 1 members answered" in message


def test_chairman_down_with_a_chain_of_fallbacks(server, explicit_profiles):
    """The chairman fails (500), its first fallback sends garbage, the second answers."""
    _script(server)
    server.set_model("chair", fail_status=500)
    server.set_model("chair2", garbage=True)
    server.set_model("chair3", reply="third time lucky")
    explicit_profiles({"profiles": {"chain": {"strategy": "council", "topology": {
        "chairman": {"model": "openai/chair", "fallbacks": ["openai/chair2", "openai/chair3"]},
        "council": ["openai/c1", "openai/c2"], "settings": {"retries": 0}}}}})
    response = litellm.completion(model="composite/profile/chain", messages=user("q"), api_base=server.base_url,
                                  api_key=API_KEY)
    assert response.choices[0].message.content == "third time lucky"
    statuses = {c["model"]: c["status"] for c in _trace(response)["sub_calls"] if c["role"] == "chairman"}
    assert statuses == {"openai/chair": "failed", "openai/chair2": "failed", "openai/chair3": "ok"}
    # the fallback got the same synthesis prompt as the chairman
    assert server.requests_for("chair3")[0].system_text == server.requests_for("chair")[0].system_text


async def test_stream_stalls_before_the_first_token_hands_over_to_the_fallback(server, explicit_profiles,
                                                                                 call_kwargs):
    _script(server)
    server.set_model("agg", reply="never sent", stall_after_chunks=0)
    server.set_model("agg2", reply="the fallback streamed this")
    explicit_profiles({"profiles": {"stall": {"strategy": "moa", "topology": {
        "aggregator": {"model": "openai/agg", "fallbacks": ["openai/agg2"], "timeout_s": 1},
        "proposers": ["openai/p1"], "settings": {"retries": 0}}}}})
    started = time.monotonic()
    stream = await litellm.acompletion(model="composite/profile/stall", messages=user("q"), stream=True,
                                       **call_kwargs)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "the fallback streamed this"
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- empty or broken final answers
def _chunk(delta: dict, finish=None) -> str:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "agg",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def _completion(choices: list) -> str:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "agg", "choices": choices})


# 200 answers that carry no answer: each must count as a failed final stage, streamed or not.
BROKEN_FINAL = {
    "empty choices": dict(raw_body=_completion([])),
    "null content": dict(raw_body=_completion([{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": None}}])),
    "an error body with status 200": dict(raw_body=json.dumps({"error": {"message": "overloaded", "type": "x"}})),
    "stream: no finish_reason": dict(raw_stream=[_chunk({"role": "assistant", "content": ""}), "[DONE]"]),
    "stream: finish_reason but no text": dict(raw_stream=[_chunk({"role": "assistant", "content": ""}),
                                                          _chunk({}, "stop"), "[DONE]"]),
    "stream: nothing at all": dict(raw_stream=["[DONE]"]),
    "stream: garbage": dict(raw_stream=["<html>502 Bad Gateway</html>", "[DONE]"]),
}
# Stream-only faults are tried streamed; the bodies both ways.
BROKEN_CASES = [pytest.param(case, stream, id=f"{case}-{'streamed' if stream else 'complete'}")
                for case in BROKEN_FINAL for stream in (False, True) if stream or not case.startswith("stream")]


async def _answer(stream: bool, **kwargs):
    """The text and finish_reason a client gets, streamed or not."""
    response = await litellm.acompletion(messages=user("q"), stream=stream, **kwargs)
    if not stream:
        return response.choices[0].message.content, response.choices[0].finish_reason, _trace(response)
    text, finish, trace = "", None, None
    async for chunk in response:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        fields = getattr(chunk.choices[0].delta, "provider_specific_fields", None) if chunk.choices else None
        trace = (fields or {}).get("composite", trace)
    return text, finish, trace


@pytest.mark.parametrize(("case", "stream"), BROKEN_CASES)
async def test_an_empty_or_broken_final_answer_runs_the_fallback(server, explicit_profiles, call_kwargs, case,
                                                                  stream):
    _script(server)
    server.set_model("agg", **BROKEN_FINAL[case])
    server.set_model("agg2", reply="the fallback answered")
    explicit_profiles({"profiles": {"fb": {"strategy": "moa", "topology": {
        "aggregator": {"model": "openai/agg", "fallbacks": ["openai/agg2"]},
        "proposers": ["openai/p1"], "settings": {"retries": 0}}}}})
    text, finish, trace = await asyncio.wait_for(_answer(stream, model="composite/profile/fb", **call_kwargs), 20)
    assert text == "the fallback answered"
    assert finish == "stop"
    if trace is not None:
        assert trace["degraded"] is True and trace["failed_members"] == ["aggregator openai/agg"]


@pytest.mark.parametrize(("case", "stream"), BROKEN_CASES)
async def test_an_empty_or_broken_final_answer_without_fallbacks_is_an_error(server, call_kwargs, case, stream):
    _script(server)
    server.set_model("agg", **BROKEN_FINAL[case])
    with pytest.raises(openai.APIError) as raised:
        await asyncio.wait_for(_answer(stream, model=MOA, proposers=["openai/p1"], **call_kwargs), 20)
    assert "aggregator openai/agg" in str(raised.value)


async def test_a_stream_cut_off_after_tokens_is_an_error_never_a_clean_finish(server, call_kwargs):
    """Tokens reached the client, then the upstream stream ended without a finish_reason: the client gets
    an error after the partial text (LiteLLM would otherwise close it with a synthetic `stop`)."""
    _script(server)
    server.set_model("agg", raw_stream=[_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Half"}),
                                        _chunk({"content": " an answer"}), "[DONE]"])
    stream = await litellm.acompletion(model=MOA, messages=user("q"), proposers=["openai/p1"], stream=True,
                                       **call_kwargs)
    text, finishes = "", []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finishes.append(chunk.choices[0].finish_reason)
    assert text == "Half an answer"
    assert not any(finishes)
    assert "without a finish_reason" in str(raised.value)


# --------------------------------------------------------------------------- council reviewers
def test_council_explicit_reviewers_all_failing_chairman_still_answers(server, explicit_profiles):
    _script(server)
    server.set_model("r1", fail_status=500)
    server.set_model("r2", fail_status=503)
    explicit_profiles({"profiles": {"reviewed": {"strategy": "council", "topology": {
        "chairman": "openai/chair", "council": ["openai/c1", "openai/c2"],
        "reviewers": ["openai/r1", "openai/r2"], "settings": {"retries": 0}}}}})
    response = litellm.completion(model="composite/profile/reviewed", messages=user("q"), api_base=server.base_url,
                                  api_key=API_KEY)
    assert response.choices[0].message.content == "chairman answer"
    trace = _trace(response)
    assert {m for m in trace["failed_members"]} == {"reviewer openai/r1", "reviewer openai/r2"}
    assert trace["details"]["council"]["rankings"] == []
    chair_prompt = server.requests_for("chair")[0].last_user_text  # answers and reviews: user-role content
    assert "(no reviews)" in chair_prompt and "answer from c1" in chair_prompt and "answer from c2" in chair_prompt


def test_council_members_failing_only_as_reviewers(server, call_kwargs):
    """Members answer stage 1 but fail stage 2 (the server errors on review prompts): the chairman answers."""
    def answer_but_never_review(request):
        if "FINAL RANKING" in request.all_text:
            raise RuntimeError("reviewer crashed")  # the fake server answers 500
        return f"answer from {request.model}"

    _script(server)
    for name in ("c1", "c2", "c3"):
        server.set_model(name, reply=answer_but_never_review)
    response = litellm.completion(model=COUNCIL, messages=user("q"), council_models=["openai/c1", "openai/c2",
                                  "openai/c3"], retries=0, **call_kwargs)
    assert response.choices[0].message.content == "chairman answer"
    trace = _trace(response)
    reviews = [c for c in trace["sub_calls"] if c["role"] == "reviewer"]
    assert len(reviews) == 3 and all(c["status"] == "failed" for c in reviews)
    assert "(no reviews)" in server.requests_for("chair")[0].last_user_text


def test_council_review_quorum_not_met_raises(server, explicit_profiles):
    _script(server)
    server.set_model("r1", fail_status=500)
    explicit_profiles({"profiles": {"strict": {"strategy": "council", "topology": {
        "chairman": "openai/chair", "council": ["openai/c1", "openai/c2"], "reviewers": ["openai/r1"],
        "settings": {"retries": 0, "review_quorum": 1}}}}})
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model="composite/profile/strict", messages=user("q"), api_base=server.base_url,
                           api_key=API_KEY)
    assert "stage 2 reviews" in str(info.value) and "reviewer openai/r1" in str(info.value)
    assert not server.requests_for("chair")


# --------------------------------------------------------------------------- nested composites
def test_nested_composite_failing_inside_a_moa(server, call_kwargs, explicit_profiles):
    _script(server)
    server.set_model("i1", fail_status=500, fail_message="inner one down")
    server.set_model("i2", fail_status=500, fail_message="inner two down")
    explicit_profiles({"profiles": {"inner": {"strategy": "moa", "topology": {
        "aggregator": "openai/iagg", "proposers": ["openai/i1", "openai/i2"]}}}})
    started = time.monotonic()
    response = litellm.completion(model=MOA, messages=user("q"), proposers=["composite/profile/inner", "openai/p1"],
                                  **call_kwargs)
    assert time.monotonic() - started < 5
    assert response.choices[0].message.content == "aggregated answer"
    trace = _trace(response)
    assert trace["failed_members"] == ["proposer composite/profile/inner"]
    inner = _sub_call(response, "composite/profile/inner")
    assert inner["attempts"] == 1  # the inner fan-out is not re-run
    assert "inner one down" in inner["error"] and "inner two down" in inner["error"]
    assert len(server.requests_for("i1")) == 2 and len(server.requests_for("i2")) == 2  # their own retry only
    assert not server.requests_for("iagg")
    assert "answer from p1" in server.requests_for("agg")[0].last_user_text


def test_nested_composite_aggregator_failing_inside_a_moa(server, call_kwargs, explicit_profiles):
    _script(server)
    server.set_model("iagg", fail_status=500)
    explicit_profiles({"profiles": {"inner": {"strategy": "moa", "topology": {
        "aggregator": "openai/iagg", "proposers": ["openai/p2"], "settings": {"retries": 0}}}}})
    response = litellm.completion(model=MOA, messages=user("q"), proposers=["composite/profile/inner", "openai/p1"],
                                  **call_kwargs)
    assert response.choices[0].message.content == "aggregated answer"
    assert _trace(response)["failed_members"] == ["proposer composite/profile/inner"]
    assert "aggregator openai/iagg" in _sub_call(response, "composite/profile/inner")["error"]


# --------------------------------------------------------------------------- client cancellation
async def test_cancellation_cancels_every_sub_call_and_leaves_no_tasks(server, call_kwargs):
    _script(server)
    for name in ("p1", "p2", "p3"):
        server.set_model(name, latency_s=30)
    before = asyncio.all_tasks()
    task = asyncio.ensure_future(litellm.acompletion(model=MOA, messages=user("q"), proposers=PROPOSERS,
                                                     **call_kwargs))
    assert await wait_until(lambda: len(server.requests) == 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert await wait_until(lambda: all(r.finished is not None for r in server.requests))
    assert await _wait_no_orphans(before) == []
    assert not server.requests_for("agg")


async def test_stream_closed_mid_answer_closes_the_upstream_and_leaves_no_tasks(server, call_kwargs):
    """The client reads one token and closes the stream (what the proxy does when its client disconnects)."""
    _script(server)
    server.set_model("agg", reply="a b c d e f g h i j k l", chunk_delay_s=0.5)
    before = asyncio.all_tasks()
    stream = await litellm.acompletion(model=MOA, messages=user("q"), proposers=PROPOSERS, stream=True,
                                       **call_kwargs)
    got = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got.append(chunk.choices[0].delta.content)
            break
    await stream.aclose()
    assert got
    assert await wait_until(lambda: all(r.finished is not None for r in server.requests), 1.5)
    assert await _wait_no_orphans(before) == []


async def test_stream_closed_while_members_run_cancels_them_and_leaves_no_tasks(server, call_kwargs):
    """The client reads the first progress line (reasoning) and closes the stream while proposers still run."""
    _script(server)
    for name in ("p1", "p2", "p3"):
        server.set_model(name, latency_s=30)
    before = asyncio.all_tasks()
    stream = await litellm.acompletion(model=MOA, messages=user("q"), proposers=PROPOSERS, stream=True,
                                       **call_kwargs)
    async for chunk in stream:
        if chunk.choices and getattr(chunk.choices[0].delta, "reasoning_content", None):
            break
    assert await wait_until(lambda: len(server.requests) == 3)
    await stream.aclose()
    assert await wait_until(lambda: all(r.finished is not None for r in server.requests), 3)
    assert await _wait_no_orphans(before) == []
    assert not server.requests_for("agg")


async def test_stream_cancelled_while_members_run_leaves_no_tasks(server, call_kwargs):
    _script(server)
    for name in ("p1", "p2", "p3"):
        server.set_model(name, latency_s=30)

    async def consume():
        stream = await litellm.acompletion(model=MOA, messages=user("q"), proposers=PROPOSERS, stream=True,
                                           **call_kwargs)
        async for _ in stream:
            pass

    before = asyncio.all_tasks()
    task = asyncio.ensure_future(consume())
    assert await wait_until(lambda: len(server.requests) == 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert await wait_until(lambda: all(r.finished is not None for r in server.requests))
    assert await _wait_no_orphans(before) == []
    assert not server.requests_for("agg")


async def test_cancellation_kills_a_cli_member_and_its_children(server, call_kwargs, fake, monkeypatch):  # noqa: F811
    """A MoA with a hanging CLI-agent proposer (which started a child) is cancelled: the whole process
    group is gone, the HTTP member saw the disconnect, and no task is left."""
    fake.install("fake_agent.py", "agent")
    monkeypatch.setenv("FAKE_MODE", "hang_child")
    _script(server)
    server.set_model("p1", latency_s=30)
    before = asyncio.all_tasks()
    task = asyncio.ensure_future(litellm.acompletion(
        model=MOA, messages=user("q"), **call_kwargs,
        proposers=["openai/p1", {"model": "composite/composer-cli/composer-1", "params": CLI_SETTINGS}]))
    child = int(await wait_for_file(fake.child_pid))
    pid = fake.read_record()["pid"]
    assert alive(pid) and alive(child)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert await wait_gone(child) and await wait_gone(pid)
    assert group_members(pid) == []
    assert await wait_until(lambda: all(r.finished is not None for r in server.requests))
    assert await _wait_no_orphans(before) == []


# --------------------------------------------------------------------------- concurrency limit
@pytest.fixture()
def concurrency_limit():
    """Set the per-loop limit of leaf sub-calls in flight for one test, restoring the default afterwards."""
    yield engine.set_max_concurrency
    engine.set_max_concurrency(engine._DEFAULT_MAX_CONCURRENCY)


async def test_concurrency_limit_honoured_under_a_burst(server, call_kwargs, concurrency_limit):
    _script(server, latency=0.05)
    concurrency_limit(3)
    started = time.monotonic()
    responses = await asyncio.wait_for(asyncio.gather(*[
        litellm.acompletion(model=MOA, messages=user(f"q{i}"), proposers=PROPOSERS, **call_kwargs)
        for i in range(8)]), 30)
    assert all(r.choices[0].message.content == "aggregated answer" for r in responses)
    assert len(server.requests) == 32
    assert server.max_in_flight == 3  # the limit was reached and never exceeded
    assert time.monotonic() - started < 15


def test_concurrency_limit_honoured_by_sync_callers_in_threads(server, call_kwargs, concurrency_limit):
    """Sync calls from many threads share the background loop, hence one limit."""
    _script(server, latency=0.05)
    concurrency_limit(2)
    results, failures = [], []

    def worker(i):
        try:
            results.append(litellm.completion(model=MOA, messages=user(f"t{i}"), proposers=PROPOSERS,
                                              **call_kwargs))
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures and len(results) == 6
    assert server.max_in_flight == 2


async def test_concurrency_limit_of_one_with_nested_composites_does_not_deadlock(server, call_kwargs,
                                                                                 explicit_profiles,
                                                                                 concurrency_limit):
    _script(server, latency=0.02)
    concurrency_limit(1)
    explicit_profiles({"profiles": {"inner": {"strategy": "moa", "topology": {
        "aggregator": "openai/p3", "proposers": ["openai/p1", "openai/p2"]}}}})
    response = await asyncio.wait_for(litellm.acompletion(
        model=MOA, messages=user("q"), proposers=["composite/profile/inner", "composite/profile/inner", "openai/p1"],
        **call_kwargs), 20)
    assert response.choices[0].message.content == "aggregated answer"
    assert server.max_in_flight == 1
    assert len(server.requests) == 8  # 2 x (2 + 1) inner, 1 outer proposer, 1 aggregator
