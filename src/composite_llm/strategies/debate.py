"""Multi-agent debate (Du et al. 2023), ended by a vote or by an aggregator ("Debate or Vote", 2025).

Round 0: every member answers in parallel. Each of `rounds` revision rounds: every member sees its own
latest answer and the others' latest answers, anonymized ("Another agent's answer 1, 2, ...", in a
shuffled order, no model names, framed as untrusted text in its last user turn), and revises. The debate
stops early once every member's extracted answer agrees. The final answer is the majority answer (the
earliest member's text that gave it, verbatim; ties go to the earliest member) or, with `final: judge`,
an aggregator's synthesis of the final answers, streamed. A member whose call fails leaves the debate;
its last answer still counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..engine import MemberResult, RunContext
from ..schema import NodeConfig, SampledNodeList, StrictModel, check_quorum
from .answers import ExtractionSettings, make_extractor, render_tally, tally
from .base import (
    FinalCall,
    FinalText,
    final_candidates,
    inline_keys_of,
    inline_topology,
)
from .framing import Framing, anonymous_blocks, framed_messages
from .judging import answer_nodes, require_answers, shuffle_rng

# Revision rounds: the others' answers are untrusted text, framed in the member's last user turn.
REVISE_SYSTEM_PROMPT = """\
This is a debate: other agents were given the same conversation. Their latest answers are in the last
user message, which this system added."""

REVISE_PROMPT = """\
The other agents' latest answers:

{answers}

Use their reasoning as additional information, but think for yourself: any of these answers, yours
included, may be wrong. Check the reasoning step by step, then give your updated answer to the original
question, complete and in the form it asked for."""

OTHER_ANSWER_LABEL = "Another agent's answer {number}"

AGGREGATE_PROMPT = """\
Several agents debated the user's latest request over {rounds} round(s), each revising its answer after
reading the others'. Their final answers are in the last user message, which this system added. Write
the single best answer to the user's request: weigh the arguments critically (agreement is not proof), keep what
is right, fix what is wrong, and answer directly in the form the user asked for. Do not mention the
agents or the debate."""

AGGREGATE_REQUEST = """\
The agents' final answers:

{responses}

