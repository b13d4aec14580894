"""Limits that keep one request from hurting the others or itself: the per-request sub-call budget, fair
hand-out of the concurrency slots across requests, and a request deadline planned so the final stage
still has time. Counts and orderings are asserted, not tight timings; every wait is bounded."""

from __future__ import annotations

import asyncio
import time

import httpx
import litellm
import pytest
from litellm.types.utils import ModelResponse

from composite_llm import engine
from composite_llm.litellm_provider import COMPOSITE_PROVIDER
from composite_llm.errors import CompositeConfigError
from conftest import user

MOA = "composite/moa/openai/agg"


def _trace(response) -> dict:
    return response.choices[0].message.provider_specific_fields["composite"]


def _nest(levels: int, width: int) -> dict:
    """Profiles l1..l<levels>: l1 is a MoA of `width` plain proposers, each next level a MoA of `width`
    copies of the level below. Leaf calls of l<k>: width * calls(l<k-1>) + 1."""
    profiles = {"l1": {"strategy": "moa", "topology": {"aggregator": "openai/agg",
                                                        "proposers": ["openai/p1"] * width}}}
    for level in range(2, levels + 1):
        profiles[f"l{level}"] = {"strategy": "moa", "topology": {
            "aggregator": "openai/agg", "proposers": [f"composite/profile/l{level - 1}"] * width}}
    return {"profiles": profiles}


# --------------------------------------------------------------------------- sub-call budget
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
async def test_a_thousand_proposers_are_refused_before_any_call(server, call_kwargs, stream):
    with pytest.raises(litellm.BadRequestError) as raised:
        response = await litellm.acompletion(model=MOA, messages=user("q"), proposers=["openai/p1"] * 1000,
                                             stream=stream, **call_kwargs)
        if stream:
            async for _ in response:
                pass
    assert "1001 sub-calls" in str(raised.value) and "max_sub_calls=100" in str(raised.value)
    assert server.requests == []


async def test_nested_composites_count_against_the_request_before_any_call(server, call_kwargs, explicit_profiles):
    """8 x 8 x 8 nesting is 585 leaf calls: a profile document holding it is refused at load time, the same
    nesting built inline in a request is refused before any call; 8 x 8 (73 calls) answers."""
    with pytest.raises(CompositeConfigError) as raised:
        explicit_profiles(_nest(3, 8))
    assert "profile 'l3': this topology makes 585 sub-calls" in str(raised.value)
    explicit_profiles(_nest(2, 8))
    with pytest.raises(litellm.BadRequestError) as raised:
        await litellm.acompletion(model=MOA, messages=user("q"), proposers=["composite/profile/l2"] * 8,
                                  **call_kwargs)
    assert "585 sub-calls" in str(raised.value)
    assert server.requests == []
    response = await asyncio.wait_for(litellm.acompletion(model="composite/profile/l2", messages=user("q"),
                                                          **call_kwargs), 60)
    assert response.choices[0].message.content
    assert len(server.requests) == 8 * 9 + 1


async def test_the_budget_holds_at_run_time_across_nested_composites(server, call_kwargs, explicit_profiles):
    """Fallbacks are not in the up-front count, so the engine counts every leaf call as it starts, and a
    nested composite spends its parent's budget: here the inner aggregator's fallback uses the last call,
    so the outer aggregator is refused (with a budget of its own, the inner would not have counted)."""
    server.set_model("p1", reply="one")
    server.set_model("agg", reply="outer answer")
    server.set_model("ibad", fail_status=500)
    server.set_model("igood", reply="inner answer")
    explicit_profiles({"profiles": {
        "inner": {"strategy": "moa", "topology": {
            "aggregator": {"model": "openai/ibad", "fallbacks": ["openai/igood"]},
            "proposers": ["openai/p1", "openai/p1", "openai/p1"], "settings": {"retries": 0}}},
        "outer": {"strategy": "moa", "topology": {
            "aggregator": "openai/agg", "proposers": ["composite/profile/inner", "openai/p1"],
            "settings": {"max_sub_calls": 6, "retries": 0, "grace_s": None}}}}})
    with pytest.raises(litellm.BadRequestError) as raised:
        await litellm.acompletion(model="composite/profile/outer", messages=user("q"), **call_kwargs)
    assert "would be leaf sub-call 7" in str(raised.value)
    assert not server.requests_for("agg")
    assert len(server.requests) == 6


# --------------------------------------------------------------------------- fair scheduling
@pytest.fixture()
def concurrency_limit():
    yield engine.set_max_concurrency
    engine.set_max_concurrency(engine._DEFAULT_MAX_CONCURRENCY)


