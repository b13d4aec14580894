"""Fusion (panel, private comparison, judged answer) and cascade (cheap tier first, escalate on doubt) on
the fake server: topology, prompts, framing, trace, streaming, tools to the judge only, escalation logic."""

from __future__ import annotations

import json

import litellm
import pytest

from composite_llm.strategies.framing import framed_spans, stated_nonce
from composite_llm.strategies.fusion import parse_comparison
from conftest import API_KEY, collect, user

FUSION = "composite/fusion/openai/judge"
PANEL = ["openai/p1", "openai/p2", "openai/p3"]
COMPARISON = {"consensus": ["two answers say 42"], "contradictions": ["Response B says 41"],
              "gaps": [], "unique_points": [], "errors": {"Response B": ["17+25 is not 41"]}}
FINAL = "The answer is 42."


def trace_of(response):
    return response.choices[0].message.provider_specific_fields["composite"]


def blocks(request):
    return framed_spans(request.last_user_text, stated_nonce(request.system_text))


def is_comparison_request(request) -> bool:
    return "compare the answers" in request.system_text


def judge_reply(request):
    return json.dumps(COMPARISON) if is_comparison_request(request) else FINAL


def script_fusion(server, replies=("42", "41", "42")):
    for model, reply in zip(("p1", "p2", "p3"), replies):
        server.set_model(model, reply=f"I think it is {reply}")
    server.set_model("judge", reply=judge_reply)


# =========================================================================== fusion
def test_fusion_topology_prompts_and_trace(server, call_kwargs):
    script_fusion(server)
    response = litellm.completion(model=FUSION, messages=user("What is 17 + 25?"), panel=PANEL,
                                  criteria="Prioritize arithmetic correctness.", **call_kwargs)
    assert response.choices[0].message.content == FINAL
    # the panel answers the conversation as asked, nothing else
    for model in ("p1", "p2", "p3"):
        (request,) = server.requests_for(model)
        assert request.messages == user("What is 17 + 25?")
    compare, answer = server.requests_for("judge")
    # 1. the private comparison: framed, anonymous, shuffled answers; our instructions in the system message
    assert is_comparison_request(compare) and not is_comparison_request(answer)
    shown = blocks(compare)
    assert sorted(label for label, _ in shown) == ["Response A", "Response B", "Response C"]
    assert sorted(body for _, body in shown) == ["I think it is 41", "I think it is 42", "I think it is 42"]
    assert "p1" not in compare.all_text and "openai/" not in compare.all_text
    assert "Prioritize arithmetic correctness." in compare.system_text
    assert '"consensus"' in compare.last_user_text
    # 2. the answer: the same framed answers plus the judge's own comparison, under a fresh nonce
    spans = dict(blocks(answer))
    assert set(spans) == {"Response A", "Response B", "Response C", "Your comparison"}
    assert json.loads(spans["Your comparison"]) == COMPARISON
    assert stated_nonce(answer.system_text) != stated_nonce(compare.system_text)
    assert "Prioritize arithmetic correctness." in answer.system_text
    # the comparison is in the trace, never in the content
    trace = trace_of(response)
    fusion = trace["details"]["fusion"]
    assert fusion["comparison"] == COMPARISON and fusion["comparison_parsed"] is True
    assert sorted(fusion["panel"].values()) == PANEL
    assert [r["stage"] for r in trace["sub_calls"]][-2:] == ["comparison", "answer"]
    reasoning = response.choices[0].message.reasoning_content
    assert "[comparison]" in reasoning and "17+25 is not 41" in reasoning
    assert "consensus" not in response.choices[0].message.content
    # usage is the sum over every sub-call (3 panelists + 2 judge calls)
    assert len(server.requests) == 5
    assert response.usage.prompt_tokens == sum(r.prompt_tokens for r in server.requests)


def test_fusion_streams_the_answer_and_keeps_the_comparison_out_of_content(server, call_kwargs):
    script_fusion(server)
    content, reasoning, usage = collect(litellm.completion(model=FUSION, messages=user("q"), panel=PANEL,
                                                           stream=True, stream_options={"include_usage": True},
                                                           **call_kwargs))
    assert content == FINAL
    assert "consensus" in reasoning and "consensus" not in content
    compare, answer = server.requests_for("judge")
    assert not compare.stream and answer.stream  # only the answer is streamed to the client
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in server.requests)


