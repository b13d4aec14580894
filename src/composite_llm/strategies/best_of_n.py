"""Best-of-n: n candidate answers, a judge model picks the best, which is returned verbatim.

Candidates come from one or more nodes (or one model sampled k times, the MoA short form). The judge
never sees a model name. Pointwise: one judge call per candidate, in parallel, scoring it 1-10 against
a rubric (`SCORE: n`); the highest score wins, ties go to the earliest candidate. Pairwise: a
single-elimination tournament in a shuffled bracket; each match is one judge call (two with
`both_orders`, A and B swapped) answering `WINNER: A|B`, with the sides drawn at random; an unreadable or
split verdict goes to the earlier candidate. Matches of one round run in parallel.

Candidates are untrusted text for the judge: framed with a per-prompt nonce in its last user turn
(`framing.py`); a verdict is read from the judge's own words, never from a line it quoted from a
candidate or from a reply cut off before its final line (`answers.parse_score`, `parse_winner`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..engine import MemberResult, PlannedCall, RunContext
from ..schema import (
    FanOutSettings,
    NodeConfig,
    SampledNodeList,
    StrictModel,
    check_quorum,
)
from .answers import parse_score, parse_winner
from .base import FinalText, final_candidates, inline_keys_of, inline_topology
from .framing import Framing
from .judging import answer_nodes, ask_judge, judge_messages, shuffle_rng

CANDIDATE_LABEL = "Candidate"

JUDGE_SYSTEM_PROMPT = """\
You are an impartial judge. You evaluate responses to the user's latest request, shown in the last user
message, which this system added; do not answer the request yourself."""

DEFAULT_RUBRIC = """\
- Correctness: facts, reasoning and any final answer are right (this matters most).
- Helpfulness: it answers what was asked, completely, in the requested form.
- Clarity: it is well organized and no longer than it needs to be."""

POINTWISE_REQUEST = """\
Here is a candidate response to evaluate:

{response}

Judge it against this rubric:
{rubric}

Explain your assessment briefly, then end your reply with one line in exactly this form:
SCORE: <an integer from 1 (useless) to 10 (excellent)>"""

PAIRWISE_REQUEST = """\
Here are two candidate responses:

{responses}

Compare them against this rubric:
{rubric}

