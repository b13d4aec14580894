"""Engine-facing helpers shared by the strategies whose answer is one member's text, returned verbatim
(self-consistency, best-of-n, debate by vote), and by those that ask a judge model.

- `answer_nodes`: the members that produce the final answer get the client's answer-shaping parameters
  (max_tokens, response_format, stop), which the engine otherwise gives to the final stage only.
- `shuffle_rng`: the generator that shuffles candidates for `framing.anonymous_blocks` (a fixed seed or the
  request's own).
- `judge_messages`: the judge's prompt, our instructions in the system message and the framed candidates
  (untrusted) in the last user message (`framing.py`).
- `ask_judge`: one judge call, trying the node's fallbacks; None when every one failed (recorded).
- `require_answers`: the quorum check across several fan-outs (waves, rounds), with the engine's error.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from ..engine import MemberResult, PlannedCall, RunContext, StageResult
from ..schema import FanOutSettings, NodeConfig
from .framing import Framing, framed_messages

# Final-stage parameters that shape the answer text itself. When the answer *is* a member's text, that
# member must get them; tools are not passed (a vote or a judge returns text, never tool calls).
ANSWER_PARAMS = ("max_tokens", "max_completion_tokens", "response_format", "stop")


def answer_nodes(ctx: RunContext, nodes: Sequence[NodeConfig], strategy: str) -> list[NodeConfig]:
    """`nodes` with the client's answer-shaping parameters added (a node's own params still win)."""
    extra = {k: v for k, v in ctx.final_params.items() if k in ANSWER_PARAMS}
    if any(k in ctx.final_params for k in ("tools", "functions")):
        ctx.trace.notes.append(f"tools were not offered to the members: {strategy} returns one member's text, "
                               "never tool calls")
    if not extra:
        return list(nodes)
    return [node.model_copy(update={"params": {**extra, **node.params}}) for node in nodes]


def shuffle_rng(ctx: RunContext, seed: int | None) -> random.Random:
    """A fixed-seed generator when the settings give a seed, else the request's own."""
    return random.Random(seed) if seed is not None else ctx.rng


def judge_messages(messages: list[Any], system_prompt: str, framing: Framing, request: str
                   ) -> list[dict[str, Any]]:
    """The conversation (so the judge sees the question as asked, images included), our judging
    instructions and the framing rule merged into its system message, and the material to judge,
    framed, as a last user turn."""
    return framed_messages(messages, system_prompt, framing, request)


async def ask_judge(ctx: RunContext, calls: Sequence[PlannedCall], messages: list[Any],
                    settings: FanOutSettings) -> MemberResult | None:
    """Run a judge call, trying its fallbacks in order. Failures are recorded in the trace, not raised."""
    for call in calls:
        result = await ctx.call(call, messages, settings=settings)
        if result.ok:
            return result
    return None


def require_answers(ctx: RunContext, stage: str, results: list[MemberResult], needed: int) -> list[MemberResult]:
    """The successful results, or the engine's too-few-answers error (429/timeout/503 by cause)."""
    answers = [r for r in results if r.ok]
    if len(answers) < max(needed, 1):
        raise ctx.too_few(StageResult(stage=stage, results=results), max(needed, 1))
    return answers