def test_fusion_tools_go_to_the_judge_answer_only(server, call_kwargs):
    script_fusion(server)
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    server.set_model("judge", reply=judge_reply, tool_calls=[call])
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    response = litellm.completion(model=FUSION, messages=user("q"), panel=PANEL, tools=tools, max_tokens=50,
                                  **call_kwargs)
    for model in ("p1", "p2", "p3"):
        body = server.requests_for(model)[0].body
        assert "tools" not in body and "max_tokens" not in body
    compare, answer = server.requests_for("judge")
    assert "tools" not in compare.body and "max_tokens" not in compare.body
    assert answer.body["tools"][0]["function"]["name"] == "lookup" and answer.body["max_tokens"] == 50
    assert response.choices[0].message.tool_calls[0].function.name == "lookup"
    assert response.choices[0].finish_reason == "tool_calls"
    assert any("tools were offered to the judge's answer only" in n for n in trace_of(response)["notes"])


def test_fusion_gateway_shape_and_profile(server, call_kwargs, explicit_profiles):
    """LiteLLM fusion-1's `fusion={models, judge: {model, criteria}}` inline, and the same as a profile."""
    script_fusion(server)
    gateway = {"models": PANEL[:2], "judge": {"model": "openai/judge", "criteria": "Be terse."}}
    response = litellm.completion(model=FUSION, messages=user("q"), fusion=gateway, **call_kwargs)
    assert response.choices[0].message.content == FINAL
    assert len(server.requests_for("p3")) == 0 and len(server.requests_for("judge")) == 2
    assert all("Be terse." in r.system_text for r in server.requests_for("judge"))
    server.clear_requests()
    explicit_profiles({
        "providers": {"fake": {"litellm_params": {"api_base": server.base_url, "api_key": API_KEY}}},
        "profiles": {"fusion_fake": {"strategy": "fusion", "topology": {
            "panel": [{"model": m, "provider": "fake"} for m in PANEL],
            "judge": {"model": "openai/judge", "provider": "fake", "criteria": "Be terse."},
            "settings": {"shuffle_seed": 3}}}},
    })
    response = litellm.completion(model="composite/profile/fusion_fake", messages=user("q"))
    assert response.choices[0].message.content == FINAL
    assert trace_of(response)["details"]["fusion"]["criteria"] == "Be terse."


def test_fusion_failed_panelist_never_reaches_the_judge_and_one_call_mode(server, call_kwargs):
    script_fusion(server)
    server.set_model("p3", fail_status=500, fail_message="secret-ish upstream text")
    response = litellm.completion(model=FUSION, messages=user("q"), panel=PANEL, comparison=False, **call_kwargs)
    (answer,) = server.requests_for("judge")  # comparison: false -> the judge answers in one call
    assert len(blocks(answer)) == 2 and "secret-ish" not in answer.all_text
    assert response.choices[0].message.content == FINAL
    assert any("openai/p3" in m for m in trace_of(response)["failed_members"])


def test_fusion_unparsable_comparison_is_kept_as_text(server, call_kwargs):
    script_fusion(server)
    server.set_model("judge", reply=lambda r: "They mostly agree on 42." if is_comparison_request(r) else FINAL)
    response = litellm.completion(model=FUSION, messages=user("q"), panel=PANEL, **call_kwargs)
    fusion = trace_of(response)["details"]["fusion"]
    assert fusion["comparison_parsed"] is False and fusion["comparison"] == "They mostly agree on 42."
    assert response.choices[0].message.content == FINAL


@pytest.mark.parametrize("kwargs, message", [
    ({"panel": [f"openai/p{i}" for i in range(9)]}, "1 to 8"),
    ({}, "panel"),
    ({"panel": PANEL, "models": PANEL}, "not both"),
])
def test_fusion_bad_topology_is_a_clear_error(server, call_kwargs, kwargs, message):
    with pytest.raises(litellm.BadRequestError, match=message):
        litellm.completion(model=FUSION, messages=user("q"), **kwargs, **call_kwargs)
    assert server.requests == []


