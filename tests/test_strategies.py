"""Self-consistency (adaptive, universal), best-of-n (pointwise, pairwise) and debate on the fake server:
prompts, parallelism, vote logic and ties, extraction, early stops, judges, failures, every entry point."""

from __future__ import annotations

import re
from pathlib import Path

import litellm
import pytest

from composite_llm import CompositeConfigError, load_profiles
from composite_llm.strategies.answers import (
    extract_choice,
    extract_json_field,
    extract_last_line,
    extract_numeric,
    extract_regex,
    parse_picked_label,
    parse_score,
    parse_winner,
    tally,
)
from composite_llm.strategies.framing import framed_spans, stated_nonce
from conftest import API_KEY, collect, user

REPO = Path(__file__).resolve().parents[1]
SC = "composite/self-consistency/openai/sc"
TEMPS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def without_nonces(text: str) -> str:
    """The text with the framing's random hex nonces masked: a nonce may contain "42", "c1" or "d1" by chance."""
    return re.sub(r"\b[0-9a-f]{16}\b", "<nonce>", text)


def by_temperature(replies):
    """A reply per sample, keyed by the sample's temperature (samples run concurrently, in any order)."""
    return lambda request: replies[TEMPS.index(request.body["temperature"])]


def trace_of(response):
    return response.choices[0].message.provider_specific_fields["composite"]


def blocks(request):
    """The labelled candidates a judge request shows, in the order shown: the real frames, those whose
    markers carry the nonce the system message states."""
    return framed_spans(request.last_user_text, stated_nonce(request.system_text))


async def acollect(stream):
    content, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            content.append(chunk.choices[0].delta.content or "")
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    return "".join(content), usage


def assert_usage_is_sum(server, usage):
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in server.requests)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# =========================================================================== extraction and voting
@pytest.mark.parametrize("text, expected", [
    ("The answer is 42.", "42"),
    ("17*23 = 391", "391"),
    ("So 5-3=2", "2"),
    ("12 - 5 = 7", "7"),
    ("x = -7", "-7"),
    ("\u22123 degrees", "-3"),
    ("It costs $1,234.50 in total", "1234.5"),
    ("#### 1,000", "1000"),
    ("\\boxed{12}", "12"),
    ("Answer: 3/6", "0.5"),
    ("Answer: 1/3", "1/3"),
    ("value .5", "0.5"),
    ("2.50", "2.5"),
    ("-0.0", "0"),
    ("first 41, then the answer is 42 apples, not 43", "42"),
    ("Answer: 12 - 5 = 7", "7"),
    ("The answer is:\n 99", "99"),
    ("Step 1: add 3 and 4. Step 2: we get 7", "7"),
    ("version 1.2.3", "1.2"),
    ("1,2,3", "3"),
    ("no number here", None),
    ("", None),
])
def test_numeric_extraction(text, expected):
    assert extract_numeric(text) == expected


def test_numeric_equivalents_vote_together():
    keys = [extract_numeric(t) for t in ("It is 1,000.", "1000.0", "The answer is 1000", "999")]
    table = tally(keys)
    assert table.leader.answer == "1000" and table.leader.count == 3


@pytest.mark.parametrize("text, expected", [
    ("The answer is (b)", "B"),
    ("B", "B"),
    ("(C)", "C"),
    ("**Answer: E**", "E"),
    ("A is tempting, but the answer is D.", "D"),
    ("A cat sat. So C", "C"),
    ("answer is a bit tricky; (B) fits", "B"),
    ("none of them", None),
])
def test_choice_extraction(text, expected):
    assert extract_choice(text) == expected


def test_text_extractions():
    assert extract_last_line("Thinking...\n**Answer: Paris.**\n\n") == "paris"
    assert extract_last_line("x\n  Final answer - PARIS  ", case_sensitive=True) == "PARIS"
    assert extract_regex("X=5 then X=7", r"X=(\d+)") == "7"
    assert extract_regex("city: Rome", r"city: (?P<answer>\w+)") == "rome"
    assert extract_regex("nothing", r"X=(\d+)") is None
    assert extract_json_field('Here:\n```json\n{"answer": 42.0}\n```', "answer") == "42"
    assert extract_json_field('{"result": {"items": ["a", " Paris "]}}', "result.items.1") == "paris"
    assert extract_json_field('{"a": 1} then {"answer": true}', "answer") == "true"
    assert extract_json_field("not json", "answer") is None


def test_tally_orders_ties_by_earliest_voter_and_knows_when_decided():
    table = tally(["8", "7", None, "7", "8"])
    assert [r.answer for r in table.tied] == ["8", "7"]  # 2 each: "8" came first
    assert table.abstained == [2] and table.total == 5 and table.leader_share == pytest.approx(0.4)
    assert tally(["5", "5", "5", "4"]).decided(1) and not tally(["5", "5", "5", "4"]).decided(2)
    assert not tally([None, None]).rows and not tally([None]).decided(0)


