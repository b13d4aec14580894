"""Exact token and cost accounting: what one sub-call used, and the sum over a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # litellm is imported where a LiteLLM object is built (it takes seconds to import)
    from litellm.types.utils import Usage


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


@dataclass
class UsageTotals:
    """Token counts in OpenAI's terms, the one usage type of composite_llm: a sub-call's record, a
    request's sum, a local generation, a CLI agent run. Reasoning tokens are a subset of completion
    tokens; cached (read from a provider cache) and cache-write tokens are subsets of prompt tokens.
    The total is always prompt + completion. LiteLLM-facing shapes come from `to_litellm` (a response's
    usage) and `openai_counts` (a streamed chunk's usage block)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "UsageTotals") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cached_tokens += other.cached_tokens
        self.cache_write_tokens += other.cache_write_tokens

    @classmethod
    def from_usage(cls, usage: Any) -> "UsageTotals":
        """Read a LiteLLM/OpenAI usage object or dict (missing fields count as zero)."""
        if usage is None:
            return cls()
        return cls(
            prompt_tokens=int(_get(usage, "prompt_tokens") or 0),
            completion_tokens=int(_get(usage, "completion_tokens") or 0),
            reasoning_tokens=int(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens") or 0),
            cached_tokens=int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens") or 0),
            cache_write_tokens=int(_get(_get(usage, "prompt_tokens_details"), "cache_creation_tokens") or 0),
        )

    def to_litellm(self) -> Usage:
        # Imported here: the CLI and local packages use this type without paying for litellm's import.
        from litellm.types.utils import CompletionTokensDetailsWrapper, PromptTokensDetailsWrapper, Usage

        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            completion_tokens_details=CompletionTokensDetailsWrapper(reasoning_tokens=self.reasoning_tokens),
            prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=self.cached_tokens),
        )

    def openai_counts(self) -> dict[str, int]:
        """The three counts of an OpenAI usage block (what a streamed chunk carries to LiteLLM)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    def to_dict(self) -> dict[str, int]:
        """Every count, for traces and logs."""
        return {
            **self.openai_counts(),
            "reasoning_tokens": self.reasoning_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }


def response_cost(response: Any) -> float | None:
    """The cost LiteLLM computed for a sub-call response, or None when it has no price for the model."""
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    if cost is None:
        cost = _get(getattr(response, "usage", None), "cost")
    return float(cost) if cost is not None else None


# Per-node prices a profile may set. They are never passed on to `litellm.acompletion`: LiteLLM would
# register them globally for the model name (`litellm.register_model`), so one priced node would change
# the cost of every later call of that model in the process, priced or not (issue 13.1).
PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token")
UNSUPPORTED_PRICE_KEYS = ("input_cost_per_second", "output_cost_per_second", "cost_per_second")


def priced_cost(usage: UsageTotals, price: dict[str, float]) -> float:
    """The cost of one sub-call at a node's own per-token price (cached and reasoning tokens are part of
    prompt and completion tokens and cost the same, as in LiteLLM's generic pricing)."""
    return (usage.prompt_tokens * float(price.get("input_cost_per_token") or 0.0)
            + usage.completion_tokens * float(price.get("output_cost_per_token") or 0.0))
