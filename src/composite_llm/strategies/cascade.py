"""Cascade: cheap first, escalate on doubt (FrugalGPT-style model cascades, with self-consistency as the
doubt signal).

Tiers run one after another. A tier samples its model k times in parallel (a `local/` model's provider
batches those concurrent requests; other providers get parallel calls) and reads each sample's answer
with self-consistency's extractors (`answers.py`). The tier answers when its leading answer holds at
least `threshold` of its samples and, if it has a `judge`, when the judge's confidence in that answer is
at least `min_confidence`; the response is then the earliest sample that gave the answer, verbatim.
Otherwise the next tier runs. The last tier always answers: one sample is an ordinary final stage
(streamed, fallbacks, the client's tools), several samples are a majority vote. A tier's model may be
any composite (`composite/fusion/...`, `composite/profile/...`): the expensive tier is often one.

The trace says which tier answered and why every earlier tier escalated (`details.cascade`), and
`composite-llm eval` reports the escalation rate of cascade rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field, model_validator

from ..engine import MemberResult, RunContext
from ..schema import NodeConfig, SampledNodes, StrictModel, check_quorum
from .answers import (
    ExtractionSettings,
    Tally,
    make_extractor,
    parse_score,
    render_tally,
    tally,
)
from .base import FinalCall, FinalText, final_candidates, inline_keys_of, split_settings
from .framing import Framing
from .judging import ANSWER_PARAMS, ask_judge, judge_messages

CONFIDENCE_SYSTEM_PROMPT = """\
You are a careful verifier. A proposed answer to the user's most recent message before the last one is
in the last user message. Do not answer the question yourself: check the proposed answer."""

CONFIDENCE_REQUEST = """\
The proposed answer:

{answer}