def test_judge_reply_parsing():
    assert parse_score("Solid work.\nSCORE: 8") == 8
    assert parse_score("score = 7/10") == 7
    assert parse_score("SCORE: 85") is None and parse_score("no score") is None
    assert parse_score("I would rate it 6 out of 10. Maybe 7/10.") == 7  # no SCORE line: the last n/10
    assert parse_score("SCORE: 4\nthough others say 9/10") == 4  # a SCORE line wins
    assert parse_winner("B is better.\nWINNER: **A**") == "A"
    assert parse_winner("WINNER: Response B") == "B" and parse_winner("tie") is None
    labels = ["Response A", "Response B", "Response C"]
    assert parse_picked_label("The most consistent response is Response C.", labels) == ("Response C", "marker")
    assert parse_picked_label("I'd go with Response B", labels) == ("Response B", "only label named")
    assert parse_picked_label("Response A or Response B", labels) == (None, "unparsed")
    assert parse_picked_label("The most consistent response is Response Q", labels)[0] is None


# =========================================================================== self-consistency
def test_self_consistency_majority_returns_earliest_winning_sample_verbatim(server, call_kwargs):
    replies = ["Let me think. The answer is 41.", "Adding up... the answer is 42.", "**42**", "It is 42, surely.",
               "43"]
    server.set_model("sc", reply=by_temperature(replies), latency_s=0.2)
    response = litellm.completion(model=SC, messages=user("What is 6*7?"), samples=5, temperatures=TEMPS[:5],
                                  **call_kwargs)
    assert response.choices[0].message.content == "Adding up... the answer is 42."
    assert response.model == SC
    requests = server.requests_for("sc")
    assert len(requests) == 5
    assert max(r.started for r in requests) < min(r.finished for r in requests)  # one parallel wave
    for request in requests:  # samples see the conversation untouched
        assert request.messages == [{"role": "user", "content": "What is 6*7?"}]
    trace = trace_of(response)
    sc = trace["details"]["self_consistency"]
    assert sc["votes"][0] == {"answer": "42", "count": 3, "voters": ["#2", "#3", "#4"]}
    assert sc["winner"] == "42" and sc["winner_sample"] == "#2" and sc["samples_spent"] == 5
    assert sc["decided_by"] == "majority vote" and sc["tie"] is False
    # sub_calls are in completion order (parallel samples may finish in any order)
    assert sorted(c["extra"]["answer"] for c in trace["sub_calls"]) == ["41", "42", "42", "42", "43"]
    assert "42: 3 of 5" in response.choices[0].message.reasoning_content
    assert_usage_is_sum(server, response.usage)


@pytest.mark.parametrize("replies, winner", [
    (["7", "8", "8", "7"], "7"),  # 2-2: sample #1 said 7
    (["8", "7", "7", "8"], "8"),  # the rule is the earliest sample, not the value
])
def test_self_consistency_tie_goes_to_earliest_sample(server, call_kwargs, replies, winner):
    server.set_model("sc", reply=by_temperature([f"I get {r}" for r in replies]))
    response = litellm.completion(model=SC, messages=user("q"), samples=4, temperatures=TEMPS[:4], **call_kwargs)
    assert response.choices[0].message.content == f"I get {winner}"
    trace = trace_of(response)
    assert trace["details"]["self_consistency"]["tie"] is True
    assert any("rule 'first'" in note and "#1" in note for note in trace["notes"])
    assert "rule 'first'" in response.choices[0].message.reasoning_content


def test_adaptive_stops_after_first_wave_when_unanimous(server, call_kwargs):
    server.set_model("sc", reply="The answer is 42.")
    response = litellm.completion(model=SC, messages=user("q"), samples=9, wave_size=3, stop_share=0.67,
                                  **call_kwargs)
    assert len(server.requests) == 3
    sc = trace_of(response)["details"]["self_consistency"]
    assert sc["samples_spent"] == 3 and sc["samples_max"] == 9 and len(sc["waves"]) == 1
    assert "early stop after wave 1" in sc["stop_reason"]
    assert "spent 3 of 9 samples" in response.choices[0].message.reasoning_content
    assert_usage_is_sum(server, response.usage)


def test_adaptive_keeps_sampling_below_the_threshold(server, call_kwargs):
    # wave 1: 1,2,3 (share 1/3); wave 2: 2,2,2 (4/6 = 0.667 < 0.67, and 3 samples left could still tie)
    answers = ["1", "2", "3", "2", "2", "2", "3", "3", "3"]
    server.set_model("sc", reply=by_temperature(answers))
    response = litellm.completion(model=SC, messages=user("q"), samples=9, wave_size=3, stop_share=0.67,
                                  temperatures=TEMPS, **call_kwargs)
    assert len(server.requests) == 9
    sc = trace_of(response)["details"]["self_consistency"]
    assert [w["leader_share"] for w in sc["waves"]] == [pytest.approx(1 / 3, abs=1e-3), pytest.approx(4 / 6, abs=1e-3),
                                                        pytest.approx(4 / 9, abs=1e-3)]
    assert sc["winner"] == "2" and response.choices[0].message.content == "2"
    stages = [c["stage"] for c in trace_of(response)["sub_calls"]]
    assert stages[0] == "samples · wave 1/3" and stages[-1] == "samples · wave 3/3"