def test_parse_comparison_finds_fenced_json():
    text = "Here it is:\n```json\n" + json.dumps(COMPARISON) + "\n```"
    assert parse_comparison(text) == COMPARISON
    assert parse_comparison('{"unrelated": 1}') is None


# =========================================================================== cascade
CASCADE = "composite/cascade/openai/big"
CHEAP3 = {"model": "openai/cheap", "samples": 3, "temperature": 0.7}


def by_sample(replies):
    """One reply per concurrent sample, in arrival order."""
    state = {"n": 0}

    def reply(request):
        state["n"] += 1
        return replies[(state["n"] - 1) % len(replies)]
    return reply


def test_cascade_tier_one_answers_when_its_samples_agree(server, call_kwargs):
    server.set_model("cheap", reply="The answer is 12.")
    server.set_model("big", reply="Big says 12")
    response = litellm.completion(model=CASCADE, messages=user("q"), tiers=[CHEAP3], **call_kwargs)
    assert response.choices[0].message.content == "The answer is 12."
    assert len(server.requests_for("cheap")) == 3 and server.requests_for("big") == []
    assert all(r.body["temperature"] == 0.7 for r in server.requests_for("cheap"))
    cascade = trace_of(response)["details"]["cascade"]
    assert cascade["answered_by"] == 1 and cascade["escalations"] == 0
    assert cascade["tiers"][0]["accepted"] is True and "share 1.00" in cascade["tiers"][0]["reason"]
    assert "tier 1 (openai/cheap): answers" in response.choices[0].message.reasoning_content


def test_cascade_escalates_on_disagreement_and_streams_the_last_tier(server, call_kwargs):
    server.set_model("cheap", reply=by_sample(["It is 12", "It is 13", "It is 12"]))
    server.set_model("big", reply="The big model says 12.")
    content, reasoning, usage = collect(litellm.completion(model=CASCADE, messages=user("q"), tiers=[CHEAP3],
                                                           stream=True,
                                                           stream_options={"include_usage": True}, **call_kwargs))
    assert content == "The big model says 12."
    assert server.requests_for("big")[0].stream and server.requests_for("big")[0].messages == user("q")
    assert "tier 1 (openai/cheap): escalates" in reasoning and "2 of 3" in reasoning
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in server.requests)


def test_cascade_threshold_per_tier_and_trace(server, call_kwargs):
    server.set_model("cheap", reply=by_sample(["It is 12", "It is 13", "It is 12"]))
    server.set_model("big", reply="big")
    tiers = [{**CHEAP3, "threshold": 0.6}]
    response = litellm.completion(model=CASCADE, messages=user("q"), tiers=tiers, **call_kwargs)
    assert response.choices[0].message.content == "It is 12" and server.requests_for("big") == []
    tier = trace_of(response)["details"]["cascade"]["tiers"][0]
    assert tier["leader"] == "12" and tier["share"] == pytest.approx(2 / 3, abs=1e-3)


def test_cascade_judge_confidence_gates_tier_one(server, call_kwargs):
    server.set_model("cheap", reply="The answer is 12.")
    server.set_model("big", reply="big answer")
    server.set_model("verifier", reply="Checked it: wrong carry.\nSCORE: 3")
    tiers = [{**CHEAP3, "judge": "openai/verifier", "min_confidence": 0.7}]
    response = litellm.completion(model=CASCADE, messages=user("q"), tiers=tiers, **call_kwargs)
    assert response.choices[0].message.content == "big answer"
    (check,) = server.requests_for("verifier")
    assert [label for label, _ in blocks(check)] == ["Proposed answer"]
    tier = trace_of(response)["details"]["cascade"]["tiers"][0]
    assert tier["confidence"] == 0.3 and tier["accepted"] is False and "0.30 < min_confidence" in tier["reason"]
    server.clear_requests()
    server.set_model("verifier", reply="Looks right.\nSCORE: 9")
    response = litellm.completion(model=CASCADE, messages=user("q"), tiers=tiers, **call_kwargs)
    assert response.choices[0].message.content == "The answer is 12." and server.requests_for("big") == []


