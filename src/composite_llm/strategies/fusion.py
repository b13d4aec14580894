"""Fusion: a panel answers in parallel, a judge compares the answers privately, then writes the answer.

The shape the gateways converged on (LiteLLM's `litellm/fusion-1`, OpenRouter Fusion, vLLM Semantic
Router): a panel of 1-8 models, and `judge: {model, criteria}`. The judge works in two calls:

1. **comparison** (private): the judge reads the conversation and the panel's answers (framed as
   untrusted text, `framing.py`, labelled Response A, B, ... in a shuffled order, no model names) and
   writes a structured comparison as JSON: consensus, contradictions, gaps, unique points and the errors
   of each answer. It goes to the trace (`details.fusion.comparison`, and `reasoning_content`), never
   to the client's content.
2. **answer** (public): the same judge node reads the conversation, the panel answers and its own
   comparison (both framed) and writes the answer. This is an ordinary final stage: it streams token by
   token, tries the judge's fallbacks, and is the only call that sees the client's `tools`,
   `tool_choice`, `response_format`, `max_tokens` and `stop`.

Why two calls rather than one call with a separator parsed while streaming: with one call the client's
stream would have to be withheld until a separator appears, and a model that forgets or misspells the
separator (small models often do) would either leak its private analysis into the content or deliver
nothing until the end. Tools break it too: a model offered tools may call one before or instead of
writing its comparison. Two calls cost one more read of the panel answers (prompt tokens) but keep the
boundary exact, make the answer call a plain streamed final stage, and let `comparison: false` skip
the first call entirely (the judge then synthesizes straight away, MoA with one aggregator).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field, model_validator

from ..engine import MemberResult, RunContext
from ..errors import CompositeConfigError
from ..schema import (
    FanOutSettings,
    NodeConfig,
    SampledNodeList,
    StrictModel,
    check_quorum,
)
from .base import FinalCall, final_candidates, inline_keys_of, split_settings
from .framing import Framing, anonymous_blocks, framed_messages
from .judging import ask_judge, shuffle_rng

MAX_PANEL = 8
COMPARISON_LABEL = "Your comparison"
COMPARISON_KEYS = ("consensus", "contradictions", "gaps", "unique_points", "errors")

COMPARE_SYSTEM_PROMPT = """\
You are the judge of a panel. Several models answered the user's most recent message before the last
one; their answers are in the last user message. Do not answer the question yet: compare the answers.
{criteria}"""

COMPARE_REQUEST = """\
The panel's answers:

{responses}

Compare them and reply with one JSON object and nothing else, with these keys:
- "consensus": points all or most answers agree on (a list of strings);
- "contradictions": where answers disagree, and which side is right if you can tell (a list of strings);
- "gaps": what every answer missed or got incomplete (a list of strings);
- "unique_points": correct or useful points only one answer makes (a list of strings);
- "errors": an object mapping each answer's label (e.g. "Response A") to a list of its mistakes (an
  empty list when it has none).
Check any calculation or claim yourself before you list it as consensus or as an error."""

ANSWER_SYSTEM_PROMPT = """\
You are answering the user's most recent message before the last one. A panel of models answered it
first, and you compared their answers; both are in the last user message. Write the single best answer
to the user: rely on the consensus only where it is right, resolve the contradictions, fill the gaps,
keep correct unique points and avoid every error your comparison found. Answer directly, in the form and
language the user asked for, and do not mention the panel, the responses or your comparison.
{criteria}"""

ANSWER_REQUEST = """\
The panel's answers:

{responses}

Your private comparison of them:

{comparison}

Write your answer to the user now."""

DIRECT_ANSWER_SYSTEM_PROMPT = """\
You are answering the user's most recent message before the last one. A panel of models answered it
first; their answers are in the last user message. Compare them critically (agreement is not proof),
then write the single best answer to the user: keep what is right, fix what is wrong, fill gaps. Answer
directly, in the form and language the user asked for, and do not mention the panel or the responses.
{criteria}"""

DIRECT_ANSWER_REQUEST = """\
The panel's answers:

{responses}

