"""response.py: a composite result as LiteLLM expects it: the ModelResponse (answer, tool calls, summed usage
and cost where spend tracking reads them, the trace) and the stream's chunks (one id, usage at the end)."""

from __future__ import annotations

import pytest
from litellm.types.utils import ChatCompletionMessageToolCall, ModelResponse

from composite_llm.engine import StreamPiece
from composite_llm.response import PROVIDER_FIELD, StreamChunker, fill_model_response
from composite_llm.service import CompositeResult
from composite_llm.trace import SubCallRecord, Trace
from composite_llm.usage import UsageTotals

TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}


def _trace() -> Trace:
    trace = Trace(request_id="req42", model="composite/moa/openai/agg", strategy="moa")
    for label, usage, cost in (("p1", UsageTotals(10, 4, 1, 3), 0.001), ("p2", UsageTotals(11, 5, 0, 0), None),
                               ("agg", UsageTotals(30, 9, 2, 6), 0.004)):
        trace.add(SubCallRecord(stage="s", role="r", label=label, model=f"openai/{label}", usage=usage, cost=cost))
    trace.finished = trace.started + 1.0  # a finished request: its dict no longer changes
    return trace


def test_the_response_carries_the_answer_summed_usage_cost_and_trace():
    trace = _trace()
    response = fill_model_response(ModelResponse(), CompositeResult("The answer.", None, "length", trace),
                                   "composite/moa/openai/agg")
    message = response.choices[0].message
    assert message.content == "The answer." and message.role == "assistant" and not message.tool_calls
    assert response.choices[0].finish_reason == "length"
    assert response.model == "composite/moa/openai/agg"
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (51, 18, 69)
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert usage.prompt_tokens_details.cached_tokens == 9
    assert response._hidden_params["response_cost"] == pytest.approx(0.005)  # what LiteLLM's spend tracking reads
    assert message.provider_specific_fields[PROVIDER_FIELD] == trace.to_dict()
    assert response._hidden_params["composite_trace"]["sub_calls"][2]["label"] == "agg"
    assert message.reasoning_content.startswith("composite moa · composite/moa/openai/agg · request req42")


def test_an_empty_finish_reason_is_stop():
    response = fill_model_response(ModelResponse(), CompositeResult("x", None, "", _trace()), "m")
    assert response.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("call", [TOOL_CALL, ChatCompletionMessageToolCall(**TOOL_CALL)], ids=["dict", "object"])
def test_tool_calls_of_the_final_message_finish_with_tool_calls_and_no_content(call):
    final_message = type("Msg", (), {"tool_calls": [call]})()
    response = fill_model_response(ModelResponse(), CompositeResult("", final_message, "stop", _trace()), "m")
    message = response.choices[0].message
    assert message.content is None and response.choices[0].finish_reason == "tool_calls"
    (converted,) = message.tool_calls
    assert isinstance(converted, ChatCompletionMessageToolCall)
    assert (converted.id, converted.function.name, converted.function.arguments) == (
        "call_1", "lookup", "{\"q\": \"x\"}")


def test_text_next_to_tool_calls_is_kept():
    final_message = type("Msg", (), {"tool_calls": [TOOL_CALL]})()
    response = fill_model_response(ModelResponse(), CompositeResult("Let me look.", final_message, "stop", _trace()),
                                   "m")
    assert response.choices[0].message.content == "Let me look."


def test_stream_chunks_share_one_id_and_skip_empty_pieces():
    chunker = StreamChunker("composite/moa/openai/agg", "req42")
    chunks = [chunker.piece(StreamPiece(reasoning="progress\n")), chunker.piece(StreamPiece(content="Hel")),
              chunker.piece(StreamPiece(content="lo"))]
    assert chunker.piece(StreamPiece(finish_reason="length")) is None  # nothing to send, but remembered
    assert {c.id for c in chunks} == {"chatcmpl-composite-req42"}
    assert {c.model for c in chunks} == {"composite/moa/openai/agg"}
    assert chunks[0].choices[0].delta.reasoning_content == "progress\n" and chunks[0].choices[0].delta.content is None
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"
    assert all(c.choices[0].finish_reason is None for c in chunks)  # the finish comes with the final chunk

    final = chunker.final(_trace())
    assert final["is_finished"] and final["finish_reason"] == "length" and final["text"] == ""
    assert final["usage"] == {"prompt_tokens": 51, "completion_tokens": 18, "total_tokens": 69,
                              "completion_tokens_details": {"reasoning_tokens": 3},
                              "prompt_tokens_details": {"cached_tokens": 9}}
    assert final["provider_specific_fields"][PROVIDER_FIELD]["usage"]["total_tokens"] == 69


def test_a_stream_with_tool_calls_finishes_with_tool_calls():
    chunker = StreamChunker("m", "r")
    chunk = chunker.piece(StreamPiece(tool_calls=[{"index": 0, **TOOL_CALL}]))
    assert chunk is not None and chunk.choices[0].delta.tool_calls
    chunker.piece(StreamPiece(finish_reason="stop"))
    assert chunker.final(_trace())["finish_reason"] == "tool_calls"
    assert StreamChunker("m", "r").final(_trace())["finish_reason"] == "stop"  # nothing said: stop
