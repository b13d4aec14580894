"""Turning a composite result into what LiteLLM expects: a ModelResponse, or streaming chunks.

The final answer is the content; `reasoning_content` carries the readable trace; the structured trace
goes in `provider_specific_fields["composite"]` (public, unlike `_hidden_params`); usage is the sum over
every sub-call and `_hidden_params["response_cost"]` the summed cost, which is where LiteLLM's spend
tracking (callbacks, the proxy's cost header and spend logs) reads it.
"""

from __future__ import annotations

import time
from typing import Any

from litellm.types.utils import (
    ChatCompletionMessageToolCall,
    Delta,
    GenericStreamingChunk,
    Message,
    ModelResponse,
    ModelResponseStream,
    StreamingChoices,
)

from .engine import StreamPiece
from .service import CompositeResult
from .trace import Trace

PROVIDER_FIELD = "composite"


def _tool_calls(message: Any) -> list[Any] | None:
    calls = getattr(message, "tool_calls", None) if message is not None else None
    if not calls:
        return None
    return [c if isinstance(c, ChatCompletionMessageToolCall) else ChatCompletionMessageToolCall(**(
        c if isinstance(c, dict) else c.model_dump())) for c in calls]


def fill_model_response(model_response: ModelResponse, result: CompositeResult, model_name: str) -> ModelResponse:
    trace = result.trace
    trace_dict = trace.to_dict()
    tool_calls = _tool_calls(result.message)
    message = Message(
        role="assistant",
        content=result.text if (result.text or not tool_calls) else None,
        tool_calls=tool_calls,
        reasoning_content=trace.render_text(),
        provider_specific_fields={PROVIDER_FIELD: trace_dict},
    )
    choice = model_response.choices[0]
    choice.message = message  # type: ignore[union-attr]
    choice.finish_reason = "tool_calls" if tool_calls else (result.finish_reason or "stop")
    model_response.model = model_name
    model_response.created = int(time.time())
    setattr(model_response, "usage", trace.usage.to_litellm())
    model_response._hidden_params["response_cost"] = trace.cost
    model_response._hidden_params["composite_trace"] = trace_dict
    return model_response


class StreamChunker:
    """Builds the chunks of one streamed answer (one fixed id, as LiteLLM's stream wrapper expects)."""

    def __init__(self, model_name: str, request_id: str) -> None:
        self.model_name = model_name
        self.id = f"chatcmpl-composite-{request_id}"
        self.created = int(time.time())
        self.finish_reason: str | None = None
        self.saw_tool_calls = False

    def piece(self, piece: StreamPiece) -> ModelResponseStream | None:
        if piece.finish_reason:
            self.finish_reason = piece.finish_reason
        if piece.tool_calls:
            self.saw_tool_calls = True
        if not (piece.content or piece.reasoning or piece.tool_calls):
            return None
        delta = Delta(
            content=piece.content or None,
            reasoning_content=piece.reasoning or None,
            tool_calls=piece.tool_calls,
            role="assistant",
        )
        return ModelResponseStream(
            id=self.id, created=self.created, model=self.model_name,
            choices=[StreamingChoices(index=0, delta=delta, finish_reason=None)],
        )

    def final(self, trace: Trace) -> GenericStreamingChunk:
        usage = trace.usage
        finish = "tool_calls" if self.saw_tool_calls else (self.finish_reason or "stop")
        return GenericStreamingChunk(
            text="",
            tool_use=None,
            is_finished=True,
            finish_reason=finish,
            usage={
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
                "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            },
            index=0,
            provider_specific_fields={PROVIDER_FIELD: trace.to_dict()},
        )