def test_adaptive_stops_when_the_winner_cannot_change(server, call_kwargs):
    server.set_model("sc", reply="5")
    response = litellm.completion(model=SC, messages=user("q"), samples=9, wave_size=3, **call_kwargs)
    assert len(server.requests) == 6  # after 6 of 9, 6 votes > 0 + 3 left
    assert "cannot change" in trace_of(response)["details"]["self_consistency"]["stop_reason"]
    server.clear_requests()
    litellm.completion(model=SC, messages=user("q"), samples=9, wave_size=3, stop_when_decided=False, **call_kwargs)
    assert len(server.requests) == 9


def test_adaptive_waves_run_in_parallel_within_and_in_sequence_across(server, call_kwargs):
    server.set_model("sc", reply=by_temperature(["1", "2", "3", "4", "5", "6"]), latency_s=0.15)
    litellm.completion(model=SC, messages=user("q"), samples=6, wave_size=3, temperatures=TEMPS[:6], **call_kwargs)
    reqs = sorted(server.requests, key=lambda r: r.started)
    first, second = reqs[:3], reqs[3:]
    assert max(r.started for r in first) < min(r.finished for r in first)
    assert max(r.started for r in second) < min(r.finished for r in second)
    assert min(r.started for r in second) >= max(r.finished for r in first) - 0.01


def test_min_samples_before_an_early_stop(server, call_kwargs):
    server.set_model("sc", reply="9")
    response = litellm.completion(model=SC, messages=user("q"), samples=6, wave_size=1, stop_share=0.5,
                                  min_samples=3, **call_kwargs)
    assert len(server.requests) == 3
    assert trace_of(response)["details"]["self_consistency"]["samples_spent"] == 3


def test_failed_sample_is_excluded_from_the_vote(server, call_kwargs):
    server.set_model("sc", reply="42", fail_status=400, fail_times=1)
    response = litellm.completion(model=SC, messages=user("q"), samples=5, **call_kwargs)
    trace = trace_of(response)
    sc = trace["details"]["self_consistency"]
    assert sc["samples_spent"] == 5 and sc["samples_answered"] == 4
    assert sc["votes"][0]["count"] == 4 and trace["degraded"]
    assert len(trace["failed_members"]) == 1


def test_all_samples_failed_raises_and_stops_sampling(server, call_kwargs):
    server.set_model("sc", fail_status=503, fail_message="overloaded")
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model=SC, messages=user("q"), samples=9, wave_size=3, stop_share=0.67, **call_kwargs)
    assert "overloaded" in str(info.value) and "0 of 3" in str(info.value)
    assert len(server.requests) == 6  # wave 1 only: 3 samples x (1 try + 1 retry), no waves 2 and 3


def test_rate_limited_samples_raise_rate_limit(server, call_kwargs):
    server.set_model("sc", fail_status=429, retry_after="0")
    with pytest.raises(litellm.RateLimitError):
        litellm.completion(model=SC, messages=user("q"), samples=2, **call_kwargs)


def _consistency_judge(marker):
    """A judge that picks the block whose text contains `marker`."""
    def reply(request):
        for label, text in blocks(request):
            if marker in text:
                return f"The most consistent response is {label}.\nIt agrees with most others."
        return "I cannot tell."
    return reply


def test_universal_self_consistency_judge_picks_verbatim_and_anonymous(server, call_kwargs):
    replies = ["Paris is the capital.", "It's Paris (MARK).", "Lyon, I believe.", "Paris."]
    server.set_model("sc", reply=by_temperature(replies))
    server.set_model("judge", reply=_consistency_judge("MARK"))
    response = litellm.completion(model=SC, messages=user("Capital of France?"), samples=4, temperatures=TEMPS[:4],
                                  judge="openai/judge", extract="free", **call_kwargs)
    assert response.choices[0].message.content == "It's Paris (MARK)."
    judge_request = server.requests_for("judge")[0]
    shown = blocks(judge_request)
    assert sorted(text for _, text in shown) == sorted(replies)
    assert [label for label, _ in shown] == ["Response A", "Response B", "Response C", "Response D"]
    assert "Capital of France?" in judge_request.all_text  # the judge sees the question
    assert "openai" not in judge_request.all_text and "sc #" not in judge_request.all_text
    judge = trace_of(response)["details"]["judge"]
    assert judge["parsed_by"] == "marker" and set(judge["shown"].values()) == {"#1", "#2", "#3", "#4"}
    assert trace_of(response)["details"]["self_consistency"]["winner_sample"] == "#2"


def test_judge_sees_samples_in_shuffled_orders(server, call_kwargs):
    replies = [f"answer variant {i}" for i in range(6)]
    server.set_model("sc", reply=by_temperature(replies))
    server.set_model("judge", reply=_consistency_judge("variant 0"))
    orders = set()
    for seed in range(4):
        server.clear_requests()
        response = litellm.completion(model=SC, messages=user("q"), samples=6, temperatures=TEMPS[:6], extract="free",
                                      judge="openai/judge", shuffle_seed=seed, **call_kwargs)
        assert response.choices[0].message.content == "answer variant 0"
        orders.add(tuple(text for _, text in blocks(server.requests_for("judge")[0])))
    assert len(orders) > 1