async def test_a_small_request_is_not_starved_by_a_large_one(server, call_kwargs, concurrency_limit):
    """A request of 60 proposers fills the queue first; a 3-proposer request arriving after it gets slots
    as they free up instead of waiting behind all 60 (first come, first served: ~55 went before it)."""
    concurrency_limit(4)
    server.set_model("big", reply="big", latency_s=0.05)
    for name in ("s1", "s2", "s3", "agg", "sagg"):
        server.set_model(name, reply=name, latency_s=0.05)
    large = asyncio.ensure_future(litellm.acompletion(model=MOA, messages=user("large"),
                                                      proposers=["openai/big"] * 60, **call_kwargs))
    deadline = time.monotonic() + 10
    while len(server.requests_for("big")) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    submitted = time.monotonic()
    small = await asyncio.wait_for(litellm.acompletion(model="composite/moa/openai/sagg", messages=user("small"),
                                                       proposers=["openai/s1", "openai/s2", "openai/s3"],
                                                       **call_kwargs), 30)
    await asyncio.wait_for(large, 60)
    assert small.choices[0].message.content == "sagg"
    # big calls that started after the small request arrived and before its last proposer started
    small_started = max(r.started for r in server.requests if r.model in ("s1", "s2", "s3"))
    went_first = [r for r in server.requests_for("big") if submitted < r.started < small_started]
    assert len(went_first) <= 8, len(went_first)
    assert len(server.requests_for("big")) == 60
    assert server.max_in_flight <= 4


async def test_one_request_never_holds_every_slot(server, call_kwargs, concurrency_limit):
    concurrency_limit(4)
    server.set_model("p1", reply="x", latency_s=0.05)
    server.set_model("agg", reply="done")
    response = await asyncio.wait_for(litellm.acompletion(model=MOA, messages=user("q"),
                                                          proposers=["openai/p1"] * 12, **call_kwargs), 30)
    assert response.choices[0].message.content == "done"
    assert server.max_in_flight == 3  # three quarters of 4: a slot stays free for the next request


async def test_cancelled_waiters_give_their_turn_back(server, call_kwargs, concurrency_limit):
    """Requests cancelled while queued for a slot leave the limiter consistent: later requests still run."""
    concurrency_limit(2)
    server.set_model("p1", reply="x", latency_s=0.2)
    server.set_model("agg", reply="done")
    doomed = [asyncio.ensure_future(litellm.acompletion(model=MOA, messages=user("q"), proposers=["openai/p1"] * 6,
                                                        **call_kwargs)) for _ in range(3)]
    await asyncio.sleep(0.1)
    for task in doomed:
        task.cancel()
    await asyncio.gather(*doomed, return_exceptions=True)
    limiter = engine.limiter()
    assert limiter.in_use == 0 and not limiter.held and not limiter.waiting
    response = await asyncio.wait_for(litellm.acompletion(model=MOA, messages=user("q"), proposers=["openai/p1"],
                                                          **call_kwargs), 10)
    assert response.choices[0].message.content == "done"


# --------------------------------------------------------------------------- request deadline
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
async def test_a_hung_member_still_gets_an_answer_within_the_request_timeout(server, call_kwargs, stream):
    """timeout=5, one proposer of three hangs: the fan-out stops waiting for it when only the final
    stage's reserve is left, and the aggregator answers from the other two in time, degraded."""
    server.set_model("p1", reply="one")
    server.set_model("p2", reply="two")
    server.set_model("p3", hang=True)
    server.set_model("agg", reply="aggregated answer")
    started = time.monotonic()
    response = await litellm.acompletion(model=MOA, messages=user("q"), timeout=5, stream=stream,
                                         proposers=["openai/p1", "openai/p2", "openai/p3"], **call_kwargs)
    if stream:
        text, trace = "", None
        async for chunk in response:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                fields = getattr(chunk.choices[0].delta, "provider_specific_fields", None) or {}
                trace = fields.get("composite", trace)
    else:
        text, trace = response.choices[0].message.content, _trace(response)
    elapsed = time.monotonic() - started
    assert text == "aggregated answer"
    assert elapsed < 5
    assert trace["degraded"] is True
    assert trace["dropped_members"] == ["proposer openai/p3"]
    assert any("stopped waiting for proposer openai/p3" in note for note in trace["notes"])
    assert "Response C" not in server.requests_for("agg")[0].system_text  # only the two answers


async def test_an_httpx_timeout_sets_the_request_deadline(server, call_kwargs):
    """`timeout=httpx.Timeout(...)` bounds a composite request by its read part, like a float does: the
    hung proposer is dropped and the aggregator answers (LiteLLM passes the read part on as a float)."""
    server.set_model("p1", reply="one")
    server.set_model("p2", hang=True)
    server.set_model("agg", reply="aggregated answer")
    response = await asyncio.wait_for(litellm.acompletion(
        model=MOA, messages=user("q"), timeout=httpx.Timeout(60.0, read=5.0),
        proposers=["openai/p1", "openai/p2"], **call_kwargs), 60)
    assert response.choices[0].message.content == "aggregated answer"
    assert _trace(response)["dropped_members"] == ["proposer openai/p2"]


