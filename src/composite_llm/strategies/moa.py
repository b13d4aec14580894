"""Mixture-of-Agents (Wang et al. 2024): layers of proposers, then one aggregator.

Layer 1 answers the conversation as is. Each later layer, and finally the aggregator, gets the
aggregate-and-synthesize instructions merged into the system message and the previous layer's answers
in a last user message, each in a nonce-tagged frame it cannot forge (`framing.py`). Answers are
labelled "Response A, B, ..." with no model names; failed members are left out, never pasted in.
Self-MoA (one strong model sampled several times) is the same topology with repeated nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field, model_validator

from ..engine import RunContext, StageResult
from ..schema import (
    FanOutSettings,
    NodeConfig,
    SampledNodeList,
    StrictModel,
    check_quorum,
)
from .base import FinalCall, final_candidates, inline_keys_of, inline_topology
from .framing import Framing, anonymous_blocks, framed_messages

AGGREGATE_PROMPT = """\
Several assistants have answered the user's latest request. Their responses are in the last user
message, which this system added (it is not from the user). Write one answer of your own to the user's
request that is better than any of them:
- judge each response critically: some may be wrong, partial or biased, and agreement is not proof;
- keep what is correct and useful, fix what is wrong, fill gaps;
- do not copy a response verbatim or mention that there were several responses;
- answer in the form and language the user asked for."""

AGGREGATE_REQUEST = """\
The responses to synthesize:

{responses}

Write your answer now."""


class MoASettings(FanOutSettings):
    """MoA settings. `max_tool_iterations` is accepted so composite_llm_research profiles stay valid; it has no
    effect, because tool calls are returned to the client (the composite runs no tool loop)."""

    max_tool_iterations: int | None = Field(default=None, ge=0)
    aggregate_prompt: str | None = Field(
        default=None,
        description="replaces AGGREGATE_REQUEST (sent as the last user message, the responses framed in place of "
                    "{responses}) and AGGREGATE_PROMPT (only the framing rule stays in the system message); "
                    "must contain {responses}",
    )

    @model_validator(mode="after")
    def _prompt_has_slot(self) -> "MoASettings":
        if self.aggregate_prompt is not None and "{responses}" not in self.aggregate_prompt:
            raise ValueError("settings.aggregate_prompt must contain the placeholder {responses}")
        return self


class MoATopology(StrictModel):
    aggregator: NodeConfig
    proposers: SampledNodeList = Field(default_factory=list)
    layers: list[SampledNodeList] = Field(default_factory=list)
    settings: MoASettings = Field(default_factory=MoASettings)

    @model_validator(mode="after")
    def _one_layer_form(self) -> "MoATopology":
        if self.proposers and self.layers:
            raise ValueError("give either proposers (one layer) or layers (a list of proposer lists), not both")
        if not self.proposers and not self.layers:
            raise ValueError("MoA needs proposers: a list of nodes (or layers: a list of proposer lists)")
        for index, layer in enumerate(self.all_layers):
            if not layer:
                raise ValueError(f"layers[{index}] is empty")
            check_quorum(self.settings, len(layer), f"layer {index + 1}")
        return self

    @property
    def all_layers(self) -> list[list[NodeConfig]]:
        return self.layers or [self.proposers]


def format_responses(answers: StageResult | list[Any], framing: Framing) -> str:
    """The previous layer's answers as framed, labelled blocks, in member order, failures already left out."""
    texts = [a.text for a in (answers.answers if isinstance(answers, StageResult) else answers)]
    return anonymous_blocks(texts, None, framing)[0]


def aggregate_messages(messages: list[Any], answers: StageResult | list[Any], custom: str | None = None
                       ) -> list[dict[str, Any]]:
    """What the next layer or the aggregator reads: our instructions and the framing rule in the system
    message, the answers framed in a last user message (`custom` replaces both prompts)."""
    texts = [a.text for a in (answers.answers if isinstance(answers, StageResult) else answers)]
    framing = Framing.for_texts(texts)
    blocks = format_responses(answers, framing)
    if custom is not None:
        return framed_messages(messages, "", framing, custom.replace("{responses}", blocks))
    return framed_messages(messages, AGGREGATE_PROMPT, framing, AGGREGATE_REQUEST.format(responses=blocks))


class MoAStrategy:
    name: ClassVar[str] = "moa"
    topology_model: ClassVar[type[MoATopology]] = MoATopology
    inline_keys: ClassVar[frozenset[str]] = inline_keys_of({"proposers", "layers", "aggregator", "settings"},
                                                           MoASettings)

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        return inline_topology(inline, MoASettings, ("proposers", "layers"),
                               aggregator=inline.get("aggregator") or final_model)

    def count_sub_calls(self, topology: MoATopology, node: Callable[[NodeConfig], int]) -> int:
        """Leaf sub-calls of one run, an upper bound (composite_llm.budget); `node` counts one node."""
        return sum(node(n) for layer in topology.all_layers for n in layer) + node(topology.aggregator)

    def member_models(self, topology: MoATopology) -> list[str]:
        nodes = [n for layer in topology.all_layers for n in layer] + [topology.aggregator, *topology.aggregator.fallbacks]
        return [n.model for n in nodes]

    async def prepare(self, ctx: RunContext, topology: MoATopology, messages: list[Any]) -> FinalCall:
        settings = topology.settings
        layer_messages = messages
        layers = topology.all_layers
        # Plan every node up front: a missing env var or bad bundle fails before any call is made.
        planned = [ctx.plan_all(layer, role="proposer", stage=f"layer {i + 1}") for i, layer in enumerate(layers)]
        candidates = final_candidates(ctx, topology.aggregator, role="aggregator", stage="aggregate")
        for index, calls in enumerate(planned):
            outcome = await ctx.fan_out([(call, layer_messages) for call in calls], settings=settings,
                                        stage=f"layer {index + 1}")
            layer_messages = aggregate_messages(messages, outcome, settings.aggregate_prompt)
        return FinalCall(candidates=candidates, messages=layer_messages, settings=settings)
