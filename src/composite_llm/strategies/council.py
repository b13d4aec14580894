"""LLM Council (after karpathy/llm-council): answer, review anonymously, synthesize.

Stage 1: every member answers in parallel. Stage 2: each reviewer sees the answers as "Response A, B, ..."
in its own shuffled order (optionally without its own answer), critiques them and ends with a
`FINAL RANKING:` list; rankings are parsed (with a fallback) and averaged by rank position. Stage 3: the
chairman writes the final answer from the answers, the reviews (relabelled to one shared labelling) and
the aggregate ranking. No prompt ever contains a model name.

Answers and reviews are untrusted text: they reach reviewers and the chairman only in the last user
message, inside nonce-tagged frames (`framing.py`); the aggregate ranking, which we compute, is in the
system message. A ranking is read from the reviewer's own final section only (`answers.parse_ranking`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, model_validator

from ..engine import MemberResult, RunContext
from ..messages import response_labels
from ..schema import FanOutSettings, NodeConfig, StrictModel, check_quorum
from .answers import parse_ranking
from .base import FinalCall, final_candidates, inline_keys_of, split_settings
from .framing import Framing, anonymous_blocks, framed_messages
from .judging import shuffle_rng

__all__ = ["CouncilStrategy", "CouncilTopology", "CouncilSettings", "ParsedRanking", "aggregate_rankings",
           "parse_ranking"]

REVIEW_SYSTEM_PROMPT = """\
You are a careful reviewer. Other assistants answered the user's latest request; their responses are in
the last user message, which this system added. You will evaluate them, not answer the request yourself."""

REVIEW_REQUEST = """\
Here are the responses to evaluate, each framed under an anonymous label:

{responses}

For each response, say briefly what it gets right and what it gets wrong (accuracy first, then
completeness and clarity). Then end your reply with a ranking from best to worst in exactly this form:

FINAL RANKING:
1. Response X
2. Response Y

List every response label once, one per line, and write nothing after the ranking."""

# Our instructions and the aggregate ranking we computed: trusted, so they go in the system message.
CHAIRMAN_PROMPT = """\
You chair a council of assistants. They answered the user's latest request, then reviewed each other's
answers anonymously; the answers and reviews are in the last user message, which this system added.
Using them and the aggregate ranking below, write the single best final answer to the user's request:
correct the errors the reviews found, keep what is right, and answer directly, in the form the user
asked for. Do not mention the council, the reviews or the labels.

Aggregate ranking of the answers (best first, by mean rank position over the reviews):
{ranking}"""

# The members' answers and the reviews: untrusted, framed, in the last user message.
CHAIRMAN_REQUEST = """\
The council's answers:

{responses}

The reviews:

{reviews}