async def test_the_handler_called_directly_honours_an_httpx_timeout(server, call_kwargs):
    """Regression: the composite handler turned an `httpx.Timeout` into no deadline at all (only int/float
    counted), so a caller handing one over directly waited for a hung member forever; now its read part
    is the deadline, the rule of `composite_llm.timeouts` that local models and CLI agents share."""
    server.set_model("p1", reply="one")
    server.set_model("p2", hang=True)
    server.set_model("agg", reply="aggregated answer")
    response = await asyncio.wait_for(COMPOSITE_PROVIDER.acompletion(
        model="moa/openai/agg", messages=user("q"), api_base=call_kwargs["api_base"], custom_prompt_dict={},
        model_response=ModelResponse(), print_verbose=print, encoding=None, api_key=call_kwargs["api_key"],
        logging_obj=None, optional_params={"proposers": ["openai/p1", "openai/p2"]}, litellm_params={},
        timeout=httpx.Timeout(60.0, read=5.0)), 40)
    assert response.choices[0].message.content == "aggregated answer"
    assert _trace(response)["dropped_members"] == ["proposer openai/p2"]


async def test_the_final_reserve_is_configurable(server, call_kwargs):
    server.set_model("p1", reply="one")
    server.set_model("p2", hang=True)
    server.set_model("agg", reply="aggregated answer")
    started = time.monotonic()
    response = await litellm.acompletion(model=MOA, messages=user("q"), timeout=6, final_reserve_s=4,
                                         proposers=["openai/p1", "openai/p2"], **call_kwargs)
    assert response.choices[0].message.content == "aggregated answer"
    assert time.monotonic() - started < 4.5  # the fan-out ended about 2 s in, not at 5+ s
    assert _trace(response)["dropped_members"] == ["proposer openai/p2"]


async def test_without_a_quorum_at_the_planned_point_the_fan_out_keeps_waiting(server, call_kwargs):
    """The planned point only ends the wait for stragglers; a quorum not met yet is still waited for."""
    server.set_model("p1", reply="one", latency_s=2.5)
    server.set_model("p2", hang=True)
    server.set_model("agg", reply="aggregated answer")
    response = await litellm.acompletion(model=MOA, messages=user("q"), timeout=6, final_reserve_s=4.5,
                                         proposers=["openai/p1", "openai/p2"], **call_kwargs)
    assert response.choices[0].message.content == "aggregated answer"
    assert _trace(response)["dropped_members"] == ["proposer openai/p2"]


async def test_hung_reviewers_leave_the_chairman_time_to_answer(server, call_kwargs):
    """Council with timeout=5 whose two reviewers both hang (reviews are optional, review_quorum 0): the
    review stage is cut at the planned point and the chairman answers from the answers alone, in time."""
    for name in ("c1", "c2"):
        server.set_model(name, reply=f"answer from {name}")
    for name in ("r1", "r2"):
        server.set_model(name, hang=True)
    server.set_model("chair", reply="chairman answer")
    started = time.monotonic()
    response = await litellm.acompletion(model="composite/council/openai/chair", messages=user("q"), timeout=5,
                                         council=["openai/c1", "openai/c2"], reviewers=["openai/r1", "openai/r2"],
                                         **call_kwargs)
    assert response.choices[0].message.content == "chairman answer"
    assert time.monotonic() - started < 5
    assert sorted(_trace(response)["dropped_members"]) == ["reviewer openai/r1", "reviewer openai/r2"]


def test_fusion_and_cascade_count_every_call_they_make(explicit_profiles):
    """Each strategy counts its own calls (`count_sub_calls`). Before, fusion and cascade were counted as one
    call per model they name: fusion's two judge calls as one, a cascade's nested composite tier as one."""
    fusion = {"strategy": "fusion", "topology": {"panel": ["openai/p1", "openai/p2", "openai/p3"],
                                                 "judge": "openai/judge", "settings": {"max_sub_calls": 4}}}
    with pytest.raises(CompositeConfigError, match=r"profile 'fused': this topology makes 5 sub-calls"):
        explicit_profiles({"profiles": {"fused": fusion}})
    sampled = {"strategy": "self_consistency", "topology": {"model": "openai/m", "samples": 5}}
    cascade = {"strategy": "cascade", "topology": {
        "tiers": [{"model": "openai/cheap", "samples": 2}, "composite/profile/sampled"],
        "settings": {"max_sub_calls": 6}}}
    with pytest.raises(CompositeConfigError, match=r"profile 'cheap_first': this topology makes 7 sub-calls"):
        explicit_profiles({"profiles": {"sampled": sampled, "cheap_first": cascade}})
    cascade["topology"]["settings"]["max_sub_calls"] = 7
    fusion["topology"]["settings"]["max_sub_calls"] = 5
    explicit_profiles({"profiles": {"sampled": sampled, "cheap_first": cascade, "fused": fusion}})