Write your answer now."""


class DebateSettings(ExtractionSettings):
    """Debate settings; the fan-out fields apply to round 0 (later rounds go on with whoever answers).

    final: vote (majority of the extracted final answers) or judge (the aggregator synthesizes).
    early_stop: stop debating once every member's extracted answer is the same (needs extract != free).
    tie_break: first (the answer of the earliest member wins a tied vote).
    shuffle_seed: fixes the order in which others' answers are shown (default: random per request).
    """

    final: Literal["vote", "judge"] = "vote"
    early_stop: bool = True
    tie_break: Literal["first"] = "first"
    shuffle_seed: int | None = None


class DebateTopology(StrictModel):
    members: SampledNodeList = Field(min_length=2)
    rounds: int = Field(default=2, ge=0, le=10)
    aggregator: NodeConfig | None = None
    settings: DebateSettings = Field(default_factory=DebateSettings)

    @model_validator(mode="after")
    def _consistent(self) -> "DebateTopology":
        s = self.settings
        if s.final == "judge" and self.aggregator is None:
            raise ValueError("settings.final=judge needs an aggregator node")
        if s.final == "vote" and s.extract == "free":
            raise ValueError("settings.final=vote needs extractable answers (extract is free); use final: judge")
        check_quorum(s, len(self.members), "members")
        return self


class DebateStrategy:
    name: ClassVar[str] = "debate"
    topology_model: ClassVar[type[DebateTopology]] = DebateTopology
    inline_keys: ClassVar[frozenset[str]] = inline_keys_of({"members", "rounds", "aggregator", "settings"},
                                                           DebateSettings)

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        return inline_topology(inline, DebateSettings, ("members", "rounds"),
                               aggregator=inline.get("aggregator") or final_model)

    def count_sub_calls(self, topology: DebateTopology, node: Callable[[NodeConfig], int]) -> int:
        """Leaf sub-calls of one run, an upper bound (composite_llm.budget); `node` counts one node."""
        final = node(topology.aggregator) if topology.aggregator is not None else 0
        return sum(node(n) for n in topology.members) * (topology.rounds + 1) + final

    def member_models(self, topology: DebateTopology) -> list[str]:
        final = [topology.aggregator, *topology.aggregator.fallbacks] if topology.aggregator else []
        return [n.model for n in [*topology.members, *final]]

    async def prepare(self, ctx: RunContext, topology: DebateTopology, messages: list[Any]
                      ) -> FinalCall | FinalText:
        s = topology.settings
        members = (answer_nodes(ctx, topology.members, self.name) if s.final == "vote" else list(topology.members))
        rounds = topology.rounds
        calls = [ctx.plan_all(members, role="member", stage=self._stage(r)) for r in range(rounds + 1)]
        aggregator = (final_candidates(ctx, topology.aggregator, role="aggregator", stage="final synthesis")
                      if topology.aggregator else [])
        extract = make_extractor(s)
        rng = shuffle_rng(ctx, s.shuffle_seed)
        names = [node.label for node in topology.members]
        latest: dict[int, MemberResult] = {}
        history: list[dict[str, Any]] = []
        active = list(range(len(members)))
        stopped_early = False
        for number in range(rounds + 1):
            items = [(calls[number][i], messages if number == 0 else self._revision(messages, latest, i, rng))
                     for i in active]
            outcome = await ctx.fan_out(items, settings=s, stage=self._stage(number),
                                        quorum=s.quorum if number == 0 else 0)
            for i, result in zip(active, outcome.results):
                if result.ok:
                    latest[i] = result
                    if s.extract != "free":
                        result.record.extra["answer"] = extract(result.text)
            left = [i for i, result in zip(active, outcome.results) if not result.ok]
            if left:
                ctx.trace.notes.append(
                    f"round {number}: {', '.join(names[i] for i in left)} failed and left the debate")
            active = [i for i, result in zip(active, outcome.results) if result.ok]
            keys = {i: extract(latest[i].text) for i in sorted(latest)}
            agreed = (s.extract != "free" and len(keys) >= 2 and None not in keys.values()
                      and len(set(keys.values())) == 1)
            history.append({"round": number, "answers": {names[i]: keys[i] for i in keys}, "agreed": agreed})
            if number == rounds:
                break
            if not active:
                ctx.trace.notes.append(f"no member answered in round {number}: the debate ended there")
                break
            if agreed and s.early_stop:
                stopped_early = number < rounds
                ctx.trace.notes.append(f"all members agree on {next(iter(keys.values()))!r} after round {number}: "
                                       f"{rounds - number} round(s) skipped")
                break
        finalists = [latest[i] for i in sorted(latest)]
        require_answers(ctx, "debate", finalists, 1)
        final_keys = [extract(r.text) for r in finalists]
        finalist_names = [names[i] for i in sorted(latest)]
        details: dict[str, Any] = {"rounds_planned": rounds, "rounds_run": len(history) - 1,
                                   "stopped_early": stopped_early, "final": s.final, "rounds": history}
        ctx.trace.details["debate"] = details
        ctx.trace.details["debate rounds"] = "\n".join(
            f"round {h['round']}: " + ", ".join(f"{n}={a}" for n, a in h["answers"].items())
            + ("  (all agree)" if h["agreed"] else "") for h in history) if s.extract != "free" else (
            f"{len(history)} round(s), free-form answers")

        table = tally(final_keys)
        if s.final == "vote" and table.rows:
            tied = table.tied
            chosen = tied[0].voters[0]
            if len(tied) > 1:
                ctx.trace.notes.append(
                    f"tie between {', '.join(repr(r.answer) for r in tied)} with {tied[0].count} votes each, broken by "
                    f"rule 'first': {tied[0].answer!r} wins because {finalist_names[chosen]} gave it first")
            details.update(votes=table.to_list(finalist_names), winner=final_keys[chosen],
                           winner_member=finalist_names[chosen])
            ctx.trace.details["vote"] = render_tally(table, finalist_names, final_keys[chosen])
            winner = finalists[chosen]
            return FinalText(winner.text, finish_reason=winner.finish_reason or "stop")
        if s.final == "vote":
            if not aggregator:
                ctx.trace.notes.append(f"no final answer was extractable ({s.extract}): returning the earliest "
                                       f"member's last answer ({finalist_names[0]})")
                return FinalText(finalists[0].text, finish_reason=finalists[0].finish_reason or "stop")
            ctx.trace.notes.append(f"no final answer was extractable ({s.extract}): the aggregator synthesizes")
        framing = Framing.for_texts(r.text for r in finalists)
        block, labels, order = anonymous_blocks([r.text for r in finalists], rng, framing)
        details["aggregator_saw"] = {label: finalist_names[i] for label, i in zip(labels, order)}
        prompt = AGGREGATE_PROMPT.format(rounds=len(history) - 1)
        return FinalCall(candidates=aggregator, settings=s, messages=framed_messages(
            messages, prompt, framing, AGGREGATE_REQUEST.format(responses=block)))

    @staticmethod
    def _stage(number: int) -> str:
        return "round 0 answers" if number == 0 else f"round {number} revisions"

    @staticmethod
    def _revision(messages: list[Any], latest: dict[int, MemberResult], member: int, rng: Any) -> list[Any]:
        """The member's view for a revision round: the conversation, its own latest answer, and the
        others' latest answers in a shuffled order, framed in the last user turn."""
        others = [latest[j].text for j in sorted(latest) if j != member]
        rng.shuffle(others)
        framing = Framing.for_texts(others)
        shown = framing.blocks([(OTHER_ANSWER_LABEL.format(number=k + 1), text) for k, text in enumerate(others)])
        conversation = [*messages, {"role": "assistant", "content": latest[member].text}]
        request = REVISE_PROMPT.format(answers=shown or "(no other answers)")
        return framed_messages(conversation, REVISE_SYSTEM_PROMPT, framing, request)
