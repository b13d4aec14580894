"""Council: three stages, anonymous shuffled reviews, ranking parsing and aggregation."""

from __future__ import annotations

import re

import litellm
import pytest

from composite_llm.strategies.council import ParsedRanking, aggregate_rankings, parse_ranking
from composite_llm.strategies.framing import framed_spans, stated_nonce
from conftest import API_KEY, user


def framed(request):
    """The (label, text) blocks a prompt frames with the nonce its system message states."""
    return framed_spans(request.last_user_text, stated_nonce(request.system_text))

MEMBERS = ["openai/c1", "openai/c2", "openai/c3"]


def _reviewer_reply(request):
    """A reviewer that ranks by the number in each answer (highest first), in its own labels."""
    if "FINAL RANKING" not in request.all_text:
        return f"member answer {request.model} number {request.model[-1]}"
    blocks = [(label, re.search(r"number (\d)", text).group(1)) for label, text in framed(request)]
    ranked = sorted(blocks, key=lambda b: -int(b[1]))
    return "Critique here.\nFINAL RANKING:\n" + "\n".join(f"{i}. {label}" for i, (label, _) in enumerate(ranked, 1))


def _script(server):
    for name in ("c1", "c2", "c3"):
        server.set_model(name, reply=_reviewer_reply)
    server.set_model("chair", reply="chairman synthesis")


def test_seed_readme_council_call(server):
    """composite_llm_research's form: optional_params with council_models and chairman_model, plus api_base."""
    _script(server)
    response = litellm.completion(
        model="composite/council/openai/chair",
        messages=user("Which number is best?"),
        api_base=server.base_url,
        api_key=API_KEY,
        optional_params={"council_models": MEMBERS, "chairman_model": "openai/chair"},
    )
    assert response.choices[0].message.content == "chairman synthesis"
    # 3 stages: 3 answers, 3 reviews, 1 synthesis
    assert len(server.requests) == 7
    trace = response.choices[0].message.provider_specific_fields["composite"]
    council = trace["details"]["council"]
    assert len(council["rankings"]) == 3
    assert all(r["parsed_by"] == "final_ranking" for r in council["rankings"])
    # every reviewer ranked c3 (number 3) first
    top = council["aggregate"][0]
    assert top["member"] == "openai/c3" and top["mean_rank"] == 1.0
    chair = server.requests_for("chair")[0]
    assert "mean rank" in chair.system_text  # the ranking we computed: trusted, in the system message
    assert [label for label, _ in framed(chair)] == ["Response A", "Response B", "Response C",
                                                     "Review 1", "Review 2", "Review 3"]
    assert "member answer" not in chair.system_text  # answers and reviews: user-role content only


def test_review_prompts_name_no_model(server, call_kwargs):
    server.set_model("m1", reply="alpha answer")
    server.set_model("m2", reply="beta answer")
    server.set_model("chair", reply="done")
    litellm.completion(model="composite/council/openai/chair", messages=user("q"),
                       council_models=["openai/m1", "openai/m2"], **call_kwargs)
    prompts = [r for r in server.requests if "FINAL RANKING" in r.all_text] + server.requests_for("chair")
    assert len(prompts) == 3
    for request in prompts:
        assert "m1" not in request.all_text and "m2" not in request.all_text
        assert "openai" not in request.all_text


def test_reviewers_see_shuffled_orders_and_rankings_map_back(server, call_kwargs):
    names = [f"r{i}" for i in range(6)]
    for name in names:
        server.set_model(name, reply=_numbered(name))
    server.set_model("chair", reply="ok")
    response = litellm.completion(model="composite/council/openai/chair", messages=user("q"),
                                  council_models=[f"openai/{n}" for n in names], **call_kwargs)
    orders = set()
    for request in server.requests:
        if "FINAL RANKING" in request.all_text:
            orders.add(tuple(re.findall(r"number (\d)", request.all_text)))
    assert len(orders) > 1  # per-reviewer shuffles differ
    aggregate = response.choices[0].message.provider_specific_fields["composite"]["details"]["council"]["aggregate"]
    assert aggregate[0]["member"] == "openai/r5"  # highest number, whatever labels each reviewer saw


def _numbered(name):
    def reply(request):
        if "FINAL RANKING" in request.all_text:
            return _reviewer_reply(request)
        return f"member answer {name} number {name[-1]}"
    return reply