def test_no_extractable_answer_goes_to_the_judge_or_the_earliest_sample(server, call_kwargs):
    replies = ["no idea", "perhaps blue MARK", "maybe red"]
    server.set_model("sc", reply=by_temperature(replies))
    server.set_model("judge", reply=_consistency_judge("MARK"))
    response = litellm.completion(model=SC, messages=user("q"), samples=3, temperatures=TEMPS[:3],
                                  judge="openai/judge", **call_kwargs)
    assert response.choices[0].message.content == "perhaps blue MARK"
    assert "no sample had an extractable answer" in trace_of(response)["details"]["judge"]["reason"]
    server.clear_requests()
    response = litellm.completion(model=SC, messages=user("q"), samples=3, temperatures=TEMPS[:3], **call_kwargs)
    assert response.choices[0].message.content == "no idea"
    assert any("earliest sample" in n for n in trace_of(response)["notes"])


def test_tie_break_by_judge_shows_only_the_tied_samples(server, call_kwargs):
    replies = ["It is 7", "It is 8 MARK", "It is 7", "It is 8", "It is 9"]
    server.set_model("sc", reply=by_temperature(replies))
    server.set_model("judge", reply=_consistency_judge("MARK"))
    response = litellm.completion(model=SC, messages=user("q"), samples=5, temperatures=TEMPS[:5],
                                  judge="openai/judge", tie_break="judge", **call_kwargs)
    assert response.choices[0].message.content == "It is 8 MARK"
    shown = sorted(text for _, text in blocks(server.requests_for("judge")[0]))
    assert shown == sorted(replies[:4])  # the 9 is not in the tie


def test_judge_failure_falls_back_to_the_rule(server, call_kwargs):
    server.set_model("sc", reply=by_temperature(["first free answer", "second free answer"]))
    server.set_model("judge", fail_status=400)
    response = litellm.completion(model=SC, messages=user("q"), samples=2, temperatures=TEMPS[:2], extract="free",
                                  judge="openai/judge", **call_kwargs)
    assert response.choices[0].message.content == "first free answer"
    trace = trace_of(response)
    assert trace["degraded"] and any("judge failed" in n for n in trace["notes"])


def test_answer_params_reach_samples_but_not_the_judge(server, call_kwargs):
    server.set_model("sc", reply=by_temperature(["a", "b"]))
    server.set_model("judge", reply="The most consistent response is Response A")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    response = litellm.completion(model=SC, messages=user("q"), samples=2, temperatures=TEMPS[:2], extract="free",
                                  judge="openai/judge", max_tokens=33, tools=tools, **call_kwargs)
    for request in server.requests_for("sc"):
        assert request.body["max_tokens"] == 33 and "tools" not in request.body
    assert "max_tokens" not in server.requests_for("judge")[0].body
    assert any("tools were not offered" in n for n in trace_of(response)["notes"])


@pytest.mark.parametrize("kwargs, needle", [
    ({"extract": "free"}, "needs a judge"),
    ({"tie_break": "judge"}, "needs a judge"),
    ({"stop_share": 0.6}, "needs settings.wave_size"),
    ({"wave_size": 9}, "exceeds samples"),
    ({"extract": "regex"}, "needs settings.pattern"),
    ({"extract": "regex", "pattern": "(unclosed"}, "not a valid regular expression"),
    ({"extract": "json_field"}, "needs settings.field"),
    ({"extract": "numeric", "field": "x"}, "only used with extract=json_field"),
    ({"extract": "spelling"}, "extract"),
    ({"quorum": 6}, "exceeds the 5 members"),
    ({"temperatures": [0.1]}, "temperatures has 1 values"),
])
def test_self_consistency_settings_errors(server, call_kwargs, kwargs, needle):
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model=SC, messages=user("q"), samples=5, **kwargs, **call_kwargs)
    assert needle in str(info.value)
    assert not server.requests


def test_regex_and_json_extraction_end_to_end(server, call_kwargs):
    server.set_model("sc", reply=by_temperature(['{"city": "Rome"}', 'I say {"city": "Paris"}', '{"city": "paris"}']))
    response = litellm.completion(model=SC, messages=user("q"), samples=3, temperatures=TEMPS[:3],
                                  settings={"extract": "json_field", "field": "city"}, **call_kwargs)
    assert response.choices[0].message.content == 'I say {"city": "Paris"}'
    server.set_model("sc", reply=by_temperature(["CODE-7", "code-9", "CODE-9"]))
    response = litellm.completion(model=SC, messages=user("q"), samples=3, temperatures=TEMPS[:3],
                                  extract="regex", pattern=r"CODE-(\d)", case_sensitive=True, **call_kwargs)
    assert response.choices[0].message.content == "CODE-7"  # case-sensitive: 1 vote each, first wins


# =========================================================================== best-of-n
CANDIDATES = ["openai/c1", "openai/c2", "openai/c3", "openai/c4"]
BON = "composite/best-of-n/openai/judge"


def _candidates(server, qualities, latency=0.0):
    for name, quality in zip(("c1", "c2", "c3", "c4"), qualities):
        server.set_model(name, reply=f"draft of quality {quality}", latency_s=latency)


def _scoring_judge(request):
    found = re.search(r"quality (\d+)", request.last_user_text)
    return f"Reasonable.\nSCORE: {found.group(1) if found else 'none'}"


def _pairwise_judge(request):
    shown = dict(blocks(request))
    a = int(re.search(r"quality (\d+)", shown["Response A"]).group(1))
    b = int(re.search(r"quality (\d+)", shown["Response B"]).group(1))
    return "Comparing both.\nWINNER: " + ("A" if a >= b else "B")