def test_cascade_failed_tier_escalates_and_last_tier_can_be_a_composite(server, explicit_profiles):
    """cheap (3 samples, all failing) -> a fusion profile as the last tier."""
    script_fusion(server)
    server.set_model("cheap", fail_status=500)
    provider = {"litellm_params": {"api_base": server.base_url, "api_key": API_KEY}}
    explicit_profiles({
        "providers": {"fake": provider},
        "profiles": {
            "fusion_fake": {"strategy": "fusion", "topology": {
                "panel": [{"model": m, "provider": "fake"} for m in PANEL],
                "judge": {"model": "openai/judge", "provider": "fake"}}},
            "cascade_fake": {"strategy": "cascade", "topology": {"tiers": [
                {"model": "openai/cheap", "provider": "fake", "samples": 3, "temperature": 0.7},
                {"model": "composite/profile/fusion_fake"}]}},
        },
    })
    response = litellm.completion(model="composite/profile/cascade_fake", messages=user("q"))
    assert response.choices[0].message.content == FINAL
    cascade = trace_of(response)["details"]["cascade"]
    assert cascade["answered_by"] == 2 and cascade["tiers"][0]["reason"] == "every sample failed"
    assert len(server.requests_for("judge")) == 2


def test_cascade_sampled_last_tier_votes(server, explicit_profiles):
    """A last tier with several samples answers by majority (a profile: inline, the last tier is the
    model string's model, one call)."""
    server.set_model("cheap", reply=by_sample(["1", "2", "3"]))
    server.set_model("mid", reply=by_sample(["It is 7", "It is 8", "It is 7"]))
    fake = {"api_base": server.base_url, "api_key": API_KEY}
    explicit_profiles({"profiles": {"cascade_vote": {"strategy": "cascade", "topology": {"tiers": [
        {"model": {"model": "openai/cheap", "params": fake}, "samples": 3, "temperature": 0.7},
        {"model": {"model": "openai/mid", "params": fake}, "samples": 3, "temperature": 0.5}]}}}})
    response = litellm.completion(model="composite/profile/cascade_vote", messages=user("q"))
    assert response.choices[0].message.content == "It is 7"
    cascade = trace_of(response)["details"]["cascade"]
    assert cascade["answered_by"] == 2 and cascade["escalations"] == 1
    assert cascade["tiers"][0]["accepted"] is False and cascade["tiers"][1]["reason"] == "last tier: majority answer"


@pytest.mark.parametrize("tiers, message", [
    (["openai/cheap"], "never escalates"),
    ([{"model": "openai/cheap", "samples": 2, "temperatures": [0.1]}], "temperatures has 1"),
])
def test_cascade_bad_topology_is_a_clear_error(server, call_kwargs, tiers, message):
    with pytest.raises(litellm.BadRequestError, match=message):
        litellm.completion(model=CASCADE, messages=user("q"), tiers=tiers, **call_kwargs)
    assert server.requests == []


def test_eval_reports_the_cascade_escalation_rate(server, tmp_path):
    """Through the eval runner: the trace's `answered_by` reaches the result rows and the summary."""
    import asyncio

    from composite_llm.eval import report
    from composite_llm.eval.baselines import ModelSpec
    from composite_llm.eval.runner import RunOptions, read_results, run_eval
    from composite_llm.eval.tasks import Task

    def cheap(request):  # agrees on question 1, not on question 2
        return "It is 5" if "q1" in request.all_text else f"It is {request.body['temperature'] * 10:.0f}"

    server.set_model("cheap", reply=cheap)
    server.set_model("big", reply="It is 5")
    tiers = [{"model": "openai/cheap", "samples": 3, "temperatures": [0.1, 0.2, 0.3]}]
    spec = ModelSpec("cascade", CASCADE, kwargs={"tiers": tiers}, kind="composite")
    tasks = [Task(id=f"q{i}", prompt=f"q{i}", expected="5", scorer="numeric") for i in (1, 2)]
    results = tmp_path / "results.jsonl"
    options = RunOptions(concurrency=1, params={"api_base": server.base_url, "api_key": API_KEY}, progress=False)
    asyncio.run(run_eval([spec], tasks, results, options))
    rows = read_results(results)
    assert sorted(r["composite"]["answered_by_tier"] for r in rows) == [1, 2]
    (summary,) = report.summarize(rows)
    assert summary.escalation_rate == 0.5 and summary.correct == 2
