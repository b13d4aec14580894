"""The trace (text and dict), the JSONL trace log, and that secrets appear nowhere a user can read."""

from __future__ import annotations

import json
import threading

import litellm
import pytest

from composite_llm.redact import REDACTED, redact
from composite_llm.trace_log import TRACE_LOG_ENV
from conftest import API_KEY, user

PROPOSERS = ["openai/p1", "openai/p2"]
MOA = "composite/moa/openai/agg"


def _script(server):
    server.set_model("p1", reply="alpha")
    server.set_model("p2", reply="beta", fail_status=401, fail_message=f"Incorrect API key provided: {API_KEY}")
    server.set_model("agg", reply="final")


def test_trace_text_and_dict(server, call_kwargs):
    _script(server)
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    text = response.choices[0].message.reasoning_content
    assert "[layer 1]" in text and "[aggregate]" in text
    assert "✓ proposer openai/p1" in text and "✗ proposer openai/p2" in text
    assert "total: 2/3 sub-calls ok" in text
    data = response.choices[0].message.provider_specific_fields["composite"]
    assert data["strategy"] == "moa" and data["model"] == MOA
    # records are in completion order: the two proposers in either order, then the aggregator
    by_model = {c["model"]: c for c in data["sub_calls"]}
    assert [by_model[m]["status"] for m in ("openai/p1", "openai/p2", "openai/agg")] == ["ok", "failed", "ok"]
    assert data["sub_calls"][-1]["model"] == "openai/agg"
    failed = by_model["openai/p2"]
    assert failed["error_type"] == "AuthenticationError" and failed["attempts"] == 1  # 401 is not retried


def test_sentinel_key_never_leaks(server, call_kwargs, tmp_path, monkeypatch):
    """The key reaches the provider, but not the response, trace, error text or trace log."""
    log = tmp_path / "traces.jsonl"
    monkeypatch.setenv(TRACE_LOG_ENV, str(log))
    _script(server)
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    assert server.requests_for("p1")[0].headers["Authorization"] == f"Bearer {API_KEY}"
    dumped = json.dumps(response.model_dump(), default=str)
    assert API_KEY not in dumped
    assert API_KEY not in response.choices[0].message.reasoning_content
    assert API_KEY not in log.read_text()
    server.set_model("p1", fail_status=500, fail_message=f"echo {API_KEY}")
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    assert API_KEY not in str(info.value)
    assert API_KEY not in log.read_text()


def test_trace_log_lines_concurrent(server, call_kwargs, tmp_path, monkeypatch):
    log = tmp_path / "traces.jsonl"
    monkeypatch.setenv(TRACE_LOG_ENV, str(log))
    server.set_model("p1", reply="a")
    server.set_model("p2", reply="b")
    server.set_model("agg", reply="c")
    threads = [threading.Thread(target=litellm.completion, kwargs=dict(
        model=MOA, messages=user(f"q{i}"), proposers=PROPOSERS, **call_kwargs)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    lines = log.read_text().splitlines()
    assert len(lines) == 6
    records = [json.loads(line) for line in lines]
    assert len({r["request_id"] for r in records}) == 6
    for record in records:
        assert record["usage"]["prompt_tokens"] > 0 and len(record["sub_calls"]) == 3


def test_trace_log_enabled_from_profile_document(server, call_kwargs, tmp_path, explicit_profiles):
    log = tmp_path / "from_doc.jsonl"
    explicit_profiles({"trace_log": {"path": str(log)}, "profiles": {"logged": {"strategy": "moa", "topology": {
        "aggregator": "openai/agg", "proposers": ["openai/p1"]}}}})
    server.set_model("p1", reply="a")
    server.set_model("agg", reply="c")
    litellm.completion(model="composite/profile/logged", messages=user("q"), **call_kwargs)
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["profile"] == "logged" and record["strategy"] == "moa"


def test_failed_request_is_logged_with_error(server, call_kwargs, tmp_path, monkeypatch):
    log = tmp_path / "traces.jsonl"
    monkeypatch.setenv(TRACE_LOG_ENV, str(log))
    server.set_model("p1", fail_status=500)
    server.set_model("p2", fail_status=500)
    with pytest.raises(litellm.ServiceUnavailableError):
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    record = json.loads(log.read_text().splitlines()[-1])
    assert "only 0 of 2 members answered" in record["error"]


@pytest.mark.parametrize("text", [
    "key sk-abcdefghijklmnop in text",
    "Authorization: Bearer abcdefghijklmnop",
    '{"api_key": "whatever-secret-value"}',
    "api_key=plainsecretvalue",
])
def test_redact_patterns(text):
    assert REDACTED in redact(text)


def test_redact_known_values_and_env(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-9f8e7d6c5b")
    assert redact("x tok-9f8e7d6c5b y") == f"x {REDACTED} y"
    assert redact("value custom-secret-123", secrets={"custom-secret-123"}) == f"value {REDACTED}"