def test_best_of_n_pointwise_scores_in_parallel_and_returns_best_verbatim(server, call_kwargs):
    _candidates(server, [6, 9, 3, 7])
    server.set_model("judge", reply=_scoring_judge, latency_s=0.2)
    response = litellm.completion(model=BON, messages=user("Write a haiku"), candidates=CANDIDATES, **call_kwargs)
    assert response.choices[0].message.content == "draft of quality 9"
    judges = server.requests_for("judge")
    assert len(judges) == 4
    assert max(r.started for r in judges) < min(r.finished for r in judges)
    for request in judges:
        assert request.last_user_text.count("draft of quality") == 1  # one candidate per judge call
        assert "Write a haiku" in request.all_text
        shown = without_nonces(request.all_text)
        assert "openai" not in shown and "c1" not in shown
        assert "SCORE:" in request.last_user_text
    details = trace_of(response)["details"]["best_of_n"]
    assert [r["score"] for r in details["scores"]] == [6, 9, 3, 7]
    assert details["winner"] == "Candidate 2" and details["candidates"]["Candidate 2"] == "openai/c2"
    assert "9/10  ← chosen" in response.choices[0].message.reasoning_content
    assert_usage_is_sum(server, response.usage)


def test_best_of_n_pointwise_tie_and_unreadable_scores(server, call_kwargs):
    _candidates(server, [8, 8, 5, "x"])
    server.set_model("judge", reply=_scoring_judge)
    response = litellm.completion(model=BON, messages=user("q"), candidates=CANDIDATES, **call_kwargs)
    assert response.choices[0].message.content == "draft of quality 8"
    trace = trace_of(response)
    assert trace["details"]["best_of_n"]["winner"] == "Candidate 1"
    assert any("rule 'first'" in n for n in trace["notes"])
    assert any("no readable score" in n for n in trace["notes"])


def test_best_of_n_pairwise_tournament(server, call_kwargs):
    _candidates(server, [4, 2, 9, 6])
    server.set_model("judge", reply=_pairwise_judge)
    response = litellm.completion(model=BON, messages=user("q"), candidates=CANDIDATES, mode="pairwise",
                                  **call_kwargs)
    assert response.choices[0].message.content == "draft of quality 9"
    judges = server.requests_for("judge")
    assert len(judges) == 3  # n - 1 matches
    for request in judges:
        assert [label for label, _ in blocks(request)] == ["Response A", "Response B"]
        assert "WINNER: A" in request.last_user_text and "openai" not in request.all_text
    matches = trace_of(response)["details"]["best_of_n"]["matches"]
    assert [m["round"] for m in matches] == [1, 1, 2]
    assert matches[-1]["winner"] == "Candidate 3"
    assert "round 2:" in response.choices[0].message.reasoning_content


def test_pairwise_sides_are_shuffled_and_both_orders_doubles_the_calls(server, call_kwargs):
    _candidates(server, [4, 2, 9, 6])
    server.set_model("judge", reply=_pairwise_judge)
    positions = set()
    for seed in range(6):
        server.clear_requests()
        litellm.completion(model=BON, messages=user("q"), candidates=CANDIDATES, mode="pairwise",
                           shuffle_seed=seed, **call_kwargs)
        for request in server.requests_for("judge"):
            for label, text in blocks(request):
                if "quality 9" in text:
                    positions.add(label)
    assert positions == {"Response A", "Response B"}
    server.clear_requests()
    response = litellm.completion(model=BON, messages=user("q"), candidates=CANDIDATES, mode="pairwise",
                                  both_orders=True, **call_kwargs)
    assert len(server.requests_for("judge")) == 6
    assert response.choices[0].message.content == "draft of quality 9"


def test_pairwise_undecided_match_advances_the_earlier_candidate(server, call_kwargs):
    _candidates(server, [1, 9])
    server.set_model("judge", reply="They are equally good.")
    response = litellm.completion(model=BON, messages=user("q"), candidates=CANDIDATES[:2], mode="pairwise",
                                  **call_kwargs)
    assert response.choices[0].message.content == "draft of quality 1"
    assert any("undecided" in n and "rule 'first'" in n for n in trace_of(response)["notes"])


def test_best_of_n_failed_candidate_and_judge_fallback(server, explicit_profiles):
    _candidates(server, [3, 8, 5])
    server.set_model("c2", fail_status=400)
    server.set_model("badjudge", fail_status=400)
    server.set_model("judge", reply=_scoring_judge)
    explicit_profiles({
        "providers": {"fake": {"litellm_params": {"api_base": server.base_url, "api_key": API_KEY}}},
        "profiles": {"bon": {"strategy": "best_of_n", "topology": {
            "candidates": [{"model": m, "provider": "fake"} for m in CANDIDATES[:3]],
            "judge": {"model": "openai/badjudge", "provider": "fake",
                      "fallbacks": [{"model": "openai/judge", "provider": "fake"}]}}}},
    })
    response = litellm.completion(model="composite/profile/bon", messages=user("q"))
    assert response.choices[0].message.content == "draft of quality 5"
    assert all("quality 8" not in r.all_text for r in server.requests)
    trace = trace_of(response)
    assert any("openai/c2" in m for m in trace["failed_members"])
    assert len(trace["details"]["best_of_n"]["scores"]) == 2


