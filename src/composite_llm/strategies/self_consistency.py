"""Self-consistency (Wang et al. 2022) with adaptive compute, and its universal variant (Chen et al. 2023).

One model is sampled n times; each sample's answer is extracted (a number, a choice letter, the last
line, a regex group, a JSON field, the whole text) and the majority answer wins; the response is the
full text of the earliest sample that gave it, verbatim. Ties go to the answer given first (or to the
judge, `tie_break: judge`). Adaptive compute samples in waves and stops once the leading answer holds
`stop_share` of the samples so far (after `min_samples`), or once no remaining sample could change the
winner. Universal self-consistency: with `extract: free`, or when no sample has an extractable
answer, a judge model reads the anonymized, shuffled samples (framed as untrusted text, `framing.py`)
and picks the most consistent one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..engine import MemberResult, PlannedCall, RunContext
from ..schema import NodeConfig, SampledNodes, StrictModel, check_quorum
from .answers import (
    ExtractionSettings,
    Tally,
    make_extractor,
    parse_picked_label,
    render_tally,
    tally,
)
from .base import FinalText, final_candidates, inline_keys_of, inline_topology
from .framing import Framing, anonymous_blocks
from .judging import (
    answer_nodes,
    ask_judge,
    judge_messages,
    require_answers,
    shuffle_rng,
)

JUDGE_SYSTEM_PROMPT = """\
You are a careful judge. Several responses were sampled for the user's latest request; they are in the
last user message, which this system added. You will select one of them; do not answer the request
yourself."""

JUDGE_REQUEST = """\
Here are the sampled responses, each framed under an anonymous label:

{responses}

Evaluate these responses and select the most consistent one: the response whose final answer agrees
with the majority of the responses (when several do, prefer the clearest and most complete of them).
Start your reply with exactly "The most consistent response is Response X", where X is its label."""


class SelfConsistencySettings(ExtractionSettings):
    """Self-consistency settings; the fan-out fields (quorum, grace_s, deadline_s...) apply to each wave.

    tie_break: first (the answer whose earliest sample came first wins) or judge (the judge picks among
        the tied samples; needs `judge`).
    wave_size: sample in waves of this size (None: all samples at once, fixed n).
    stop_share: stop after a wave when the leading answer's share of the answered samples reaches this
        (needs wave_size); only once at least `min_samples` samples answered.
    stop_when_decided: stop after a wave when the samples left could not change the winner.
    shuffle_seed: fixes the order in which the judge sees the samples (default: random per request).
    """

    tie_break: Literal["first", "judge"] = "first"
    wave_size: int | None = Field(default=None, ge=1)
    stop_share: float | None = Field(default=None, gt=0, le=1)
    min_samples: int = Field(default=3, ge=1)
    stop_when_decided: bool = True
    shuffle_seed: int | None = None


class SelfConsistencyTopology(StrictModel):
    """`model` sampled `samples` times at `temperature` (or one temperature per sample), the same short
    form as MoA's sampled proposers; an optional `judge` for the universal variant and ties."""

    model: NodeConfig
    samples: int = Field(default=5, ge=1, le=64)
    temperature: float | None = Field(default=None, ge=0)
    temperatures: list[float] | None = None
    judge: NodeConfig | None = None
    settings: SelfConsistencySettings = Field(default_factory=SelfConsistencySettings)

    @model_validator(mode="after")
    def _consistent(self) -> "SelfConsistencyTopology":
        s = self.settings
        if self.temperatures is not None and len(self.temperatures) != self.samples:
            raise ValueError(f"temperatures has {len(self.temperatures)} values for {self.samples} samples")
        if s.extract == "free" and self.judge is None:
            raise ValueError("settings.extract=free (universal self-consistency) needs a judge node")
        if s.tie_break == "judge" and self.judge is None:
            raise ValueError("settings.tie_break=judge needs a judge node")
        if s.wave_size is not None and s.wave_size > self.samples:
            raise ValueError(f"settings.wave_size={s.wave_size} exceeds samples={self.samples}")
        if s.stop_share is not None and (s.wave_size is None or s.wave_size >= self.samples):
            raise ValueError("settings.stop_share needs settings.wave_size smaller than samples "
                             "(adaptive sampling runs in waves)")
        if s.stop_share is not None and s.extract == "free":
            raise ValueError("settings.stop_share needs extractable answers (extract is free)")
        check_quorum(s, self.samples, "samples")
        return self

    def sample_nodes(self) -> list[NodeConfig]:
        return SampledNodes.of(self.model, samples=self.samples, temperature=self.temperature,
                               temperatures=self.temperatures).nodes()


