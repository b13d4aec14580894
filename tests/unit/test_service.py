"""service.py: the async core. `run` and `stream` drive a strategy's prepare and its final step, stream
progress as reasoning before the answer, refuse an oversized topology before any call, and log each request
once (redacted), also when it fails or the client leaves.

Most tests use a scripted strategy (no server, no LiteLLM call); the last two run a real MoA against the
fake server to check the final-call path."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, Field

from composite_llm import service
from composite_llm.engine import RunContext, StreamPiece
from composite_llm.errors import CompositeConfigError
from composite_llm.limits import BudgetScope, SubCallBudget
from composite_llm.model_string import parse_model_string
from composite_llm.request import CompositeRequest, build_request
from composite_llm.schema import FanOutSettings
from composite_llm.strategies import FinalText
from composite_llm.testing import count_tokens
from composite_llm.trace import Trace
from composite_llm.trace_log import TRACE_LOG_ENV
from conftest import API_KEY, user

LEAKED = "sk-leaked0123456789abcdef"


class ScriptTopology(BaseModel):
    members: list[str] = Field(default_factory=list)
    settings: FanOutSettings = Field(default_factory=FanOutSettings)
    fail: bool = False
    hang: bool = False


class ScriptStrategy:
    """A strategy whose prepare records one sub-call per member (as progress), then answers itself."""

    name: ClassVar[str] = "script"
    topology_model: ClassVar[type[BaseModel]] = ScriptTopology
    inline_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self.prepared = 0
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    def topology_from_inline(self, final_model: str, inline: dict[str, Any]) -> dict[str, Any]:
        return {"members": [final_model]}

    def member_models(self, topology: ScriptTopology) -> list[str]:
        return list(topology.members)

    async def prepare(self, ctx: RunContext, topology: ScriptTopology, messages: list[Any]) -> FinalText:
        self.prepared += 1
        for member in topology.members:
            record = ctx.new_record(role="member", stage="members", label=member, model=member)
            record.preview = f"{member} says hi"
            ctx.add_record(record)
            await asyncio.sleep(0)
        if topology.fail:
            raise RuntimeError(f"member crashed with key {LEAKED}")
        if topology.hang:
            self.started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return FinalText("the answer", finish_reason="stop")


def _request(strategy: ScriptStrategy, **topology: Any) -> CompositeRequest:
    return CompositeRequest(
        target=parse_model_string("composite/moa/openai/x"), display_model="composite/script/x", strategy=strategy,
        topology=ScriptTopology(**topology), providers={}, messages=user("q"), shared_params={}, final_params={},
        defaults={}, timeout=None)


@pytest.fixture()
def trace_log(tmp_path, monkeypatch):
    path = tmp_path / "traces.jsonl"
    monkeypatch.setenv(TRACE_LOG_ENV, str(path))

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return lines


async def _drain(agen) -> list[Any]:
    return [item async for item in agen]


async def test_run_returns_the_strategys_answer_and_logs_the_request_once(trace_log):
    strategy = ScriptStrategy()
    request = _request(strategy, members=["a", "b"])
    result = await service.run(request)
    assert (result.text, result.message, result.finish_reason) == ("the answer", None, "stop")
    assert [r.label for r in result.trace.records] == ["a", "b"]
    assert result.trace.request_id == request.request_id and result.trace.finished is not None
    (logged,) = trace_log()
    assert logged["request_id"] == request.request_id and "error" not in logged
    assert [c["label"] for c in logged["sub_calls"]] == ["a", "b"]


async def test_stream_sends_a_header_then_progress_then_the_answer_then_the_trace(trace_log):
    strategy = ScriptStrategy()
    items = await _drain(service.stream(_request(strategy, members=["a", "b"])))
    *pieces, trace = items
    assert isinstance(trace, Trace) and [r.label for r in trace.records] == ["a", "b"]
    assert all(isinstance(p, StreamPiece) for p in pieces)
    assert pieces[0].reasoning == "composite script · composite/script/x\n"
    progress = [p.reasoning for p in pieces[1:-1]]
    assert len(progress) == 2 and progress[0].startswith("✓ member a: ") and progress[1].startswith("✓ member b: ")
    assert all(line.endswith("\n") for line in progress) and not any(p.content for p in pieces[:-1])
    assert (pieces[-1].content, pieces[-1].finish_reason) == ("the answer", "stop")
    assert len(trace_log()) == 1


async def test_a_failing_strategy_raises_and_the_log_keeps_the_redacted_error(trace_log):
    for run in (service.run, lambda request: _drain(service.stream(request))):
        with pytest.raises(RuntimeError, match="member crashed"):
            await run(_request(ScriptStrategy(), members=["a"], fail=True))
    logged = trace_log()
    assert len(logged) == 2
    for line in logged:
        assert line["error"].startswith("member crashed with key ") and LEAKED not in json.dumps(line)
        assert [c["label"] for c in line["sub_calls"]] == ["a"]  # what ran before the failure is kept


async def test_a_client_leaving_a_stream_cancels_the_strategy_and_logs_the_request(trace_log):
    strategy = ScriptStrategy()
    stream = service.stream(_request(strategy, members=["a"], hang=True))
    assert (await stream.__anext__()).reasoning.startswith("composite script")
    assert (await stream.__anext__()).reasoning.startswith("✓ member a")
    await asyncio.wait_for(strategy.started.wait(), 5)
    await stream.aclose()
    assert strategy.cancelled.is_set()  # no orphan task left running the members
    (logged,) = trace_log()
    assert [c["label"] for c in logged["sub_calls"]] == ["a"]  # what ran before the client left is logged


async def test_a_topology_above_its_sub_call_budget_is_refused_before_any_call(trace_log):
    strategy = ScriptStrategy()
    members = ["a", "b", "c"]
    for run in (service.run, lambda request: _drain(service.stream(request))):
        with pytest.raises(CompositeConfigError, match=r"makes 3 sub-calls .* settings.max_sub_calls=2"):
            await run(_request(strategy, members=members, settings=FanOutSettings(max_sub_calls=2)))
    assert strategy.prepared == 0 and trace_log() == []
    # Nested inside a request that already counted it (its budget is current): not checked again.
    with BudgetScope(SubCallBudget(10, "parent")):
        result = await service.run(_request(strategy, members=members, settings=FanOutSettings(max_sub_calls=2)))
    assert result.text == "the answer" and strategy.prepared == 1


# --------------------------------------------------------------------------- a real final call
def _moa(server, **optional_params: Any) -> CompositeRequest:
    return build_request(model="composite/moa/openai/svc-agg", messages=user("What is 2+2?"), api_base=server.base_url,
                         api_key=API_KEY, optional_params={"proposers": ["openai/svc-p1", "openai/svc-p2"],
                                                          **optional_params}, litellm_params={}, timeout=30)


async def test_run_makes_the_final_call_with_the_members_answers(server):
    replies = {"svc-p1": "4", "svc-p2": "four", "svc-agg": "The answer is 4."}
    for model, reply in replies.items():
        server.set_model(model, reply=reply)
    result = await service.run(_moa(server))
    assert (result.text, result.finish_reason) == ("The answer is 4.", "stop")
    assert result.message.content == "The answer is 4."
    assert sorted(r.label for r in result.trace.records) == ["openai/svc-agg", "openai/svc-p1", "openai/svc-p2"]
    # usage is the sum over every sub-call (the fake server counts whitespace-separated tokens)
    assert result.trace.usage.completion_tokens == sum(count_tokens(reply) for reply in replies.values())
    assert result.trace.usage.prompt_tokens == sum(server.requests_for(model)[0].prompt_tokens for model in replies)
    aggregator_saw = json.dumps(server.requests_for("svc-agg")[0].messages)
    assert "four" in aggregator_saw and "svc-p1" not in aggregator_saw  # answers, never model names


async def test_stream_streams_the_final_call_after_the_members_progress(server):
    server.set_model("svc-p1", reply="4")
    server.set_model("svc-p2", reply="four")
    server.set_model("svc-agg", reply="The answer is 4.")
    *pieces, trace = await _drain(service.stream(_moa(server)))
    text = "".join(p.content for p in pieces)
    first_content = next(i for i, p in enumerate(pieces) if p.content)
    assert text == "The answer is 4."
    assert sum("✓ proposer" in p.reasoning for p in pieces[:first_content]) == 2  # both members before the answer
    assert [p.finish_reason for p in pieces if p.finish_reason] == ["stop"]  # the upstream's own finish, once
    assert isinstance(trace, Trace) and len(trace.records) == 3