def test_best_of_n_all_candidates_failed(server, call_kwargs):
    for name in ("c1", "c2"):
        server.set_model(name, fail_status=500)
    with pytest.raises(litellm.ServiceUnavailableError):
        litellm.completion(model=BON, messages=user("q"), candidates=CANDIDATES[:2], **call_kwargs)
    assert not server.requests_for("judge")


def test_best_of_n_sampled_short_form_and_missing_candidates(server, call_kwargs):
    server.set_model("c", reply=by_temperature(["draft of quality 2", "draft of quality 7", "draft of quality 4"]))
    server.set_model("judge", reply=_scoring_judge)
    response = litellm.completion(model=BON, messages=user("q"), **call_kwargs,
                                  candidates={"model": "openai/c", "samples": 3, "temperatures": TEMPS[:3]})
    assert response.choices[0].message.content == "draft of quality 7"
    assert trace_of(response)["details"]["best_of_n"]["candidates"]["Candidate 2"] == "openai/c #2"
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model=BON, messages=user("q"), **call_kwargs)
    assert "candidates" in str(info.value)


# =========================================================================== debate
DEBATE = "composite/debate/openai/agg"
MEMBERS = ["openai/d1", "openai/d2", "openai/d3"]


def _debater(first, revised):
    """Answers `first` in round 0 and `revised` when shown the others' answers."""
    return lambda request: revised if "Another agent's answer" in request.last_user_text else first


def test_debate_rounds_prompts_and_early_stop_on_agreement(server, call_kwargs):
    server.set_model("d1", reply=_debater("I think 42.", "Still 42."))
    server.set_model("d2", reply=_debater("I think 41.", "Convinced: 42."))
    server.set_model("d3", reply=_debater("Surely 42.", "42 again."))
    response = litellm.completion(model=DEBATE, messages=user("What is 6*7?"), members=MEMBERS, rounds=3,
                                  **call_kwargs)
    assert len(server.requests) == 6  # round 0 and round 1, then all agree: rounds 2-3 skipped
    assert not server.requests_for("agg")
    assert response.choices[0].message.content == "Still 42."
    revision = server.requests_for("d2")[1]
    assert revision.messages[0]["role"] == "system"  # our debate note and the framing rule, no member text
    assert "42" not in without_nonces(revision.messages[0]["content"])
    assert revision.messages[1] == {"role": "user", "content": "What is 6*7?"}
    assert revision.messages[2] == {"role": "assistant", "content": "I think 41."}  # its own latest answer
    prompt = revision.last_user_text
    assert [label for label, _ in blocks(revision)] == ["Another agent's answer 1", "Another agent's answer 2"]
    assert "I think 42." in prompt and "Surely 42." in prompt and "I think 41." not in prompt
    assert "openai" not in prompt and "d1" not in without_nonces(prompt)
    trace = trace_of(response)
    debate = trace["details"]["debate"]
    assert debate["rounds_run"] == 1 and debate["stopped_early"] is True
    assert [h["agreed"] for h in debate["rounds"]] == [False, True]
    assert any("2 round(s) skipped" in n for n in trace["notes"])
    assert "round 1: openai/d1=42, openai/d2=42, openai/d3=42  (all agree)" in (
        response.choices[0].message.reasoning_content)
    assert_usage_is_sum(server, response.usage)


def test_debate_members_run_in_parallel_each_round(server, call_kwargs):
    for name in ("d1", "d2", "d3"):
        server.set_model(name, reply=_debater(f"{name} says {name[-1]}", f"{name} keeps {name[-1]}"), latency_s=0.15)
    litellm.completion(model=DEBATE, messages=user("q"), members=MEMBERS, rounds=1, **call_kwargs)
    reqs = sorted(server.requests, key=lambda r: r.started)
    for group in (reqs[:3], reqs[3:]):
        assert max(r.started for r in group) < min(r.finished for r in group)


def test_debate_runs_every_round_without_agreement_then_votes(server, call_kwargs):
    server.set_model("d1", reply=_debater("Answer: 10", "Answer: 12"))
    server.set_model("d2", reply=_debater("Answer: 12", "Answer: 12, final"))
    server.set_model("d3", reply="Answer: 11")
    response = litellm.completion(model=DEBATE, messages=user("q"), members=MEMBERS, rounds=2, **call_kwargs)
    assert len(server.requests) == 9
    assert response.choices[0].message.content == "Answer: 12"  # d1 is the earliest member with the majority
    debate = trace_of(response)["details"]["debate"]
    assert debate["winner"] == "12" and debate["votes"][0]["count"] == 2 and not debate["stopped_early"]


def test_debate_agreement_in_round_zero_skips_all_revisions(server, call_kwargs):
    for name in ("d1", "d2", "d3"):
        server.set_model(name, reply="It is 5")
    litellm.completion(model=DEBATE, messages=user("q"), members=MEMBERS, rounds=2, **call_kwargs)
    assert len(server.requests) == 3
    server.clear_requests()
    litellm.completion(model=DEBATE, messages=user("q"), members=MEMBERS, rounds=2, early_stop=False, **call_kwargs)
    assert len(server.requests) == 9