Write your answer to the user now."""

CRITERIA_LINE = "Judge by these criteria: {criteria}"


class FusionJudge(NodeConfig):
    """The judge node, with the gateways' optional `criteria` (what to prioritize when judging)."""

    criteria: str | None = Field(default=None, min_length=1)


class FusionSettings(FanOutSettings):
    """Fusion settings; the fan-out fields apply to the panel.

    comparison: true (the judge first writes the private structured comparison, then the answer: two
        judge calls) or false (the judge answers straight from the panel's answers: one call).
    comparison_max_tokens: cap on the comparison call's output (None: the node's own params decide).
    shuffle_seed: fixes the order of the Response labels (default: random per request).
    """

    comparison: bool = True
    comparison_max_tokens: int | None = Field(default=None, ge=16)
    shuffle_seed: int | None = None


class FusionTopology(StrictModel):
    panel: SampledNodeList
    judge: FusionJudge
    settings: FusionSettings = Field(default_factory=FusionSettings)

    @model_validator(mode="after")
    def _panel_size(self) -> "FusionTopology":
        if not 1 <= len(self.panel) <= MAX_PANEL:
            raise ValueError(f"the panel takes 1 to {MAX_PANEL} models, got {len(self.panel)}")
        check_quorum(self.settings, len(self.panel), "panel")
        return self


def _criteria(judge: FusionJudge) -> str:
    return CRITERIA_LINE.format(criteria=judge.criteria.strip()) if judge.criteria else ""


def parse_comparison(text: str) -> dict[str, Any] | None:
    """The comparison object from the judge's reply: the last JSON object in it (fenced or bare) that has
    at least one of the expected keys; None when there is none."""
    from .answers import (
        _json_objects,  # the same lenient JSON finder as extract: json_field
    )

    for value in reversed(_json_objects(text)):
        if isinstance(value, dict) and any(key in value for key in COMPARISON_KEYS):
            return value
    return None


def render_comparison(comparison: dict[str, Any] | None, raw: str, shown: dict[str, str]) -> str:
    """The comparison as readable lines for `reasoning_content` (the raw text when it was not JSON)."""
    lines = ["panel: " + ", ".join(f"{label} = {member}" for label, member in shown.items())]
    if comparison is None:
        lines.append("comparison (not JSON, kept as written):")
        lines.extend("  " + line for line in raw.strip().splitlines())
        return "\n".join(lines)
    for key in COMPARISON_KEYS:
        value = comparison.get(key)
        if value in (None, [], {}):
            lines.append(f"{key}: none")
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {label}: {json.dumps(items, ensure_ascii=False)}" for label, items in value.items())
        elif isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"  - {item}" for item in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


