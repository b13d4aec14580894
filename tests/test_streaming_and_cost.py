"""Streaming (sync and async) and cost: summed over sub-calls, where LiteLLM's spend tracking reads it."""

from __future__ import annotations

import asyncio
import time

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger

from conftest import API_KEY, user

PROPOSERS = ["openai/p1", "openai/p2", "openai/p3"]
MOA = "composite/moa/openai/agg"
# Custom per-token prices on every node make sub-call costs non-zero and exactly predictable.
PRICES = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}


def _script(server, latency=0.0):
    for name in ("p1", "p2", "p3"):
        server.set_model(name, reply=f"proposal {name}", latency_s=latency)
    server.set_model("agg", reply="final streamed answer in several words", latency_s=latency, chunk_delay_s=0.01)


def _priced_profile(server):
    node = lambda m: {"model": m, "params": PRICES}  # noqa: E731
    return {"profiles": {"priced": {"strategy": "moa", "topology": {
        "aggregator": node("openai/agg"), "proposers": [node(p) for p in PROPOSERS]}}}}


def _expected_cost(server):
    return sum(r.prompt_tokens * 1e-6 + len(_reply_of(server, r).split()) * 2e-6 for r in server.requests)


def _reply_of(server, request):
    return "final streamed answer in several words" if request.model == "agg" else f"proposal {request.model}"


def test_sync_stream_reasoning_then_tokens_then_usage(server, call_kwargs):
    _script(server, latency=0.3)
    started = time.monotonic()
    stream = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, stream=True,
                                stream_options={"include_usage": True}, **call_kwargs)
    reasoning, content, usage, first_content_at = [], [], None, None
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            if getattr(delta, "reasoning_content", None):
                reasoning.append(delta.reasoning_content)
            if delta.content:
                first_content_at = first_content_at or time.monotonic()
                content.append(delta.content)
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    assert "".join(content) == "final streamed answer in several words"
    assert len(content) >= 5  # token by token, not one blob
    text = "".join(reasoning)
    assert "proposer openai/p1" in text and "proposer openai/p3" in text
    assert usage is not None and usage.prompt_tokens == sum(r.prompt_tokens for r in server.requests)
    assert first_content_at - started < 0.3 * 2 + 1.5  # generous: the benchmarks measure overhead
    assert len(server.requests) == 4


async def test_async_stream(server, call_kwargs):
    _script(server, latency=0.3)
    stream = await litellm.acompletion(model=MOA, messages=user("q"), proposers=PROPOSERS, stream=True,
                                       stream_options={"include_usage": True}, **call_kwargs)
    content, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            content.append(chunk.choices[0].delta.content)
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    assert "".join(content) == "final streamed answer in several words"
    assert usage.completion_tokens == sum(len(_reply_of(server, r).split()) for r in server.requests)


async def test_stream_reports_progress_before_final_stage(server, call_kwargs):
    """Earlier stages stream as reasoning while the aggregator has not started yet."""
    _script(server, latency=0.0)
    server.set_model("p3", reply="slow one", latency_s=0.6)
    stream = await litellm.acompletion(model=MOA, messages=user("q"), proposers=PROPOSERS, stream=True, **call_kwargs)
    seen_p1_before_agg = False
    async for chunk in stream:
        if chunk.choices and "openai/p1" in (getattr(chunk.choices[0].delta, "reasoning_content", None) or ""):
            seen_p1_before_agg = not server.requests_for("agg")
    assert seen_p1_before_agg


def test_cost_is_sum_of_sub_calls_non_streaming(server, explicit_profiles, call_kwargs):
    _script(server)
    explicit_profiles(_priced_profile(server))
    response = litellm.completion(model="composite/profile/priced", messages=user("price me"), **call_kwargs)
    expected = _expected_cost(server)
    assert expected > 0
    assert response._hidden_params["response_cost"] == pytest.approx(expected, rel=1e-9)
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert trace["cost"] == pytest.approx(expected, rel=1e-9) and trace["cost_complete"]


