"""MoA end to end on the fake server: parallelism, prompts, usage, cost, layers, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import litellm
import pytest

from conftest import API_KEY, cancel_once_sent, user

PROPOSERS = ["openai/p1", "openai/p2", "openai/p3"]
MOA = "composite/moa/openai/agg"


def _script(server, latency=0.5):
    for name in ("p1", "p2", "p3"):
        server.set_model(name, reply=f"proposal from {name} says 4", latency_s=latency)
    server.set_model("agg", reply="The answer is 4.", latency_s=latency)


def _check_moa_answer(server, response, started, ended):
    assert response.choices[0].message.content == "The answer is 4."
    assert response.model == MOA
    assert len(server.requests) == 4
    agg = server.requests_for("agg")[0]
    for name in ("p1", "p2", "p3"):  # proposals are untrusted: user-role content, never the system message
        assert f"proposal from {name} says 4" in agg.last_user_text
        assert f"proposal from {name} says 4" not in agg.system_text
    # proposers ran in parallel: all started before the first one finished
    proposer_requests = [r for r in server.requests if r.model != "agg"]
    assert max(r.started for r in proposer_requests) < min(r.finished for r in proposer_requests)
    assert ended - started <= 1.25 + 0.5  # generous bound; the benchmarks measure the real overhead


def test_moa_sync_parallel_and_prompt(server, call_kwargs):
    _script(server)
    started = time.monotonic()
    response = litellm.completion(model=MOA, messages=user("What is 2+2?"), proposers=PROPOSERS, **call_kwargs)
    _check_moa_answer(server, response, started, time.monotonic())


async def test_moa_async_parallel(server, call_kwargs):
    _script(server)
    started = time.monotonic()
    response = await litellm.acompletion(model=MOA, messages=user("What is 2+2?"), proposers=PROPOSERS, **call_kwargs)
    _check_moa_answer(server, response, started, time.monotonic())


async def test_sync_call_inside_running_loop_stays_parallel(server, call_kwargs):
    """composite_llm_research ran proposers one after another inside a running loop; here they stay parallel."""
    _script(server)
    started = time.monotonic()
    response = litellm.completion(model=MOA, messages=user("What is 2+2?"), proposers=PROPOSERS, **call_kwargs)
    _check_moa_answer(server, response, started, time.monotonic())


def test_sync_calls_from_worker_threads(server, call_kwargs):
    _script(server, latency=0.3)
    results, errors = [], []

    def worker():
        try:
            results.append(litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(results) == 4
    assert len(server.requests) == 16
    assert time.monotonic() - started < 2.5  # 4 requests x 2 stages of 0.3 s, in parallel


def test_usage_is_sum_of_sub_calls(server, call_kwargs):
    _script(server, latency=0)
    server.set_model("p1", reply="one two three", reasoning_tokens=5, cached_tokens=2)
    response = litellm.completion(model=MOA, messages=user("count please"), proposers=PROPOSERS, **call_kwargs)
    reqs = server.requests
    expected_prompt = sum(r.prompt_tokens for r in reqs)
    assert response.usage.prompt_tokens == expected_prompt
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert response.usage.completion_tokens == sum(c["usage"]["completion_tokens"] for c in trace["sub_calls"])
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.usage.completion_tokens_details.reasoning_tokens == 5
    assert response.usage.prompt_tokens_details.cached_tokens == 2
    assert len(trace["sub_calls"]) == 4


def test_system_message_merged_and_multimodal_content_kept(server, call_kwargs):
    _script(server, latency=0)
    content = [{"type": "text", "text": "Describe this"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": content}]
    litellm.completion(model=MOA, messages=messages, proposers=PROPOSERS, **call_kwargs)
    agg = server.requests_for("agg")[0]
    systems = [m for m in agg.messages if m["role"] == "system"]
    assert len(systems) == 1
    assert systems[0]["content"].startswith("You are terse.")
    assert "Several assistants have answered" in systems[0]["content"]  # our instructions merged in
    assert "proposal from p1" not in systems[0]["content"] and "proposal from p1" in agg.last_user_text
    assert agg.messages[-2]["content"] == content  # list content preserved, not stringified
    assert server.requests_for("p1")[0].messages[-1]["content"] == content


def test_no_model_names_in_aggregator_prompt(server, call_kwargs):
    _script(server, latency=0)
    litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    text = server.requests_for("agg")[0].all_text
    for name in ("openai/p1", "openai/p2", "openai/p3"):
        assert name not in text
    assert "Response A" in text and "Response C" in text


def test_one_member_down_answers_and_names_it(server, call_kwargs):
    _script(server, latency=0)
    server.set_model("p2", fail_status=500, fail_message="boom internal")
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    assert response.choices[0].message.content == "The answer is 4."
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert trace["degraded"] is True
    assert any("openai/p2" in m for m in trace["failed_members"])
    assert "openai/p2" in response.choices[0].message.reasoning_content
    agg_text = server.requests_for("agg")[0].all_text
    assert "boom internal" not in agg_text and "Error" not in agg_text  # never pasted into prompts
    assert "Response C" not in agg_text  # two answers only
    assert len(server.requests_for("p2")) == 2  # one retry on a 5xx, no more


def test_all_members_down_raises_quickly(server, call_kwargs):
    _script(server, latency=0)
    for name in ("p1", "p2", "p3"):
        server.set_model(name, fail_status=503, fail_message=f"down {API_KEY}")
    started = time.monotonic()
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "openai/p1" in message and "openai/p3" in message
    assert API_KEY not in message  # redacted
    assert not server.requests_for("agg")


def test_rate_limited_members_raise_rate_limit(server, call_kwargs):
    _script(server, latency=0)
    for name in ("p1", "p2", "p3"):
        server.set_model(name, fail_status=429, retry_after="0")
    with pytest.raises(litellm.RateLimitError):
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)


def test_retry_recovers_transient_failure(server, call_kwargs):
    _script(server, latency=0)
    server.set_model("p1", reply="recovered", fail_status=500, fail_times=1)
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    trace = response.choices[0].message.provider_specific_fields["composite"]
    p1 = next(c for c in trace["sub_calls"] if c["model"] == "openai/p1")
    assert p1["status"] == "ok" and p1["attempts"] == 2
    assert trace["degraded"] is False


def test_multi_layer_moa(server, call_kwargs):
    server.set_model("l1a", reply="first layer A")
    server.set_model("l1b", reply="first layer B")
    server.set_model("l2", reply="second layer refined")
    server.set_model("agg", reply="final")
    response = litellm.completion(
        model=MOA, messages=user("q"), layers=[["openai/l1a", "openai/l1b"], ["openai/l2"]], **call_kwargs
    )
    assert response.choices[0].message.content == "final"
    l2 = server.requests_for("l2")[0]
    assert "first layer A" in l2.last_user_text and "first layer B" in l2.last_user_text
    agg = server.requests_for("agg")[0]
    assert "second layer refined" in agg.last_user_text and "first layer A" not in agg.all_text


def test_tools_go_to_final_stage_only_and_tool_calls_return(server, call_kwargs):
    _script(server, latency=0)
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    server.set_model("agg", reply="", tool_calls=[tool_call])
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, tools=tools, **call_kwargs)
    assert "tools" not in server.requests_for("p1")[0].body
    assert server.requests_for("agg")[0].body["tools"][0]["function"]["name"] == "lookup"
    calls = response.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "lookup"
    assert response.choices[0].finish_reason == "tool_calls"


def test_sampling_params_reach_members_and_final_params_only_final(server, call_kwargs):
    _script(server, latency=0)
    litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, temperature=0.3, max_tokens=50,
                       **call_kwargs)
    assert server.requests_for("p1")[0].body["temperature"] == 0.3
    assert "max_tokens" not in server.requests_for("p1")[0].body
    assert server.requests_for("agg")[0].body["max_tokens"] == 50


def test_node_params_override_request_and_provider_bundle(server, explicit_profiles):
    server.set_model("p", reply="x")
    server.set_model("a", reply="y")
    explicit_profiles({
        "providers": {"fake": {"litellm_params": {"api_base": server.base_url, "api_key": API_KEY}}},
        "profiles": {"bundle": {"strategy": "moa", "topology": {
            "aggregator": {"model": "openai/a", "provider": "fake"},
            "proposers": [{"model": "openai/p", "provider": "fake", "params": {"temperature": 0.9}}],
        }}},
    })
    response = litellm.completion(model="composite/profile/bundle", messages=user("q"), temperature=0.1)
    assert response.choices[0].message.content == "y"
    assert server.requests_for("p")[0].body["temperature"] == 0.9
    assert server.requests_for("a")[0].body["temperature"] == 0.1


def test_inline_params_three_ways(server, call_kwargs):
    _script(server, latency=0)
    for kwargs in ({"proposers": PROPOSERS}, {"optional_params": {"proposers": PROPOSERS}},
                   {"extra_body": {"proposers": PROPOSERS}}):
        server.clear_requests()
        response = litellm.completion(model=MOA, messages=user("q"), **kwargs, **call_kwargs)
        assert response.choices[0].message.content == "The answer is 4."
        assert len(server.requests) == 4


def test_missing_proposers_is_a_clear_error(server, call_kwargs):
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model=MOA, messages=user("q"), **call_kwargs)
    assert "proposers" in str(info.value)
    assert not server.requests  # never a silent default model


def test_composites_compose(server, call_kwargs, explicit_profiles):
    """A node may itself be a composite model; its usage and cost roll up."""
    _script(server, latency=0)
    server.set_model("outer", reply="outer final")
    explicit_profiles({"profiles": {"inner": {"strategy": "moa", "topology": {
        "aggregator": "openai/agg", "proposers": ["openai/p1", "openai/p2"]}}}})
    response = litellm.completion(
        model="composite/moa/openai/outer", messages=user("q"),
        proposers=["composite/profile/inner", "openai/p3"], **call_kwargs,
    )
    assert response.choices[0].message.content == "outer final"
    assert len(server.requests) == 5  # inner: 2 + 1, outer: p3 + outer
    assert response.usage.prompt_tokens == sum(r.prompt_tokens for r in server.requests)
    assert "The answer is 4." in server.requests_for("outer")[0].last_user_text


def test_composite_cycle_is_rejected(server, call_kwargs, explicit_profiles):
    explicit_profiles({"profiles": {"loop": {"strategy": "moa", "topology": {
        "aggregator": "openai/agg", "proposers": ["composite/profile/loop"]}}}})
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/profile/loop", messages=user("q"), **call_kwargs)
    assert "cycle" in str(info.value) or "nested" in str(info.value)


async def test_cancelling_the_caller_cancels_every_sub_call(server, call_kwargs):
    for name in ("p1", "p2", "p3"):
        server.set_model(name, latency_s=30)
    task = asyncio.ensure_future(
        litellm.acompletion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    )
    await cancel_once_sent(task, server, 3)
    assert not server.requests_for("agg")


def test_request_timeout_bounds_members(server, call_kwargs):
    _script(server, latency=0)
    server.set_model("p3", hang=True)
    started = time.monotonic()
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, timeout=2,
                                  member_timeout_s=1, **call_kwargs)
    assert time.monotonic() - started < 4
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert any("openai/p3" in m for m in trace["failed_members"])


def test_quorum_grace_drops_stragglers(server, call_kwargs):
    _script(server, latency=0.05)
    server.set_model("p3", latency_s=20)
    started = time.monotonic()
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, quorum=2, grace_s=0.1,
                                  **call_kwargs)
    assert time.monotonic() - started < 3
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert trace["degraded"] and any("openai/p3" in m for m in trace["dropped_members"])
    assert "DEGRADED" in response.choices[0].message.reasoning_content


def test_aggregator_fallback(server, explicit_profiles):
    server.set_model("p", reply="prop")
    server.set_model("bad", fail_status=500)
    server.set_model("good", reply="from fallback")
    explicit_profiles({"profiles": {"fb": {"strategy": "moa", "topology": {
        "aggregator": {"model": "openai/bad", "fallbacks": ["openai/good"]},
        "proposers": ["openai/p"], "settings": {"retries": 0}}}}})
    response = litellm.completion(model="composite/profile/fb", messages=user("q"), api_base=server.base_url,
                                  api_key=API_KEY)
    assert response.choices[0].message.content == "from fallback"


def test_self_moa_short_form(server, call_kwargs):
    """`proposers: {model, samples, temperature}` samples one model k times (Self-MoA)."""
    server.set_model("strong", reply="sample")
    server.set_model("agg", reply="synthesis")
    response = litellm.completion(model=MOA, messages=user("q"), **call_kwargs,
                                  proposers={"model": "openai/strong", "samples": 3, "temperatures": [0.2, 0.7, 1.0]})
    assert response.choices[0].message.content == "synthesis"
    temps = sorted(r.body["temperature"] for r in server.requests_for("strong"))
    assert temps == [0.2, 0.7, 1.0]
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert [c["label"] for c in trace["sub_calls"][:3]] != ["openai/strong"] * 3


def test_self_moa_short_form_errors():
    from composite_llm import CompositeConfigError, load_profiles

    with pytest.raises(CompositeConfigError) as info:
        load_profiles({"profiles": {"s": {"strategy": "moa", "topology": {
            "aggregator": "a/b", "proposers": {"model": "a/c", "samples": 2, "temperatures": [0.1]}}}}})
    assert "temperatures has 1 values for 2 samples" in str(info.value)