class FusionStrategy:
    name: ClassVar[str] = "fusion"
    topology_model: ClassVar[type[FusionTopology]] = FusionTopology
    # `models` is LiteLLM fusion-1's name for the panel, `fusion` its whole object ({models, judge}).
    inline_keys: ClassVar[frozenset[str]] = inline_keys_of(
        {"panel", "models", "judge", "criteria", "fusion", "settings"}, FusionSettings)

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        merged = dict(inline)
        gateway = merged.pop("fusion", None)
        if gateway is not None:
            if not isinstance(gateway, dict):
                raise CompositeConfigError("fusion must be a mapping like {models: [...], judge: {model, criteria}}")
            for key, value in gateway.items():
                merged.setdefault(key, value)
        panel = merged.get("panel", merged.get("models"))
        if "panel" in merged and "models" in merged:
            raise CompositeConfigError("give the panel as panel or as models, not both")
        judge: str | dict[str, Any] = merged.get("judge") or final_model
        if isinstance(judge, str):
            judge = {"model": judge}
        judge = dict(judge)
        judge.setdefault("model", final_model)
        if merged.get("criteria") is not None:
            judge.setdefault("criteria", merged["criteria"])
        topology: dict[str, Any] = {"judge": judge, "settings": split_settings(merged, FusionSettings)}
        if panel is not None:
            topology["panel"] = panel
        return topology

    def count_sub_calls(self, topology: FusionTopology, node: Callable[[NodeConfig], int]) -> int:
        """Leaf sub-calls of one run, an upper bound (composite_llm.budget); `node` counts one node."""
        judge = NodeConfig.model_validate(topology.judge.model_dump(exclude={"criteria"}))
        return sum(node(n) for n in topology.panel) + node(judge) * (2 if topology.settings.comparison else 1)

    def member_models(self, topology: FusionTopology) -> list[str]:
        return [*(n.model for n in topology.panel), topology.judge.model, *(n.model for n in topology.judge.fallbacks)]

    async def prepare(self, ctx: RunContext, topology: FusionTopology, messages: list[Any]) -> FinalCall:
        s = topology.settings
        panel_calls = ctx.plan_all(topology.panel, role="panelist", stage="panel")
        judge_node = NodeConfig.model_validate(topology.judge.model_dump(exclude={"criteria"}))
        compare_node = judge_node
        if s.comparison_max_tokens is not None:
            compare_node = judge_node.model_copy(update={"params": {**judge_node.params,
                                                                     "max_tokens": s.comparison_max_tokens}})
        compare_calls = final_candidates(ctx, compare_node, role="judge", stage="comparison")
        answer_calls = final_candidates(ctx, judge_node, role="judge", stage="answer")
        if any(k in ctx.final_params for k in ("tools", "functions")) and not s.member_tools:
            ctx.trace.notes.append("tools were offered to the judge's answer only (not to the panel or the comparison)")

        outcome = await ctx.fan_out([(call, messages) for call in panel_calls], settings=s, stage="panel")
        texts = [a.text for a in outcome.answers]
        members = [a.call.label for a in outcome.answers]
        framing = Framing.for_texts(texts)
        blocks, labels, order = anonymous_blocks(texts, shuffle_rng(ctx, s.shuffle_seed), framing)
        shown = {label: members[i] for label, i in zip(labels, order)}
        criteria = _criteria(topology.judge)
        details: dict[str, Any] = {"panel": shown, "comparison_step": s.comparison,
                                   "criteria": topology.judge.criteria}
        ctx.trace.details["fusion"] = details

        if not s.comparison:
            final_messages = framed_messages(messages, DIRECT_ANSWER_SYSTEM_PROMPT.format(criteria=criteria).strip(),
                                             framing, DIRECT_ANSWER_REQUEST.format(responses=blocks))
            return FinalCall(candidates=answer_calls, messages=final_messages, settings=s)

        compare_messages = framed_messages(messages, COMPARE_SYSTEM_PROMPT.format(criteria=criteria).strip(),
                                           framing, COMPARE_REQUEST.format(responses=blocks))
        result: MemberResult | None = await ask_judge(ctx, compare_calls, compare_messages, s)
        if result is None:
            # No comparison: the judge still answers (from the panel alone), and the trace says so.
            ctx.trace.notes.append("the judge's comparison call failed: it answers from the panel's answers alone")
            details.update(comparison=None, comparison_parsed=False)
            final_messages = framed_messages(messages, DIRECT_ANSWER_SYSTEM_PROMPT.format(criteria=criteria).strip(),
                                             framing, DIRECT_ANSWER_REQUEST.format(responses=blocks))
            return FinalCall(candidates=answer_calls, messages=final_messages, settings=s)

        raw = result.text
        parsed = parse_comparison(raw)
        details.update(comparison=parsed if parsed is not None else raw, comparison_parsed=parsed is not None)
        if parsed is None:
            ctx.trace.notes.append("the judge's comparison was not JSON: kept as written")
        ctx.trace.details["comparison"] = render_comparison(parsed, raw, shown)
        if ctx.progress is not None:  # streaming: the comparison is reasoning, before the answer's tokens
            ctx.progress("[comparison]\n" + ctx.trace.details["comparison"])
        # The comparison is model output too (it may quote a panel answer): framed, with a fresh nonce.
        answer_framing = Framing.for_texts([*texts, raw])
        answer_blocks = answer_framing.blocks([(label, texts[i]) for label, i in zip(labels, order)])
        comparison_block = answer_framing.block(COMPARISON_LABEL, raw)
        final_messages = framed_messages(messages, ANSWER_SYSTEM_PROMPT.format(criteria=criteria).strip(),
                                         answer_framing,
                                         ANSWER_REQUEST.format(responses=answer_blocks, comparison=comparison_block))
        return FinalCall(candidates=answer_calls, messages=final_messages, settings=s)