class _SpendRecorder(CustomLogger):
    def __init__(self):
        super().__init__()
        self.events = []

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs)

    def _record(self, kwargs):
        messages = kwargs.get("messages") or [{}]
        self.events.append((kwargs.get("model"), kwargs.get("response_cost"), messages[-1].get("content")))

    def for_prompt(self, prompt):
        """Events of one test's requests (a sync call's logging may land after its test ended)."""
        return [e for e in self.events if e[2] == prompt]


async def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


_RECORDER = _SpendRecorder()


@pytest.fixture()
def recorder():
    """One recorder for the session: LiteLLM sets up callbacks once, reassigning the list is not seen."""
    if _RECORDER not in litellm.callbacks:
        litellm.callbacks.append(_RECORDER)
    _RECORDER.events.clear()
    yield _RECORDER
    _RECORDER.events.clear()


async def test_spend_callbacks_see_one_event_with_summed_cost(server, explicit_profiles, call_kwargs, recorder):
    """Sub-calls create no spend records of their own; the composite request's record has the sum."""
    _script(server)
    explicit_profiles(_priced_profile(server))
    await litellm.acompletion(model="composite/profile/priced", messages=user("price me async"), **call_kwargs)
    await _wait_for(lambda: recorder.for_prompt("price me async"))
    await asyncio.sleep(0.3)  # any (wrong) sub-call events would arrive by now
    events = recorder.for_prompt("price me async")
    assert len(events) == 1, recorder.events
    assert events[0][1] == pytest.approx(_expected_cost(server), rel=1e-9)


async def test_streaming_cost_reaches_spend_tracking(server, explicit_profiles, call_kwargs, recorder):
    """Regression guard for the private `_provider_reported_cost` path (litellm pinned)."""
    _script(server)
    explicit_profiles(_priced_profile(server))
    stream = await litellm.acompletion(model="composite/profile/priced", messages=user("price me streaming"),
                                       stream=True, stream_options={"include_usage": True}, **call_kwargs)
    async for _ in stream:
        pass
    await _wait_for(lambda: recorder.for_prompt("price me streaming"))
    await asyncio.sleep(0.3)
    events = recorder.for_prompt("price me streaming")
    assert len(events) == 1, recorder.events
    assert events[0][1] == pytest.approx(_expected_cost(server), rel=1e-9)


async def test_stream_final_stage_fallback_before_first_token(server, explicit_profiles, call_kwargs):
    server.set_model("p1", reply="prop")
    server.set_model("bad", fail_status=500)
    server.set_model("good", reply="streamed by fallback")
    explicit_profiles({"profiles": {"sfb": {"strategy": "moa", "topology": {
        "aggregator": {"model": "openai/bad", "fallbacks": ["openai/good"]}, "proposers": ["openai/p1"],
        "settings": {"retries": 0}}}}})
    stream = await litellm.acompletion(model="composite/profile/sfb", messages=user("q"), stream=True, **call_kwargs)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "streamed by fallback"


async def test_stream_all_members_down_raises(server, call_kwargs):
    for name in ("p1", "p2", "p3"):
        server.set_model(name, fail_status=500)
    with pytest.raises(litellm.ServiceUnavailableError):
        stream = await litellm.acompletion(model=MOA, messages=user("q"), proposers=PROPOSERS, stream=True,
                                           **call_kwargs)
        async for _ in stream:
            pass
    assert not server.requests_for("agg")


async def test_stream_stall_mid_answer_raises_not_hangs(server, call_kwargs):
    _script(server)
    server.set_model("agg", reply="one two three four five", stall_after_chunks=2)
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        stream = await litellm.acompletion(model=MOA, messages=user("q"), proposers=PROPOSERS, stream=True,
                                           member_timeout_s=1, **call_kwargs)
        async for _ in stream:
            pass
    assert time.monotonic() - started < 6
    assert API_KEY not in str(info.value)