def test_debate_vote_tie_goes_to_earliest_member(server, call_kwargs):
    server.set_model("d1", reply="It is 3")
    server.set_model("d2", reply="It is 4")
    response = litellm.completion(model=DEBATE, messages=user("q"), members=MEMBERS[:2], rounds=1, **call_kwargs)
    assert response.choices[0].message.content == "It is 3"
    assert any("rule 'first'" in n and "openai/d1" in n for n in trace_of(response)["notes"])


def test_debate_judge_final_streams_the_aggregator(server, call_kwargs):
    server.set_model("d1", reply="red is best")
    server.set_model("d2", reply="blue is best")
    server.set_model("agg", reply="a careful synthesis in several words", chunk_delay_s=0.01)
    stream = litellm.completion(model=DEBATE, messages=user("Which colour?"), members=MEMBERS[:2], rounds=1,
                                settings={"final": "judge", "extract": "free"}, stream=True,
                                stream_options={"include_usage": True}, **call_kwargs)
    content, reasoning, usage = collect(stream)
    assert content == "a careful synthesis in several words"
    assert reasoning.count("member openai/d1") == 2  # progress of both rounds, streamed as reasoning
    assert len(server.requests_for("d1")) == 2  # free-form: no agreement check, every round runs
    agg = server.requests_for("agg")[0]
    assert [label for label, _ in blocks(agg)] == ["Response A", "Response B"]
    assert "red is best" in agg.last_user_text and "red is best" not in agg.system_text
    assert "openai" not in agg.all_text
    assert_usage_is_sum(server, usage)


def test_debate_member_failure_leaves_the_debate(server, call_kwargs):
    server.set_model("d1", reply=_debater("7", "7 indeed"))
    server.set_model("d2", reply=_debater("8", "7 after all"))
    server.set_model("d3", fail_status=400)
    response = litellm.completion(model=DEBATE, messages=user("q"), members=MEMBERS, rounds=2, **call_kwargs)
    assert response.choices[0].message.content == "7 indeed"
    assert len(server.requests_for("d3")) == 1
    trace = trace_of(response)
    assert any("left the debate" in n for n in trace["notes"]) and trace["degraded"]
    for name in ("d1", "d2"):
        assert "simulated failure" not in server.requests_for(name)[-1].all_text


def test_debate_all_members_failed(server, call_kwargs):
    for name in ("d1", "d2"):
        server.set_model(name, fail_status=503)
    with pytest.raises(litellm.ServiceUnavailableError):
        litellm.completion(model=DEBATE, messages=user("q"), members=MEMBERS[:2], **call_kwargs)


def test_debate_no_extractable_answer_goes_to_the_aggregator(server, call_kwargs):
    server.set_model("d1", reply="blue")
    server.set_model("d2", reply="green")
    server.set_model("agg", reply="teal")
    response = litellm.completion(model=DEBATE, messages=user("q"), members=MEMBERS[:2], rounds=0, **call_kwargs)
    assert response.choices[0].message.content == "teal"
    assert any("aggregator synthesizes" in n for n in trace_of(response)["notes"])


@pytest.mark.parametrize("topology, needle", [
    ({"members": ["openai/d1"]}, "at least 2"),
    ({"members": MEMBERS, "settings": {"final": "judge"}}, "needs an aggregator"),
    ({"members": MEMBERS, "aggregator": "openai/agg", "settings": {"extract": "free"}}, "final=vote needs"),
    ({"members": MEMBERS, "rounds": 11}, "rounds"),
])
def test_debate_topology_errors(topology, needle):
    with pytest.raises(CompositeConfigError) as info:
        load_profiles({"profiles": {"d": {"strategy": "debate", "topology": topology}}})
    assert needle in str(info.value)


# =========================================================================== every entry point
def _fake_profiles(server):
    fake = {"provider": "fake"}
    return {
        "providers": {"fake": {"litellm_params": {"api_base": server.base_url, "api_key": API_KEY}}},
        "profiles": {
            "sc": {"strategy": "self_consistency", "topology": {
                "model": {"model": "openai/sc", **fake}, "samples": 3, "temperatures": TEMPS[:3],
                "settings": {"wave_size": 3}}},
            "bon": {"strategy": "best_of_n", "topology": {
                "candidates": [{"model": m, **fake} for m in CANDIDATES[:3]],
                "judge": {"model": "openai/judge", **fake}, "settings": {"mode": "pairwise"}}},
            "debate": {"strategy": "debate", "topology": {
                "members": [{"model": m, **fake} for m in MEMBERS], "rounds": 1}},
        },
    }


def _script_all(server):
    server.set_model("sc", reply=by_temperature(["The answer is 12.", "So 12 it is.", "13"]))
    _candidates(server, [4, 9, 6])
    server.set_model("judge", reply=_pairwise_judge)
    server.set_model("d1", reply=_debater("about 7", "7 after review"))
    server.set_model("d2", reply=_debater("7", "7, agreed"))
    server.set_model("d3", reply=_debater("8", "7 now"))


ENTRY_POINTS = {
    "sc": ("The answer is 12.", SC, {"samples": 3, "temperatures": TEMPS[:3]}),
    "bon": ("draft of quality 9", BON, {"candidates": CANDIDATES[:3], "mode": "pairwise"}),
    "debate": ("7 after review", DEBATE, {"members": MEMBERS, "rounds": 1}),
}


