"""trace.py: the ledger of one request (usage and cost sums, failed/dropped members) and its two renderings,
both redacted."""

from __future__ import annotations

import json

import pytest

from composite_llm.redact import REDACTED
from composite_llm.trace import PREVIEW_CHARS, SubCallRecord, Trace, preview
from composite_llm.usage import UsageTotals

SECRET = "zq7-request-secret-value-93kd"


def _record(label: str, status: str = "ok", *, stage: str = "proposers", role: str = "proposer", cost=0.001,
            prompt: int = 10, completion: int = 5, **extra) -> SubCallRecord:
    return SubCallRecord(stage=stage, role=role, label=label, model=f"openai/{label}", status=status,
                         latency_s=0.25, usage=UsageTotals(prompt_tokens=prompt, completion_tokens=completion,
                                                           reasoning_tokens=1, cached_tokens=2),
                         cost=cost, **extra)


def _trace(**kwargs) -> Trace:
    trace = Trace(request_id="r1", model="composite/moa/openai/agg", strategy="moa", **kwargs)
    trace.add(_record("a", preview="Paris is the capital."))
    trace.add(_record("b", "failed", cost=None, prompt=0, completion=0, error="HTTP 500", error_type="APIError"))
    trace.add(_record("c", "dropped", cost=None, prompt=0, completion=0))
    trace.add(_record("agg", stage="aggregate", role="aggregator", cost=0.002, prompt=30, completion=7, attempts=2))
    return trace


def test_preview_flattens_whitespace_and_cuts_with_an_ellipsis():
    assert preview("  a\n\n b\tc ") == "a b c"
    long = "x" * (PREVIEW_CHARS + 10)
    assert preview(long) == "x" * (PREVIEW_CHARS - 1) + "…" and len(preview(long)) == PREVIEW_CHARS
    assert preview("word " * 3, limit=6) == "word …"
    assert preview(None) == ""  # type: ignore[arg-type]


def test_usage_and_cost_are_sums_over_every_record():
    trace = _trace()
    usage = trace.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens, usage.cached_tokens) == (40, 12, 4, 8)
    assert usage.total_tokens == 52
    assert trace.cost == pytest.approx(0.003)


def test_failed_and_dropped_members_make_the_request_degraded():
    trace = _trace()
    assert trace.failed == ["proposer b"] and trace.dropped == ["proposer c"] and trace.degraded
    clean = Trace(request_id="r", model="m", strategy="moa")
    clean.add(_record("a"))
    assert not clean.degraded


def test_cost_is_complete_only_when_every_successful_call_had_a_price():
    trace = _trace()
    assert trace.cost_complete  # the unpriced records failed or were dropped
    trace.add(_record("d", cost=None))
    assert not trace.cost_complete and trace.cost == pytest.approx(0.003)  # an unknown price counts as 0


def test_render_text_shows_stages_members_degradation_and_totals():
    trace = _trace(notes=["proxy override ignored"])
    trace.details["ranking"] = "A > B"
    trace.details["scores"] = {"A": 1}  # not text: only in the dict
    trace.finished = trace.started + 1.5
    text = trace.render_text()
    lines = text.splitlines()
    assert lines[0] == "composite moa · composite/moa/openai/agg · request r1"
    assert lines.count("[proposers]") == 1 and lines.count("[aggregate]") == 1
    assert "  ✓ proposer a (openai/a): 0.25 s, 10+5 tok, $0.001000" in lines
    assert "      “Paris is the capital.”" in lines  # the preview under its line, indented with it
    assert "  ✗ proposer b (openai/b): failed after 0.25 s, 1 attempt(s): HTTP 500" in lines
    assert "  – proposer c (openai/c): dropped after 0.25 s (straggler cancelled)" in lines
    assert "  ✓ aggregator agg (openai/agg): 0.25 s, 30+7 tok, $0.002000, 2 attempts" in lines
    assert "[ranking]" in lines and "  A > B" in lines and "scores" not in text
    assert "note: proxy override ignored" in lines
    assert "DEGRADED — failed: proposer b; dropped: proposer c" in lines
    assert lines[-1] == "total: 2/4 sub-calls ok, 40 prompt + 12 completion tokens, $0.003000, 1.50 s"


def test_a_record_labelled_by_its_model_is_not_named_twice_and_previews_can_be_hidden():
    trace = Trace(request_id="r", model="m", strategy="moa", show_previews=False)
    record = SubCallRecord(stage="s", role="judge", label="openai/j", model="openai/j", preview="secret plan")
    trace.add(record)
    assert trace.describe(record).startswith("✓ judge openai/j: ")
    assert "secret plan" not in trace.render_text()


def test_to_dict_is_the_structured_trace():
    trace = _trace()
    trace.details["scores"] = {"A": 1}
    trace.details["ranking"] = "A > B"
    data = trace.to_dict()
    json.dumps(data)  # plain JSON
    assert data["usage"] == {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52,
                             "reasoning_tokens": 4, "cached_tokens": 8, "cache_write_tokens": 0}
    assert data["cost"] == pytest.approx(0.003) and data["cost_complete"] is True and data["degraded"] is True
    assert data["failed_members"] == ["proposer b"] and data["dropped_members"] == ["proposer c"]
    assert data["details"] == {"scores": {"A": 1}}  # text details are rendered in the text only
    assert [c["label"] for c in data["sub_calls"]] == ["a", "b", "c", "agg"]
    failed = data["sub_calls"][1]
    assert (failed["status"], failed["error"], failed["error_type"], failed["cost"]) == (
        "failed", "HTTP 500", "APIError", None)
    assert "extra" not in failed
    with_extra = _record("e", extra={"cost_estimated": True}).to_dict()
    assert with_extra["extra"] == {"cost_estimated": True}


def test_every_rendering_is_redacted(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "envsecret-4417-abcdefgh")
    trace = Trace(request_id="r", model="m", strategy="moa", secrets={SECRET})
    leaky = _record("a", preview=f"my key is {SECRET}", error=None)
    failed = _record("b", "failed", error="auth failed for sk-abcdef1234567890 and envsecret-4417-abcdefgh")
    trace.add(leaky)
    trace.add(failed)
    trace.notes.append(f"note with {SECRET}")
    outputs = [trace.render_text(), json.dumps(trace.to_dict()), trace.describe(leaky), trace.describe(failed),
               trace.redact(f"x {SECRET} y")]
    for out in outputs:
        assert SECRET not in out and "sk-abcdef1234567890" not in out and "envsecret-4417-abcdefgh" not in out
        assert REDACTED in out
    assert trace.to_dict()["sub_calls"][0]["preview"] == f"my key is {REDACTED}"


def test_elapsed_stops_when_finished():
    trace = Trace(request_id="r", model="m", strategy="moa")
    trace.finished = trace.started + 2.0
    assert trace.elapsed() == pytest.approx(2.0)
    assert trace.to_dict()["latency_s"] == 2.0