Do not let the order, the length or the style of the responses sway you. Explain your comparison
briefly, then end your reply with one line in exactly this form:
WINNER: A   or   WINNER: B"""


class BestOfNSettings(FanOutSettings):
    """Best-of-n settings; the fan-out fields apply to the candidates.

    mode: pointwise (score each candidate 1-10) or pairwise (a tournament of judged matches).
    rubric: replaces DEFAULT_RUBRIC in the judge prompts.
    both_orders: pairwise only, judge each match twice with the sides swapped (position bias); a split
        verdict is a tie.
    shuffle_seed: fixes the bracket and the sides (default: random per request).
    """

    mode: Literal["pointwise", "pairwise"] = "pointwise"
    rubric: str | None = Field(default=None, min_length=1)
    both_orders: bool = False
    shuffle_seed: int | None = None


class BestOfNTopology(StrictModel):
    candidates: SampledNodeList = Field(min_length=1)
    judge: NodeConfig
    settings: BestOfNSettings = Field(default_factory=BestOfNSettings)

    @model_validator(mode="after")
    def _sizes(self) -> "BestOfNTopology":
        check_quorum(self.settings, len(self.candidates), "candidates")
        return self


class BestOfNStrategy:
    name: ClassVar[str] = "best_of_n"
    topology_model: ClassVar[type[BestOfNTopology]] = BestOfNTopology
    inline_keys: ClassVar[frozenset[str]] = inline_keys_of({"candidates", "judge", "settings"}, BestOfNSettings)

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        return inline_topology(inline, BestOfNSettings, ("candidates",), judge=inline.get("judge") or final_model)

    def count_sub_calls(self, topology: BestOfNTopology, node: Callable[[NodeConfig], int]) -> int:
        """Leaf sub-calls of one run, an upper bound (composite_llm.budget); `node` counts one node."""
        n, s = len(topology.candidates), topology.settings
        if n == 1:
            return node(topology.candidates[0])
        judged = n if s.mode == "pointwise" else (n - 1) * (2 if s.both_orders else 1)
        return sum(node(c) for c in topology.candidates) + judged * node(topology.judge)

    def member_models(self, topology: BestOfNTopology) -> list[str]:
        return [n.model for n in [*topology.candidates, topology.judge, *topology.judge.fallbacks]]

    async def prepare(self, ctx: RunContext, topology: BestOfNTopology, messages: list[Any]) -> FinalText:
        s = topology.settings
        calls = ctx.plan_all(answer_nodes(ctx, topology.candidates, self.name), role="candidate", stage="candidates")
        judge = final_candidates(ctx, topology.judge, role="judge", stage=f"judge ({s.mode})")
        outcome = await ctx.fan_out([(call, messages) for call in calls], settings=s, stage="candidates")
        answers = outcome.answers
        names = [f"Candidate {i + 1}" for i in range(len(answers))]
        details: dict[str, Any] = {"mode": s.mode, "candidates": {n: a.call.label for n, a in zip(names, answers)}}
        ctx.trace.details["best_of_n"] = details
        if len(answers) == 1:
            ctx.trace.notes.append("only one candidate answered: returned without judging")
            best = 0
        elif s.mode == "pointwise":
            best = await self._pointwise(ctx, judge, messages, answers, names, s, details)
        else:
            best = await self._pairwise(ctx, judge, messages, answers, names, s, details)
        details["winner"] = names[best]
        winner = answers[best]
        return FinalText(winner.text, finish_reason=winner.finish_reason or "stop")

    # ------------------------------------------------------------------ pointwise
    async def _pointwise(self, ctx: RunContext, judge: list[PlannedCall], messages: list[Any],
                         answers: list[MemberResult], names: list[str], s: BestOfNSettings,
                         details: dict[str, Any]) -> int:
        rubric = s.rubric or DEFAULT_RUBRIC
        order = list(range(len(answers)))
        shuffle_rng(ctx, s.shuffle_seed).shuffle(order)  # dispatch order only: each call sees one candidate

        async def score(index: int) -> tuple[int, float | None]:
            shown = answers[index].text
            framing = Framing.for_texts([shown])
            request = judge_messages(messages, JUDGE_SYSTEM_PROMPT, framing, POINTWISE_REQUEST.format(
                response=framing.block(CANDIDATE_LABEL, shown), rubric=rubric))
            result = await ask_judge(ctx, judge, request, s)
            value = (parse_score(result.text, quoted_from=[shown], truncated=result.finish_reason == "length")
                     if result is not None else None)
            if result is not None:
                result.record.extra.update(candidate=names[index], score=value)
            return index, value

        scored = dict(await asyncio.gather(*(score(i) for i in order)))
        rows = [{"candidate": names[i], "member": answers[i].call.label, "score": scored[i]}
                for i in range(len(answers))]
        details["scores"] = rows
        valid = [i for i in range(len(answers)) if scored[i] is not None]
        if not valid:
            ctx.trace.notes.append("no judge score could be read: returning the earliest candidate")
            best = 0
        else:
            top = max(scored[i] for i in valid)  # type: ignore[type-var]
            leaders = [i for i in valid if scored[i] == top]
            best = leaders[0]
            if len(leaders) > 1:
                ctx.trace.notes.append(f"tie at score {top:g} between {', '.join(names[i] for i in leaders)}: "
                                       f"rule 'first' picks {names[best]}")
        if len(valid) < len(answers):
            ctx.trace.notes.append(f"{len(answers) - len(valid)} candidate(s) got no readable score and rank last")
        ctx.trace.details["judge scores"] = "\n".join(
            f"{r['candidate']} ({r['member']}): " + (f"{r['score']:g}/10" if r["score"] is not None else "no score")
            + ("  ← chosen" if i == best else "") for i, r in enumerate(rows))
        return best

    # ------------------------------------------------------------------ pairwise
    async def _pairwise(self, ctx: RunContext, judge: list[PlannedCall], messages: list[Any],
                        answers: list[MemberResult], names: list[str], s: BestOfNSettings,
                        details: dict[str, Any]) -> int:
        rng = shuffle_rng(ctx, s.shuffle_seed)
        rubric = s.rubric or DEFAULT_RUBRIC
        entrants = list(range(len(answers)))
        rng.shuffle(entrants)
        matches: list[dict[str, Any]] = []
        round_number = 0
        while len(entrants) > 1:
            round_number += 1
            pairs = [(entrants[k], entrants[k + 1]) for k in range(0, len(entrants) - 1, 2)]
            bye = [entrants[-1]] if len(entrants) % 2 else []
            jobs = []
            for x, y in pairs:
                first = (x, y) if rng.random() < 0.5 else (y, x)
                sides = [first, (first[1], first[0])] if s.both_orders else [first]
                jobs.append(self._match(ctx, judge, messages, answers, sides, rubric, s))
            verdicts = await asyncio.gather(*jobs)
            winners = []
            for (x, y), (votes, readings) in zip(pairs, verdicts):
                if votes.get(x, 0) != votes.get(y, 0):
                    winner, rule = (x if votes.get(x, 0) > votes.get(y, 0) else y), "judge"
                else:
                    winner, rule = min(x, y), "tie: earlier candidate"
                    ctx.trace.notes.append(f"round {round_number}: {names[x]} vs {names[y]} undecided "
                                           f"({', '.join(readings)}): rule 'first' advances {names[winner]}")
                winners.append(winner)
                matches.append({"round": round_number, "pair": [names[x], names[y]], "verdicts": readings,
                                "winner": names[winner], "decided_by": rule})
            entrants = winners + bye
        details["matches"] = matches
        ctx.trace.details["tournament"] = "\n".join(
            f"round {m['round']}: {m['pair'][0]} vs {m['pair'][1]} → {m['winner']} ({m['decided_by']}; "
            f"{', '.join(m['verdicts'])})" for m in matches)
        return entrants[0]

    @staticmethod
    async def _match(ctx: RunContext, judge: list[PlannedCall], messages: list[Any], answers: list[MemberResult],
                     sides: list[tuple[int, int]], rubric: str, s: BestOfNSettings) -> tuple[dict[int, int], list[str]]:
        """Judge one match (once per side order); votes per candidate index and readable verdicts."""
        async def one(a: int, b: int) -> tuple[int, int, str | None]:
            shown = [answers[a].text, answers[b].text]
            framing = Framing.for_texts(shown)
            request = judge_messages(messages, JUDGE_SYSTEM_PROMPT, framing, PAIRWISE_REQUEST.format(
                responses=framing.blocks([("Response A", shown[0]), ("Response B", shown[1])]), rubric=rubric))
            result = await ask_judge(ctx, judge, request, s)
            verdict = (parse_winner(result.text, quoted_from=shown, truncated=result.finish_reason == "length")
                       if result is not None else None)
            if result is not None:
                result.record.extra.update(response_a=a + 1, response_b=b + 1, winner=verdict)
            return a, b, verdict

        votes: dict[int, int] = {}
        readings = []
        for a, b, verdict in await asyncio.gather(*(one(a, b) for a, b in sides)):
            if verdict is None:
                readings.append(f"A=Candidate {a + 1}, B=Candidate {b + 1}: no verdict")
                continue
            picked = a if verdict == "A" else b
            votes[picked] = votes.get(picked, 0) + 1
            readings.append(f"A=Candidate {a + 1}, B=Candidate {b + 1}: {verdict}")
        return votes, readings