@pytest.mark.parametrize("form", ["model_string", "profile"])
@pytest.mark.parametrize("strategy", sorted(ENTRY_POINTS))
async def test_sync_async_stream_by_model_string_and_profile(server, call_kwargs, explicit_profiles, strategy,
                                                             form):
    _script_all(server)
    expected, model, inline = ENTRY_POINTS[strategy]
    if form == "profile":
        explicit_profiles(_fake_profiles(server))
        model, kwargs = f"composite/profile/{strategy}", {}
    else:
        kwargs = {**inline, **call_kwargs}

    response = litellm.completion(model=model, messages=user("q"), **kwargs)
    assert response.choices[0].message.content == expected
    assert_usage_is_sum(server, response.usage)
    assert trace_of(response)["strategy"] == {"sc": "self_consistency", "bon": "best_of_n"}.get(strategy, strategy)

    server.clear_requests()
    response = await litellm.acompletion(model=model, messages=user("q"), **kwargs)
    assert response.choices[0].message.content == expected
    assert_usage_is_sum(server, response.usage)

    server.clear_requests()
    content, reasoning, usage = collect(litellm.completion(model=model, messages=user("q"), stream=True,
                                                           stream_options={"include_usage": True}, **kwargs))
    assert content == expected and reasoning
    assert_usage_is_sum(server, usage)


async def test_async_stream_each_strategy(server, call_kwargs):
    _script_all(server)
    for expected, model, inline in ENTRY_POINTS.values():
        server.clear_requests()
        stream = await litellm.acompletion(model=model, messages=user("q"), stream=True,
                                           stream_options={"include_usage": True}, **inline, **call_kwargs)
        content, usage = await acollect(stream)
        assert content == expected
        assert_usage_is_sum(server, usage)


def test_cost_is_summed_over_every_sub_call(server, explicit_profiles):
    _script_all(server)
    prices = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    source = _fake_profiles(server)
    for profile in source["profiles"].values():
        for key in ("model", "judge"):
            if key in profile["topology"]:
                profile["topology"][key]["params"] = prices
        for key in ("candidates", "members"):
            for node in profile["topology"].get(key, []):
                node["params"] = prices
    explicit_profiles(source)
    for name in ("sc", "bon", "debate"):
        server.clear_requests()
        response = litellm.completion(model=f"composite/profile/{name}", messages=user("q"))
        completion = response.usage.completion_tokens
        expected = sum(r.prompt_tokens for r in server.requests) * 1e-6 + completion * 2e-6
        assert response._hidden_params["response_cost"] == pytest.approx(expected, rel=1e-9)


def test_shipped_strategy_profiles_validate():
    source = load_profiles(REPO / "profiles")
    for name in ("self_consistency_cerebras", "adaptive_self_consistency_cerebras",
                 "universal_self_consistency_cerebras",
                 "best_of_n_cerebras", "best_of_n_pairwise_cerebras", "debate_cerebras",
                 "debate_judge_cerebras", "self_consistency_smollm2", "best_of_n_smollm2", "debate_smollm2",
                 "self_consistency_local", "best_of_n_local", "debate_local"):
        assert name in source.profiles, name
    assert {p.strategy.name for p in source.profiles.values()} >= {"self_consistency", "best_of_n", "debate"}


# =========================================================================== node instruction
def test_a_node_instruction_reaches_that_node_only_appended_to_the_last_user_message(server, call_kwargs,
                                                                                     explicit_profiles):
    """`instruction` on a node (and on its sampled short form) is appended to the last user message of
    that node's calls; the judge and the caller's messages are untouched."""
    server.set_model("reasoner", reply="Step by step: 6*7 = 42. The answer is 42.")
    server.set_model("plain-judge", reply="unused")
    explicit_profiles({"profiles": {"sc_reasoned": {"strategy": "self_consistency", "topology": {
        "model": {"model": "openai/reasoner", "instruction": "Think step by step."},
        "samples": 3, "temperature": 0.7, "judge": "openai/plain-judge",
        "settings": {"tie_break": "judge"}}}}})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6*7?"}]
    response = litellm.completion(model="composite/profile/sc_reasoned", messages=messages, **call_kwargs)
    assert "42" in response.choices[0].message.content
    requests = server.requests_for("reasoner")
    assert len(requests) == 3
    for request in requests:
        assert request.messages[-1] == {"role": "user", "content": "What is 6*7?\n\nThink step by step."}
        assert request.messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["content"] == "What is 6*7?"
    assert server.requests_for("plain-judge") == []  # unanimous: no tie to break


def test_instruction_is_validated_and_kept_by_the_sampled_short_form():
    from composite_llm.schema import NodeConfig, SampledNodes

    node = NodeConfig.model_validate({"model": "openai/m", "instruction": "Check each step."})
    nodes = SampledNodes.of(node, samples=2, temperature=0.5).nodes()
    assert [n.instruction for n in nodes] == ["Check each step."] * 2
    assert [n.params["temperature"] for n in nodes] == [0.5, 0.5]
    with pytest.raises(ValueError, match="instruction"):
        NodeConfig.model_validate({"model": "openai/m", "instruction": ""})