Write the final answer now."""

_LABEL = re.compile(r"\bResponse\s+([A-Z]{1,2})\b")


class CouncilSettings(FanOutSettings):
    """Council settings; the fan-out fields apply to stage 1.

    review_quorum: fewest reviews stage 2 needs (0: the chairman may proceed without any).
    skip_own_answer: a reviewer that is also a member does not see its own answer.
    shuffle: each reviewer sees the answers in its own random order (position bias); `shuffle_seed` fixes it
        (not `seed`, which is the OpenAI sampling parameter and goes to the members).
    max_council_size: reject topologies with more members (kept from composite_llm_research's profiles).
    include_stage_summaries_in_reasoning: show member answer previews in reasoning_content.
    """

    review_quorum: int = Field(default=0, ge=0)
    skip_own_answer: bool = False
    shuffle: bool = True
    shuffle_seed: int | None = None
    max_council_size: int | None = Field(default=None, ge=1)
    include_stage_summaries_in_reasoning: bool = True


class CouncilTopology(StrictModel):
    chairman: NodeConfig
    council: list[NodeConfig] = Field(min_length=1)
    reviewers: list[NodeConfig] | None = None
    settings: CouncilSettings = Field(default_factory=CouncilSettings)

    @model_validator(mode="after")
    def _sizes(self) -> "CouncilTopology":
        size = self.settings.max_council_size
        if size is not None and len(self.council) > size:
            raise ValueError(f"council has {len(self.council)} members, more than settings.max_council_size={size}")
        check_quorum(self.settings, len(self.council), "council")
        reviewers = len(self.reviewers) if self.reviewers is not None else len(self.council)
        if self.settings.review_quorum > reviewers:
            raise ValueError(f"settings.review_quorum={self.settings.review_quorum} exceeds the {reviewers} reviewers")
        return self


@dataclass
class ParsedRanking:
    """One reviewer's ranking, in canonical member-answer indices, and how it was read."""

    reviewer: str
    order: list[int]
    method: str  # "final_ranking", "fallback", "quoted", "truncated" or "none"


def aggregate_rankings(rankings: list[ParsedRanking], count: int) -> list[dict[str, Any]]:
    """Mean rank position per answer (1 = best), best first; unranked answers go last."""
    positions: dict[int, list[int]] = {i: [] for i in range(count)}
    for ranking in rankings:
        for position, index in enumerate(ranking.order, start=1):
            positions[index].append(position)
    labels = response_labels(count)
    rows = [{"response": labels[i], "index": i, "mean_rank": (sum(p) / len(p)) if p else None, "votes": len(p)}
            for i, p in positions.items()]
    rows.sort(key=lambda r: (r["mean_rank"] is None, r["mean_rank"] or 0.0, -r["votes"], r["index"]))
    return rows


def _relabel(text: str, mapping: dict[str, str]) -> str:
    """Rewrite a reviewer's own labels into the shared labelling the chairman sees."""
    return _LABEL.sub(lambda m: mapping.get(f"Response {m.group(1)}", m.group(0)), text)


class CouncilStrategy:
    name: ClassVar[str] = "council"
    topology_model: ClassVar[type[CouncilTopology]] = CouncilTopology
    inline_keys: ClassVar[frozenset[str]] = inline_keys_of(
        {"council", "council_models", "members", "chairman", "chairman_model", "reviewers", "reviewer_models",
         "settings"}, CouncilSettings)

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        topology: dict[str, Any] = {
            "chairman": inline.get("chairman") or inline.get("chairman_model") or final_model,
            "settings": split_settings(inline, CouncilSettings),
        }
        for key in ("council", "council_models", "members"):
            if key in inline:
                topology["council"] = inline[key]
                break
        for key in ("reviewers", "reviewer_models"):
            if key in inline:
                topology["reviewers"] = inline[key]
        return topology

    def count_sub_calls(self, topology: CouncilTopology, node: Callable[[NodeConfig], int]) -> int:
        """Leaf sub-calls of one run, an upper bound (composite_llm.budget); `node` counts one node."""
        reviewers = topology.reviewers if topology.reviewers is not None else topology.council
        return sum(node(n) for n in topology.council) + sum(node(n) for n in reviewers) + node(topology.chairman)

    def member_models(self, topology: CouncilTopology) -> list[str]:
        nodes = [*topology.council, *(topology.reviewers or []), topology.chairman, *topology.chairman.fallbacks]
        return [n.model for n in nodes]

    async def prepare(self, ctx: RunContext, topology: CouncilTopology, messages: list[Any]) -> FinalCall:
        settings = topology.settings
        ctx.trace.show_previews = settings.include_stage_summaries_in_reasoning
        members = ctx.plan_all(topology.council, role="member", stage="stage 1 answers")
        explicit_reviewers = (ctx.plan_all(topology.reviewers, role="reviewer", stage="stage 2 reviews")
                              if topology.reviewers is not None else None)
        candidates = final_candidates(ctx, topology.chairman, role="chairman", stage="stage 3 synthesis")

        stage1 = await ctx.fan_out([(m, messages) for m in members], settings=settings, stage="stage 1 answers")
        answers = stage1.answers
        labels = response_labels(len(answers))

        if len(answers) < 2:
            ctx.trace.notes.append("stage 2 skipped: fewer than two answers to rank")
            reviews: list[tuple[MemberResult, dict[str, str]]] = []
            rankings: list[ParsedRanking] = []
        else:
            reviews, rankings = await self._review(ctx, topology, messages, answers, labels, explicit_reviewers)

        aggregate = aggregate_rankings(rankings, len(answers))
        self._record_rankings(ctx, rankings, aggregate, answers, labels)
        reviewed = [_relabel(r.text.strip(), mapping) for r, mapping in reviews]
        framing = Framing.for_texts([*(a.text for a in answers), *reviewed])
        ranking = "\n".join(f"{pos}. {row['response']} (mean rank {row['mean_rank']:.2f}, {row['votes']} votes)"
                            for pos, row in enumerate(aggregate, start=1) if row["mean_rank"] is not None)
        request = CHAIRMAN_REQUEST.format(
            responses=anonymous_blocks([a.text for a in answers], None, framing)[0],
            reviews=framing.blocks([(f"Review {i + 1}", text) for i, text in enumerate(reviewed)]) or "(no reviews)",
        )
        prompt = CHAIRMAN_PROMPT.format(ranking=ranking or "(no rankings)")
        return FinalCall(candidates=candidates, messages=framed_messages(messages, prompt, framing, request),
                         settings=settings)

    async def _review(
        self,
        ctx: RunContext,
        topology: CouncilTopology,
        messages: list[Any],
        answers: list[MemberResult],
        labels: list[str],
        explicit_reviewers: list[Any] | None,
    ) -> tuple[list[tuple[MemberResult, dict[str, str]]], list[ParsedRanking]]:
        settings = topology.settings
        if explicit_reviewers is not None:
            reviewers = [(call, None) for call in explicit_reviewers]
        else:  # members review; those that failed stage 1 are not asked
            reviewers = [(ctx.plan(a.call.node, role="reviewer", stage="stage 2 reviews"), index)
                         for index, a in enumerate(answers)]
        rng = shuffle_rng(ctx, settings.shuffle_seed)
        items, views = [], []
        for call, own_index in reviewers:
            candidates = [i for i in range(len(answers)) if not (settings.skip_own_answer and i == own_index)]
            framing = Framing.for_texts(answers[i].text for i in candidates)
            block, view_labels, order = anonymous_blocks([answers[i].text for i in candidates],
                                                         rng if settings.shuffle else None, framing)
            shown = [candidates[k] for k in order]
            items.append((call, framed_messages(messages, REVIEW_SYSTEM_PROMPT, framing,
                                                REVIEW_REQUEST.format(responses=block))))
            views.append((view_labels, shown))
        outcome = await ctx.fan_out(items, settings=settings, stage="stage 2 reviews", quorum=settings.review_quorum)
        reviews, rankings = [], []
        for result, (view_labels, shown) in zip(outcome.results, views):
            if not result.ok:
                continue
            mapping = {vl: labels[i] for vl, i in zip(view_labels, shown)}
            # Only the reviewer's own final section counts: not a ranking it quoted from an answer,
            # nor anything from a review cut off before its end.
            ranked, method = parse_ranking(result.text, view_labels, quoted_from=[answers[i].text for i in shown],
                                           truncated=result.finish_reason == "length")
            order = [shown[view_labels.index(label)] for label in ranked]
            rankings.append(ParsedRanking(reviewer=result.call.label, order=order, method=method))
            result.record.extra["ranking"] = [labels[i] for i in order]
            result.record.extra["ranking_parse"] = method
            reviews.append((result, mapping))
        return reviews, rankings

    @staticmethod
    def _record_rankings(ctx: RunContext, rankings: list[ParsedRanking], aggregate: list[dict[str, Any]],
                         answers: list[MemberResult], labels: list[str]) -> None:
        ctx.trace.details["council"] = {
            "labels": {label: a.call.label for label, a in zip(labels, answers)},
            "rankings": [{"reviewer": r.reviewer, "ranking": [labels[i] for i in r.order], "parsed_by": r.method}
                         for r in rankings],
            "aggregate": [{**row, "member": answers[row["index"]].call.label} for row in aggregate],
        }
        lines = [f"{pos}. {row['response']} = {answers[row['index']].call.label}: "
                 f"mean rank {row['mean_rank']:.2f} over {row['votes']} reviews"
                 for pos, row in enumerate(aggregate, start=1) if row["mean_rank"] is not None]
        if rankings:
            ctx.trace.details["aggregate ranking"] = "\n".join(lines) or "no review contained a usable ranking"