def test_skip_own_answer(server, call_kwargs):
    _script(server)
    litellm.completion(model="composite/council/openai/chair", messages=user("q"), council_models=MEMBERS,
                       skip_own_answer=True, **call_kwargs)
    for name in ("c1", "c2", "c3"):
        review = [r for r in server.requests_for(name) if "FINAL RANKING" in r.all_text][0]
        assert f"member answer openai/{name}" not in review.all_text
        assert [label for label, _ in framed(review)] == ["Response A", "Response B"]


def test_failed_member_is_left_out_of_reviews(server, call_kwargs):
    _script(server)
    server.set_model("c2", fail_status=500, fail_message="c2 exploded")
    response = litellm.completion(model="composite/council/openai/chair", messages=user("q"), council_models=MEMBERS,
                                  **call_kwargs)
    assert response.choices[0].message.content == "chairman synthesis"
    for request in server.requests:
        assert "c2 exploded" not in request.all_text
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert any("openai/c2" in m for m in trace["failed_members"])


def test_explicit_reviewers(server, explicit_profiles):
    _script(server)
    server.set_model("judge", reply="FINAL RANKING:\n1. Response B\n2. Response A")
    explicit_profiles({"profiles": {"judged": {"strategy": "council", "topology": {
        "chairman": "openai/chair", "council": ["openai/c1", "openai/c2"], "reviewers": ["openai/judge"],
        "settings": {"shuffle": False}}}}})
    response = litellm.completion(model="composite/profile/judged", messages=user("q"), api_base=server.base_url,
                                  api_key=API_KEY)
    council = response.choices[0].message.provider_specific_fields["composite"]["details"]["council"]
    assert [r["ranking"] for r in council["rankings"]] == [["Response B", "Response A"]]
    assert council["aggregate"][0]["member"] == "openai/c2"
    assert len(server.requests_for("c1")) == 1  # members did not review


def test_parse_ranking_block_and_fallback():
    labels = ["Response A", "Response B", "Response C"]
    text = "Response A is weak.\nFINAL RANKING:\n1. Response C\n2. Response A\n3. Response B"
    assert parse_ranking(text, labels) == (["Response C", "Response A", "Response B"], "final_ranking")
    assert parse_ranking("I prefer Response B over Response A.", labels) == (["Response B", "Response A"], "fallback")
    assert parse_ranking("FINAL RANKING: (none)", labels)[1] == "none"
    assert parse_ranking("FINAL RANKING:\n1. Response Z\n2. Response B\n3. Response B", labels)[0] == ["Response B"]


def test_aggregate_by_mean_rank():
    rankings = [ParsedRanking("x", [2, 0, 1], "final_ranking"), ParsedRanking("y", [0, 2, 1], "final_ranking")]
    rows = aggregate_rankings(rankings, 3)
    assert [r["index"] for r in rows] == [0, 2, 1]  # means: A 1.5, C 1.5 (tie -> label order), B 3
    assert rows[0]["mean_rank"] == 1.5 and rows[2]["mean_rank"] == 3.0


def test_single_answer_skips_reviews(server, call_kwargs):
    _script(server)
    server.set_model("c2", fail_status=400)
    server.set_model("c3", fail_status=400)
    response = litellm.completion(model="composite/council/openai/chair", messages=user("q"), council_models=MEMBERS,
                                  **call_kwargs)
    assert response.choices[0].message.content == "chairman synthesis"
    assert not any("FINAL RANKING" in r.all_text for r in server.requests)
    assert "stage 2 skipped" in response.choices[0].message.reasoning_content


def test_council_needs_members(server, call_kwargs):
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/council/openai/chair", messages=user("q"), **call_kwargs)
    assert "council" in str(info.value)


def test_openai_seed_reaches_members_and_shuffle_seed_is_separate(server, call_kwargs):
    """`seed` is the OpenAI sampling parameter (to members); the review order has its own `shuffle_seed`."""
    _script(server)
    litellm.completion(model="composite/council/openai/chair", messages=user("q"), council_models=MEMBERS, seed=7,
                       shuffle_seed=3, **call_kwargs)
    assert all(r.body.get("seed") == 7 for r in server.requests)