# --------------------------------------------------------------------------- a client that leaves early
def _cost_of(server, model: str) -> float:
    """The exact cost of the answered requests to `model` (prices of `_priced_profile`)."""
    return sum(r.prompt_tokens * 1e-6 + len(_reply_of(server, r).split()) * 2e-6 for r in server.requests_for(model))


async def _read_until(stream, predicate) -> None:
    seen: list[str] = []
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            seen.append((getattr(delta, "reasoning_content", None) or "") + (delta.content or ""))
        if predicate("".join(seen)):
            return
    raise AssertionError("the stream ended before the moment to leave")


async def test_a_client_leaving_while_members_run_is_billed_for_what_ran(server, explicit_profiles, call_kwargs):
    """The cost LiteLLM's stream logging reads (what the proxy bills a disconnected stream from) holds the
    answered members, and the one in flight at its prompt's estimated price (LiteLLM's tokenizer)."""
    _script(server)
    server.set_model("p3", reply="proposal p3", latency_s=30)
    explicit_profiles(_priced_profile(server))
    stream = await litellm.acompletion(model="composite/profile/priced", messages=user("leave early"), stream=True,
                                       **call_kwargs)
    await asyncio.wait_for(_read_until(stream, lambda text: "proposer openai/p1" in text
                                       and "proposer openai/p2" in text), 20)
    answered = _cost_of(server, "p1") + _cost_of(server, "p2")
    p3_prompt = litellm.token_counter(model="openai/p3", messages=server.requests_for("p3")[0].messages) * 1e-6
    # kept current while the stream runs: landed costs plus the in-flight member's prompt
    assert stream.logging_obj._provider_reported_cost == pytest.approx(answered + p3_prompt, rel=1e-9)
    await stream.aclose()
    assert stream.logging_obj._provider_reported_cost == pytest.approx(answered + p3_prompt, rel=1e-9)
    assert not server.requests_for("agg")


async def test_a_client_leaving_after_the_last_token_is_billed_for_the_final_stage(server, explicit_profiles,
                                                                                   call_kwargs):
    """Every content token arrived, the upstream's usage chunk did not: the aggregator is billed from the
    chunks read (its prompt and the tokens streamed), on top of the three members."""
    _script(server)
    server.set_model("agg", reply="final streamed answer in several words", stall_after_chunks=6)
    explicit_profiles(_priced_profile(server))
    stream = await litellm.acompletion(model="composite/profile/priced", messages=user("leave at the end"),
                                       stream=True, **call_kwargs)
    await asyncio.wait_for(_read_until(stream, lambda text: text.endswith("several words")), 20)
    await stream.aclose()
    members = sum(_cost_of(server, p) for p in ("p1", "p2", "p3"))
    billed = stream.logging_obj._provider_reported_cost
    # the aggregator's share: its prompt (LiteLLM's tokenizer) and 6 streamed words at the node's prices
    assert billed > members + 6 * 2e-6
    assert billed < members + 5e-3


def test_in_flight_cost_estimates_never_download_a_tokenizer(server, call_kwargs, monkeypatch, no_network):
    """The stream's running cost estimates each sub-call's prompt before it answers. Counted with the
    member's own LiteLLM tokenizer, a `llama-3` name meant a Hugging Face hub download: offline, 23 s of
    huggingface_hub retries before the first token (the fusion example in docs/STRATEGIES.md). Now the
    bundled OpenAI encoding counts every estimate."""
    import litellm.utils as litellm_utils

    chosen: list[str] = []
    original = litellm_utils._select_tokenizer_helper
    monkeypatch.setattr(litellm_utils, "_select_tokenizer_helper",
                        lambda model: chosen.append(model) or original(model))
    server.set_model("llama-3.3-70b-versatile", reply="221 = 13 x 17, so no.")
    server.set_model("agg", reply="No: 221 = 13 x 17.")
    stream = litellm.completion(model=MOA, messages=user("Is 221 prime?"), stream=True,
                                proposers=["groq/llama-3.3-70b-versatile", "openai/agg"], **call_kwargs)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "No: 221 = 13 x 17."
    assert not any("llama" in model for model in chosen), chosen
    assert no_network == []