class SelfConsistencyStrategy:
    name: ClassVar[str] = "self_consistency"
    topology_model: ClassVar[type[SelfConsistencyTopology]] = SelfConsistencyTopology
    # `temperature` is deliberately not an inline key: the request's temperature reaches every sample.
    inline_keys: ClassVar[frozenset[str]] = inline_keys_of({"samples", "temperatures", "judge", "settings"},
                                                           SelfConsistencySettings)

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        return inline_topology(inline, SelfConsistencySettings, ("samples", "temperatures", "judge"), model=final_model)

    def count_sub_calls(self, topology: SelfConsistencyTopology, node: Callable[[NodeConfig], int]) -> int:
        """Leaf sub-calls of one run, an upper bound (composite_llm.budget); `node` counts one node."""
        judge = node(topology.judge) if topology.judge is not None else 0
        return sum(node(n) for n in topology.sample_nodes()) + judge

    def member_models(self, topology: SelfConsistencyTopology) -> list[str]:
        judge = [topology.judge, *topology.judge.fallbacks] if topology.judge else []
        return [topology.model.model, *(n.model for n in judge)]

    async def prepare(self, ctx: RunContext, topology: SelfConsistencyTopology, messages: list[Any]) -> FinalText:
        s = topology.settings
        calls = ctx.plan_all(answer_nodes(ctx, topology.sample_nodes(), self.name), role="sample", stage="samples")
        judge = final_candidates(ctx, topology.judge, role="judge", stage="judge") if topology.judge else []
        results, keys, waves, stop = await self._sample(ctx, calls, messages, s)
        answers = require_answers(ctx, "samples", results, s.quorum)
        numbers = [f"#{i + 1}" for i, r in enumerate(results) if r.ok]
        answer_keys = [k for r, k in zip(results, keys) if r.ok]
        table = tally(answer_keys)
        chosen, decided_by = await self._choose(ctx, judge, messages, answers, numbers, table, s)
        winner = answers[chosen]
        self._record(ctx, topology, table, numbers, answer_keys, chosen, decided_by, waves, stop, len(results))
        return FinalText(winner.text, finish_reason=winner.finish_reason or "stop")

    # ------------------------------------------------------------------ sampling in waves
    @staticmethod
    async def _sample(ctx: RunContext, calls: list[PlannedCall], messages: list[Any], s: SelfConsistencySettings
                      ) -> tuple[list[MemberResult], list[str | None], list[dict[str, Any]], str]:
        extract = make_extractor(s)
        total = len(calls)
        wave_size = s.wave_size or total
        wave_count = math.ceil(total / wave_size)
        results: list[MemberResult] = []
        keys: list[str | None] = []
        waves: list[dict[str, Any]] = []
        stop = "every wave ran (no early stop)" if wave_count > 1 else "one wave (fixed n)"
        for number, start in enumerate(range(0, total, wave_size), start=1):
            stage = "samples" if wave_count == 1 else f"samples · wave {number}/{wave_count}"
            batch = [replace(call, stage=stage) for call in calls[start:start + wave_size]]
            # quorum 0: a failed wave is judged below, across every wave, not here.
            outcome = await ctx.fan_out([(call, messages) for call in batch], settings=s, stage=stage, quorum=0)
            for result in outcome.results:
                key = extract(result.text) if result.ok else None
                if result.ok and s.extract != "free":
                    result.record.extra["answer"] = key
                results.append(result)
                keys.append(key)
            so_far = tally([k for r, k in zip(results, keys) if r.ok])
            left = total - len(results)
            waves.append({"wave": number, "calls": len(batch), "answered": len(outcome.answers),
                          "leader": so_far.leader.answer if so_far.leader else None,
                          "leader_votes": so_far.leader.count if so_far.leader else 0,
                          "leader_share": round(so_far.leader_share, 4)})
            if not left:
                break
            if not outcome.answers:
                stop = f"wave {number} had no successful sample: sampling stopped"
                break
            leader = so_far.leader
            if leader is None:
                continue
            if s.stop_share is not None and so_far.total >= s.min_samples and so_far.leader_share >= s.stop_share:
                stop = (f"early stop after wave {number}: {leader.answer!r} holds {leader.count} of {so_far.total} "
                        f"answered samples (share {so_far.leader_share:.2f} ≥ stop_share {s.stop_share})")
                break
            if s.stop_when_decided and so_far.decided(left):
                stop = (f"early stop after wave {number}: {leader.answer!r} leads by more than the {left} samples "
                        "left (the winner cannot change)")
                break
        return results, keys, waves, stop

    # ------------------------------------------------------------------ choosing the answer
    async def _choose(self, ctx: RunContext, judge: list[PlannedCall], messages: list[Any],
                      answers: list[MemberResult], numbers: list[str], table: Tally,
                      s: SelfConsistencySettings) -> tuple[int, str]:
        """The index (into `answers`) of the sample returned, and how it was chosen."""
        if len(answers) == 1:
            return 0, "only one sample answered"
        if s.extract == "free" or not table.rows:
            why = "free-form answers" if s.extract == "free" else f"no sample had an extractable answer ({s.extract})"
            if judge:
                return await self._judge(ctx, judge, messages, answers, numbers, list(range(len(answers))), s, why)
            ctx.trace.notes.append(f"{why}: returning the earliest sample ({numbers[0]})")
            return 0, f"{why}; earliest sample"
        tied = table.tied
        if len(tied) == 1:
            return tied[0].voters[0], "majority vote"
        listing = ", ".join(f"{row.answer!r}" for row in tied)
        if s.tie_break == "judge" and judge:
            pool = sorted(i for row in tied for i in row.voters)
            return await self._judge(ctx, judge, messages, answers, numbers, pool, s,
                                     f"tie between {listing} ({tied[0].count} votes each)")
        first = tied[0]
        ctx.trace.notes.append(f"tie between {listing} with {first.count} votes each, broken by rule 'first': "
                               f"{first.answer!r} wins because its earliest sample "
                               f"({numbers[first.voters[0]]}) came first")
        return first.voters[0], "tie broken by rule 'first' (earliest sample)"

    async def _judge(self, ctx: RunContext, judge: list[PlannedCall], messages: list[Any],
                     answers: list[MemberResult], numbers: list[str], pool: list[int],
                     s: SelfConsistencySettings, why: str) -> tuple[int, str]:
        shown = [answers[i].text for i in pool]
        framing = Framing.for_texts(shown)
        block, labels, order = anonymous_blocks(shown, shuffle_rng(ctx, s.shuffle_seed), framing)
        request = judge_messages(messages, JUDGE_SYSTEM_PROMPT, framing, JUDGE_REQUEST.format(responses=block))
        result = await ask_judge(ctx, judge, request, s)
        picked, how = (parse_picked_label(result.text, labels, quoted_from=shown,
                                          truncated=result.finish_reason == "length")
                       if result is not None else (None, "judge failed"))
        ctx.trace.details["judge"] = {
            "reason": why,
            "shown": {label: numbers[pool[i]] for label, i in zip(labels, order)},
            "picked": picked,
            "parsed_by": how,
        }
        if picked is None:
            ctx.trace.notes.append(f"{why}; the judge gave no usable pick ({how}): returning the earliest "
                                   f"candidate sample ({numbers[pool[0]]})")
            return pool[0], f"{why}; judge unusable, earliest sample"
        index = pool[order[labels.index(picked)]]
        if result is not None:
            result.record.extra["picked"] = numbers[index]
        return index, f"{why}; judge picked {picked} = sample {numbers[index]}"

    # ------------------------------------------------------------------ trace
    @staticmethod
    def _record(ctx: RunContext, topology: SelfConsistencyTopology, table: Tally, numbers: list[str],
                keys: list[str | None], chosen: int, decided_by: str, waves: list[dict[str, Any]], stop: str,
                spent: int) -> None:
        s = topology.settings
        winner_key = keys[chosen]
        ctx.trace.details["self_consistency"] = {
            "extract": s.extract,
            "samples_max": topology.samples,
            "samples_spent": spent,
            "samples_answered": len(numbers),
            "waves": waves,
            "stop_reason": stop,
            "votes": table.to_list(numbers) if s.extract != "free" else [],
            "abstained": [numbers[i] for i in table.abstained] if s.extract != "free" else [],
            "winner": winner_key,
            "winner_sample": numbers[chosen],
            "decided_by": decided_by,
            "tie": len(table.tied) > 1,
            "tie_break": s.tie_break,
        }
        head = (f"spent {spent} of {topology.samples} samples"
                + (f" in {len(waves)} waves" if len(waves) > 1 else "") + f"; {stop}")
        body = render_tally(table, numbers, winner_key) if s.extract != "free" else "free-form answers (no vote)"
        ctx.trace.details["vote"] = (f"{head}\n{body}\nreturned: sample {numbers[chosen]} ({decided_by})")