Check its reasoning and its final answer step by step. Then end your reply with one line in exactly this
form, giving how confident you are that the final answer is correct:
SCORE: <an integer from 0 (certainly wrong) to 10 (certainly right)>"""


_NODE_KEYS = ("provider", "params", "name", "timeout_s", "fallbacks", "instruction")


class CascadeTier(StrictModel):
    """One tier: `model` sampled `samples` times; it answers when the samples agree (and the judge, if
    any, is confident). A plain string is shorthand for `{model: <string>}`."""

    model: NodeConfig
    samples: int = Field(default=1, ge=1, le=32)
    temperature: float | None = Field(default=None, ge=0)
    temperatures: list[float] | None = None
    threshold: float = Field(default=1.0, gt=0, le=1,
                             description="share of the tier's samples the leading answer needs (abstentions count)")
    judge: NodeConfig | None = None
    min_confidence: float = Field(default=0.7, ge=0, le=1, description="judge's SCORE/10 needed to answer")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """`"openai/x"` and the flat form `{model: "openai/x", provider, params, name, timeout_s,
        fallbacks, samples, ...}` (node keys beside `model`, as in the sampled short form)."""
        if isinstance(value, str):
            return {"model": value}
        if isinstance(value, dict) and isinstance(value.get("model"), str):
            node_keys = {k: value[k] for k in _NODE_KEYS if k in value}
            if node_keys:
                rest = {k: v for k, v in value.items() if k not in _NODE_KEYS}
                return {**rest, "model": {"model": value["model"], **node_keys}}
        return value

    @model_validator(mode="after")
    def _temperatures(self) -> "CascadeTier":
        if self.temperatures is not None and len(self.temperatures) != self.samples:
            raise ValueError(f"temperatures has {len(self.temperatures)} values for {self.samples} samples")
        return self

    def sample_nodes(self) -> list[NodeConfig]:
        if self.samples == 1 and self.temperature is None and self.temperatures is None:
            return [self.model]
        return SampledNodes.of(self.model, samples=self.samples, temperature=self.temperature,
                               temperatures=self.temperatures).nodes()


class CascadeSettings(ExtractionSettings):
    """Cascade settings: the extraction settings (how a sample's answer is read) and the fan-out fields,
    which apply to each tier's samples (`quorum` is not used: a tier whose samples fail escalates)."""


class CascadeTopology(StrictModel):
    tiers: list[CascadeTier] = Field(min_length=2)
    settings: CascadeSettings = Field(default_factory=CascadeSettings)

    @model_validator(mode="after")
    def _escalation_possible(self) -> "CascadeTopology":
        for index, tier in enumerate(self.tiers[:-1], start=1):
            if tier.samples < 2 and tier.judge is None:
                raise ValueError(f"tiers[{index - 1}] never escalates: give it samples >= 2 (agreement) or a judge "
                                 "(confidence)")
            if self.settings.extract == "free" and tier.judge is None:
                raise ValueError(f"tiers[{index - 1}]: with settings.extract=free agreement cannot be measured; "
                                 "give the tier a judge")
        check_quorum(self.settings, max(t.samples for t in self.tiers), "the largest tier")
        return self


class CascadeStrategy:
    name: ClassVar[str] = "cascade"
    topology_model: ClassVar[type[CascadeTopology]] = CascadeTopology
    inline_keys: ClassVar[frozenset[str]] = inline_keys_of({"tiers", "settings"}, CascadeSettings)

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        """`tiers` are the tiers tried first; the model string's model is the last tier."""
        tiers = inline.get("tiers")
        tiers = list(tiers) if isinstance(tiers, list) else ([tiers] if tiers is not None else [])
        return {"tiers": [*tiers, final_model], "settings": split_settings(inline, CascadeSettings)}

    def count_sub_calls(self, topology: CascadeTopology, node: Callable[[NodeConfig], int]) -> int:
        """Leaf sub-calls of one run, an upper bound (composite_llm.budget); `node` counts one node."""
        total = 0  # an upper bound: every tier escalates
        for tier in topology.tiers:
            total += sum(node(n) for n in tier.sample_nodes())
            total += node(tier.judge) if tier.judge is not None else 0
        return total

    def member_models(self, topology: CascadeTopology) -> list[str]:
        models: list[str] = []
        for tier in topology.tiers:
            models.append(tier.model.model)
            models.extend(n.model for n in tier.model.fallbacks)
            if tier.judge is not None:
                models.extend([tier.judge.model, *(n.model for n in tier.judge.fallbacks)])
        return models

    async def prepare(self, ctx: RunContext, topology: CascadeTopology, messages: list[Any]) -> FinalCall | FinalText:
        s = topology.settings
        extract = make_extractor(s)
        count = len(topology.tiers)
        # Plan every node first: a bad bundle or missing variable fails before any call is made.
        planned = []
        for number, tier in enumerate(topology.tiers, start=1):
            last = number == count
            nodes = tier.sample_nodes() if not (last and tier.samples == 1) else [tier.model]
            if not last or tier.samples > 1:
                nodes = with_answer_params(ctx, nodes)
            stage = f"tier {number} · {'answer' if last and tier.samples == 1 else 'samples'}"
            calls = (final_candidates(ctx, tier.model, role="answer", stage=stage) if last and tier.samples == 1
                     else ctx.plan_all(nodes, role="sample", stage=stage))
            judge = (final_candidates(ctx, tier.judge, role="judge", stage=f"tier {number} · confidence")
                     if tier.judge is not None else [])
            planned.append((calls, judge))
        if any(k in ctx.final_params for k in ("tools", "functions")):
            ctx.trace.notes.append("tools were offered to the last tier only (earlier tiers answer in text)")
        log: list[dict[str, Any]] = []
        lines: list[str] = []
        details: dict[str, Any] = {"tiers": log, "answered_by": None, "escalations": 0}
        ctx.trace.details["cascade"] = details

        for number, (tier, (calls, judge)) in enumerate(zip(topology.tiers, planned), start=1):
            last = number == count
            label = tier.model.label
            if last and tier.samples == 1:
                details.update(answered_by=number, escalations=number - 1)
                log.append({"tier": number, "model": label, "samples": 1, "accepted": True,
                            "reason": "last tier: it always answers"})
                lines.append(f"tier {number} ({label}): answers (last tier)")
                ctx.trace.details["escalation"] = "\n".join(lines)
                return FinalCall(candidates=calls, messages=messages, settings=s)

            outcome = await ctx.fan_out([(call, messages) for call in calls], settings=s, stage=calls[0].stage,
                                        quorum=0)
            answered = [r for r in outcome.results if r.ok]
            keys = [extract(r.text) if s.extract != "free" else None for r in answered]
            for result, key in zip(answered, keys):
                if s.extract != "free":
                    result.record.extra["answer"] = key
            names = [f"#{i + 1}" for i, r in enumerate(outcome.results) if r.ok]
            table = tally(keys)
            entry: dict[str, Any] = {"tier": number, "model": label, "samples": len(calls),
                                     "answered": len(answered), "votes": table.to_list(names),
                                     "threshold": tier.threshold}
            log.append(entry)
            if not answered:
                entry.update(accepted=False, reason="every sample failed")
                lines.append(f"tier {number} ({label}): every sample failed → escalate")
                if ctx.progress is not None:
                    ctx.progress(lines[-1])
                if last:
                    ctx.trace.details["escalation"] = "\n".join(lines)
                    raise ctx.too_few(outcome, 1)
                continue
            chosen = self._leading(answered, table, s.extract)
            share = (table.leader_share if s.extract != "free" else 1.0)
            entry.update(leader=table.leader.answer if table.leader else None, share=round(share, 4))
            if last:
                entry.update(accepted=True, reason="last tier: majority answer")
                details.update(answered_by=number, escalations=number - 1)
                lines.append(f"tier {number} ({label}): answers (last tier, majority)\n  "
                             + render_tally(table, names, entry["leader"]).replace("\n", "\n  "))
                ctx.trace.details["escalation"] = "\n".join(lines)
                winner = answered[chosen]
                return FinalText(winner.text, finish_reason=winner.finish_reason or "stop")
            reason = self._agreement_reason(table, share, tier.threshold, len(calls), s.extract)
            accepted = s.extract == "free" or (table.leader is not None and share >= tier.threshold)
            if accepted and tier.judge is not None:
                confidence = await self._confidence(ctx, judge, messages, answered[chosen].text, s)
                entry["confidence"] = confidence
                if confidence is None:
                    accepted, reason = False, reason + "; the judge gave no readable confidence"
                else:
                    ok = confidence >= tier.min_confidence
                    accepted = ok
                    reason += (f"; judge confidence {confidence:.2f} {'≥' if ok else '<'} "
                               f"min_confidence {tier.min_confidence}")
            entry.update(accepted=accepted, reason=reason)
            if accepted:
                details.update(answered_by=number, escalations=number - 1)
                lines.append(f"tier {number} ({label}): answers — {reason}")
                ctx.trace.details["escalation"] = "\n".join(lines)
                winner = answered[chosen]
                return FinalText(winner.text, finish_reason=winner.finish_reason or "stop")
            lines.append(f"tier {number} ({label}): escalates — {reason}")
            if ctx.progress is not None:
                ctx.progress(lines[-1])
        raise AssertionError("unreachable: the last tier always answers or raises")  # pragma: no cover

    @staticmethod
    def _leading(answered: list[MemberResult], table: Tally, extract: str) -> int:
        """Index (into `answered`) of the earliest sample giving the leading answer (the first when none)."""
        if extract == "free" or table.leader is None:
            return 0
        return table.leader.voters[0]

    @staticmethod
    def _agreement_reason(table: Tally, share: float, threshold: float, samples: int, extract: str) -> str:
        if extract == "free":
            return "free-form answers: agreement not measured"
        if table.leader is None:
            return f"no sample had an extractable answer ({extract})"
        relation = "≥" if share >= threshold else "<"
        return (f"{table.leader.answer!r} holds {table.leader.count} of {samples} samples "
                f"(share {share:.2f} {relation} threshold {threshold})")

    @staticmethod
    async def _confidence(ctx: RunContext, judge: list, messages: list[Any], answer: str,
                          s: CascadeSettings) -> float | None:
        framing = Framing.for_texts([answer])
        request = judge_messages(messages, CONFIDENCE_SYSTEM_PROMPT, framing,
                                 CONFIDENCE_REQUEST.format(answer=framing.block("Proposed answer", answer)))
        result = await ask_judge(ctx, judge, request, s)
        if result is None:
            return None
        score = parse_score(result.text, 0, 10, quoted_from=[answer], truncated=result.finish_reason == "length")
        if score is not None:
            result.record.extra["confidence"] = score / 10
        return None if score is None else score / 10



def with_answer_params(ctx: RunContext, nodes: list[NodeConfig]) -> list[NodeConfig]:
    """Sampled tiers may return a sample verbatim, so they get the client's answer-shaping parameters
    (max_tokens, response_format, stop); a node's own params still win. Tools are not among them."""
    extra = {k: v for k, v in ctx.final_params.items() if k in ANSWER_PARAMS}
    return [node.model_copy(update={"params": {**extra, **node.params}}) for node in nodes] if extra else nodes
