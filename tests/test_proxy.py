"""The real LiteLLM proxy in front of composite profiles, end to end on the fake OpenAI server.

One proxy process serves every HTTP test (module scope); a second one boots the shipped
`litellm_proxy.example.yaml` from the repo root. Both start together so their ~10 s boots overlap, and
both are killed (whole process group) at teardown. The proxy reads the composite profiles from its own
`general_settings.composite_llm`; the sub-calls go to the FakeOpenAIServer running in this process, so
every request the members receive is recorded here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import litellm
import pytest
import yaml

from composite_llm.errors import CompositeConfigError
from composite_llm.profiles import load_proxy_block
from composite_llm.testing import FakeOpenAIServer, count_tokens, stop_process_group

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "litellm_proxy.example.yaml"
START_TIMEOUT_S = 120.0  # two proxies booting at once: ~15 s each on an idle 2-core machine, 45 s when busy
REQUEST_TIMEOUT_S = 30.0

# Per-token prices on every node (aggregator/chairman priced differently) so costs are non-zero and exact.
PROPOSER_PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
FINAL_PRICE = {"input_cost_per_token": 3e-6, "output_cost_per_token": 5e-6}
FINAL_MODELS = {"agg", "chair"}
FAKE_KEY = "sk-fake-upstream-" + secrets.token_hex(8)  # must never reach a client

SPEND_RECORDER = '''
"""Records what LiteLLM's spend tracking sees for each request (one JSON line per success event)."""
import json, os
from litellm.integrations.custom_logger import CustomLogger


class SpendRecorder(CustomLogger):
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        slo = kwargs.get("standard_logging_object") or {}
        line = {"call_id": kwargs.get("litellm_call_id"), "model": kwargs.get("model"),
                "model_group": slo.get("model_group"), "stream": bool(kwargs.get("stream")),
                "response_cost": kwargs.get("response_cost"), "slo_cost": slo.get("response_cost"),
                "total_tokens": slo.get("total_tokens")}
        with open(os.environ["SPEND_RECORD"], "a") as handle:
            handle.write(json.dumps(line) + "\\n")


recorder = SpendRecorder()
'''


# --------------------------------------------------------------------------- proxy process handling
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _litellm_cli() -> str:
    for candidate in (REPO / ".venv" / "bin" / "litellm", Path(sys.executable).parent / "litellm"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("litellm")
    if not found:
        pytest.fail("the `litellm` command is missing: install the proxy extra (make install)")
    return found


class ProxyProcess:
    """`litellm --config ...` in its own process group, with its output in a log file."""

    def __init__(self, name: str, config: Path, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.name, self.config, self.cwd, self.env, self.log = name, config, cwd, env, log
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.master_key = env["LITELLM_MASTER_KEY"]
        self.process: subprocess.Popen | None = None
        self._ready = False

    def start(self) -> "ProxyProcess":
        argv = [_litellm_cli(), "--config", str(self.config), "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.monotonic()
        return self

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> "ProxyProcess":
        if self._ready:
            return self
        assert self.process is not None
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} proxy exited with code {self.process.returncode} during startup; "
                            f"log tail:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health/liveliness", timeout=2).status_code == 200:
                    self._ready = True
                    self.boot_s = time.monotonic() - self.started_at
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"{self.name} proxy not ready within {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process_group(self.process)

    # ------------------------------------------------------------------ HTTP helpers
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}

    def chat(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.base_url}/v1/chat/completions", json=body, headers=self.headers,
                          timeout=REQUEST_TIMEOUT_S)

    def models(self) -> list[str]:
        response = httpx.get(f"{self.base_url}/v1/models", headers=self.headers, timeout=REQUEST_TIMEOUT_S)
        assert response.status_code == 200, f"{response.status_code} {response.text}\n{self.log_tail()}"
        return [m["id"] for m in response.json()["data"]]


def _proxy_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CEREBRAS_API_KEY", "COMPOSITE_LLM_PROFILES", "COMPOSITE_LLM_TRACE_LOG")}
    env.update(LITELLM_MASTER_KEY="sk-" + secrets.token_urlsafe(24), LITELLM_LOCAL_MODEL_COST_MAP="True",
               PYTHONUNBUFFERED="1", **extra)
    return env


# --------------------------------------------------------------------------- the test proxy's config
def _node(model: str, price: dict[str, float]) -> dict[str, Any]:
    return {"model": f"openai/{model}", "provider": "fake", "params": dict(price)}


def _test_config(fake_base_url: str) -> dict[str, Any]:
    deployment = lambda model, **extra: {"model": model, "num_retries": 0, **extra}  # noqa: E731
    return {
        "model_list": [
            {"model_name": "moa_test", "litellm_params": deployment("composite/profile/moa_test")},
            {"model_name": "council_test", "litellm_params": deployment("composite/profile/council_test")},
            # the same profile under a second name, for failure tests (keeps moa_test's router state clean)
            {"model_name": "moa_fail", "litellm_params": deployment("composite/profile/moa_test")},
            {"model_name": "moa_missing", "litellm_params": deployment("composite/profile/no_such_profile")},
            # LiteLLM itself would let a client's api_base through here; composite-llm must still refuse it
            {"model_name": "moa_open", "litellm_params": deployment(
                "composite/profile/moa_test", configurable_clientside_auth_params=["api_base"])},
            {"model_name": "base_agg", "litellm_params": {"model": "openai/agg", "api_base": fake_base_url,
                                                          "api_key": "os.environ/FAKE_UPSTREAM_KEY"}},
            # an inline topology in the deployment itself; its api_base/api_key are the sub-calls' defaults
            {"model_name": "moa_inline", "litellm_params": deployment(
                "composite/moa/openai/agg", proposers=["openai/p1", "openai/p2"], api_base=fake_base_url,
                api_key="os.environ/FAKE_UPSTREAM_KEY")},
        ],
        "litellm_settings": {
            "custom_provider_map": [{"provider": "composite",
                                     "custom_handler": "composite_llm.litellm_provider.COMPOSITE_PROVIDER"}],
            "callbacks": "spend_recorder.recorder",
        },
        "general_settings": {
            "master_key": "os.environ/LITELLM_MASTER_KEY",
            "cancel_on_disconnect": True,  # as in the example config
            "composite_llm": {
                "providers": {"fake": {"litellm_params": {"api_base": fake_base_url,
                                                          "api_key": "os.environ/FAKE_UPSTREAM_KEY"}}},
                "profiles": {
                    "moa_test": {"strategy": "moa", "topology": {
                        "aggregator": _node("agg", FINAL_PRICE),
                        "proposers": [_node(p, PROPOSER_PRICE) for p in ("p1", "p2", "p3")],
                        "settings": {"retries": 0},  # one attempt per member: request counts stay exact
                    }},
                    "council_test": {"strategy": "council", "topology": {
                        "chairman": _node("chair", FINAL_PRICE),
                        "council": [_node(c, PROPOSER_PRICE) for c in ("c1", "c2", "c3")],
                        "settings": {"retries": 0},
                    }},
                },
            },
        },
    }


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def _launched(request, fake, tmp_path_factory):
    """Start the proxies the selected tests need, all at once (their boots overlap); kill them at the end."""
    wanted = {name for item in request.session.items for name in item.fixturenames}
    started: dict[str, ProxyProcess] = {}
    if "proxy" in wanted:
        work = tmp_path_factory.mktemp("proxy")
        (work / "config.yaml").write_text(yaml.safe_dump(_test_config(fake.base_url), sort_keys=False))
        (work / "spend_recorder.py").write_text(SPEND_RECORDER)
        env = _proxy_env(FAKE_UPSTREAM_KEY=FAKE_KEY, SPEND_RECORD=str(work / "spend.jsonl"))
        proxy = ProxyProcess("test", work / "config.yaml", work, env, work / "proxy.log")
        proxy.spend_file = work / "spend.jsonl"
        started["proxy"] = proxy.start()
    if "example_proxy" in wanted:
        work = tmp_path_factory.mktemp("example")
        started["example"] = ProxyProcess("example", EXAMPLE_CONFIG, REPO, _proxy_env(), work / "proxy.log").start()
    try:
        yield started
    finally:
        for proxy in started.values():
            proxy.stop()


@pytest.fixture(scope="module")
def proxy(_launched) -> ProxyProcess:
    return _launched["proxy"].wait_ready()


@pytest.fixture(scope="module")
def example_proxy(_launched) -> ProxyProcess:
    return _launched["example"].wait_ready()


@pytest.fixture()
def server(fake):
    fake.reset()
    yield fake
    fake.reset()


# --------------------------------------------------------------------------- expectations
def _reply(model: str) -> str:
    return {"agg": "The aggregated answer is four.", "chair": "The council says four."}.get(model, f"{model} thinks 4")


def _script(server, **overrides: dict[str, Any]) -> None:
    for name in ("p1", "p2", "p3", "agg", "c1", "c2", "c3", "chair"):
        server.set_model(name, **{"reply": _reply(name), **overrides.get(name, {})})


def _expected_cost(server) -> float:
    total = 0.0
    for r in server.requests:
        if r.status != 200:
            continue
        price = FINAL_PRICE if r.model in FINAL_MODELS else PROPOSER_PRICE
        completion = count_tokens(_reply(r.model))
        total += r.prompt_tokens * price["input_cost_per_token"] + completion * price["output_cost_per_token"]
    return total


def _user(text: str = "What is 2+2?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _spend_records(proxy: ProxyProcess, call_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The spend-tracking records of one request (the success callback runs after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = proxy.spend_file.read_text().splitlines() if proxy.spend_file.exists() else []
        records = [json.loads(line) for line in lines]
        mine = [r for r in records if r["call_id"] == call_id]
        if mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def _error_text(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text


# --------------------------------------------------------------------------- tests: serving
def test_models_lists_public_names(proxy):
    names = proxy.models()
    assert {"moa_test", "council_test", "moa_inline", "base_agg"} <= set(names)


def test_chat_returns_aggregator_answer_with_summed_usage_and_cost(proxy, server):
    _script(server)
    response = proxy.chat({"model": "moa_test", "messages": _user(), "temperature": 0.3})
    assert response.status_code == 200, f"{response.text}\n{proxy.log_tail()}"
    data = response.json()
    assert data["choices"][0]["message"]["content"] == "The aggregated answer is four."
    assert data["model"] == "moa_test"

    # exactly one fan-out: 3 proposers + 1 aggregator reached the upstream, nothing retried
    assert sorted(r.model for r in server.requests) == ["agg", "p1", "p2", "p3"]
    assert all(r.body.get("temperature") == 0.3 for r in server.requests)  # sampling params are allowed

    usage = data["usage"]
    assert usage["prompt_tokens"] == sum(r.prompt_tokens for r in server.requests)
    assert usage["completion_tokens"] == sum(count_tokens(_reply(r.model)) for r in server.requests)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    expected = _expected_cost(server)
    assert expected > 0
    assert float(response.headers["x-litellm-response-cost"]) == pytest.approx(expected, rel=1e-6)
    trace = data["choices"][0]["message"]["provider_specific_fields"]["composite"]
    assert [c["model"] for c in trace["sub_calls"]].count("openai/agg") == 1
    assert "proposer openai/p1" in data["choices"][0]["message"]["reasoning_content"]
    assert FAKE_KEY not in response.text  # upstream credentials never reach the client

    # spend tracking: one record for the composite request (sub-calls log nothing), with the summed cost
    records = _spend_records(proxy, response.headers["x-litellm-call-id"])
    assert len(records) == 1, records
    assert records[0]["response_cost"] == pytest.approx(expected, rel=1e-6)
    assert records[0]["model_group"] == "moa_test"


def test_streaming_returns_aggregator_tokens_and_final_usage(proxy, server):
    _script(server, agg={"chunk_delay_s": 0.01})
    body = {"model": "moa_test", "messages": _user(), "stream": True, "stream_options": {"include_usage": True}}
    content, reasoning, usage, finish, chunks = [], [], None, None, 0
    with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body, headers=proxy.headers,
                      timeout=REQUEST_TIMEOUT_S) as response:
        assert response.status_code == 200, f"{response.read()!r}\n{proxy.log_tail()}"
        call_id = response.headers["x-litellm-call-id"]
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            chunks += 1
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    content.append(delta["content"])
                if delta.get("reasoning_content"):
                    reasoning.append(delta["reasoning_content"])
                finish = choice.get("finish_reason") or finish
            if chunk.get("usage"):
                usage = chunk["usage"]
    assert "".join(content) == "The aggregated answer is four."
    assert len(content) >= 3  # token by token, not one blob
    assert "proposer openai/p2" in "".join(reasoning)  # progress streamed as reasoning before the answer
    assert finish == "stop"
    assert sorted(r.model for r in server.requests) == ["agg", "p1", "p2", "p3"]
    assert usage is not None
    assert usage["prompt_tokens"] == sum(r.prompt_tokens for r in server.requests)
    assert usage["completion_tokens"] == sum(count_tokens(_reply(r.model)) for r in server.requests)
    assert usage["cost"] == pytest.approx(_expected_cost(server), rel=1e-6)  # LiteLLM adds it to the usage chunk
    # the streamed request's spend record carries the summed sub-call cost too
    records = _spend_records(proxy, call_id)
    assert len(records) == 1 and records[0]["stream"], records
    assert records[0]["response_cost"] == pytest.approx(_expected_cost(server), rel=1e-6)


def _stream_and_leave(proxy: ProxyProcess, body: dict[str, Any], leave_when) -> str:
    """Stream through the proxy and drop the connection once `leave_when(text so far)` holds; the call id."""
    text = ""
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        with client.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body,
                           headers=proxy.headers) as response:
            assert response.status_code == 200, f"{response.read()!r}\n{proxy.log_tail()}"
            call_id = response.headers["x-litellm-call-id"]
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[len("data: "):]).get("choices") or []:
                        delta = choice.get("delta") or {}
                        text += (delta.get("reasoning_content") or "") + (delta.get("content") or "")
                if leave_when(text):
                    return call_id
    raise AssertionError(f"the stream ended before the moment to leave: {text[-300:]!r}")


def _answered_cost(server, model: str) -> float:
    price = FINAL_PRICE if model in FINAL_MODELS else PROPOSER_PRICE
    return sum(r.prompt_tokens * price["input_cost_per_token"]
               + count_tokens(_reply(r.model)) * price["output_cost_per_token"] for r in server.requests_for(model))


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_client_leaving_while_members_run_is_billed_and_stops_them(proxy, server):
    """Spend tracking bills a dropped stream from the cost the composite keeps current: the answered
    members, plus the prompt of the one cancelled in flight; that member's upstream request is closed."""
    _script(server, p3={"latency_s": 20})
    body = {"model": "moa_test", "messages": _user("leave while they think"), "stream": True}
    call_id = _stream_and_leave(proxy, body, lambda text: "proposer openai/p1" in text and "proposer openai/p2" in text)
    assert _wait(lambda: not server.open_requests, 5), [r.model for r in server.open_requests]
    records = _spend_records(proxy, call_id, timeout=15)
    assert len(records) == 1, f"{records}\n{proxy.log_tail()}"
    p3_prompt = litellm.token_counter(model="openai/p3", messages=server.requests_for("p3")[0].messages)
    expected = (_answered_cost(server, "p1") + _answered_cost(server, "p2")
                + p3_prompt * PROPOSER_PRICE["input_cost_per_token"])
    assert records[0]["response_cost"] == pytest.approx(expected, rel=1e-6)
    assert not server.requests_for("agg")


def test_a_client_leaving_a_fast_answer_stops_the_upstream_and_is_billed(proxy, server):
    """A 20,000-token aggregator answer, every chunk already buffered; the client leaves after 5 tokens. The
    proxy's composite stops reading (the upstream sees the disconnect long before the end) and the spend
    record holds the members and the aggregator's share so far."""
    words = 20_000
    _script(server, agg={"reply": " ".join(f"w{i}" for i in range(words))})
    body = {"model": "moa_test", "messages": _user("leave a fast answer"), "stream": True}
    call_id = _stream_and_leave(proxy, body, lambda text: "w4 " in text)
    assert _wait(lambda: not server.open_requests, 5), [(r.model, r.chunks_sent) for r in server.open_requests]
    aggregator = server.requests_for("agg")[0]
    assert aggregator.disconnected and aggregator.chunks_sent < words
    records = _spend_records(proxy, call_id, timeout=15)
    assert len(records) == 1, f"{records}\n{proxy.log_tail()}"
    members = sum(_answered_cost(server, p) for p in ("p1", "p2", "p3"))
    assert records[0]["response_cost"] > members + 5 * FINAL_PRICE["output_cost_per_token"]


def test_a_non_streaming_client_that_leaves_cancels_the_fan_out(proxy, server):
    """With `cancel_on_disconnect` (the example config sets it) the proxy cancels the request of a client
    that gave up, and the composite cancels every sub-call: the slow member's upstream request is closed
    seconds later instead of running its full 20 s, and the aggregator is never called."""
    _script(server, p3={"latency_s": 20})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.base_url}/v1/chat/completions", headers=proxy.headers, timeout=2,
                   json={"model": "moa_test", "messages": _user("I will not wait")})
    assert _wait(lambda: len(server.requests_for("p3")) == 1 and not server.open_requests, 8), \
        [r.model for r in server.open_requests]
    assert server.requests_for("p3")[0].disconnected
    assert not server.requests_for("agg")


def test_council_profile_through_proxy(proxy, server):
    _script(server)
    response = proxy.chat({"model": "council_test", "messages": _user()})
    assert response.status_code == 200, f"{response.text}\n{proxy.log_tail()}"
    data = response.json()
    assert data["choices"][0]["message"]["content"] == "The council says four."
    assert len(server.requests_for("chair")) == 1
    assert data["usage"]["prompt_tokens"] == sum(r.prompt_tokens for r in server.requests)
    assert float(response.headers["x-litellm-response-cost"]) == pytest.approx(_expected_cost(server), rel=1e-6)


def test_inline_topology_deployment(proxy, server):
    _script(server)
    response = proxy.chat({"model": "moa_inline", "messages": _user()})
    assert response.status_code == 200, f"{response.text}\n{proxy.log_tail()}"
    assert response.json()["choices"][0]["message"]["content"] == "The aggregated answer is four."
    assert sorted(r.model for r in server.requests) == ["agg", "p1", "p2"]
    assert all(r.headers.get("Authorization") == f"Bearer {FAKE_KEY}" for r in server.requests)


def test_one_member_down_still_one_fan_out(proxy, server):
    _script(server, p2={"fail_status": 500, "fail_message": "p2 is down"})
    response = proxy.chat({"model": "moa_fail", "messages": _user()})
    assert response.status_code == 200, f"{response.text}\n{proxy.log_tail()}"
    assert response.json()["choices"][0]["message"]["content"] == "The aggregated answer is four."
    assert sorted(r.model for r in server.requests) == ["agg", "p1", "p2", "p3"]
    trace = response.json()["choices"][0]["message"]["provider_specific_fields"]["composite"]
    assert trace["failed_members"] and "p2" in json.dumps(trace["failed_members"])


# --------------------------------------------------------------------------- tests: error codes
def test_unknown_profile_is_400_listing_known_names(proxy, server):
    response = proxy.chat({"model": "moa_missing", "messages": _user()})
    assert response.status_code == 400, response.text
    message = _error_text(response)
    assert "no_such_profile" in message and "moa_test" in message and "council_test" in message
    assert server.requests == []


def test_all_members_down_is_5xx_with_readable_message_and_no_rerun(proxy, server):
    down = {"fail_status": 500, "fail_message": "upstream exploded"}
    _script(server, p1=down, p2=down, p3=down)
    response = proxy.chat({"model": "moa_fail", "messages": _user()})
    assert 500 <= response.status_code < 600, response.text
    message = _error_text(response)
    assert "only 0 of 3 members answered" in message and "upstream exploded" in message
    assert FAKE_KEY not in response.text
    # neither the router nor the composite re-ran the fan-out
    assert sorted(r.model for r in server.requests) == ["p1", "p2", "p3"]


def test_all_members_rate_limited_is_429(proxy, server):
    limited = {"fail_status": 429, "fail_message": "slow down"}
    _script(server, p1=limited, p2=limited, p3=limited)
    response = proxy.chat({"model": "moa_fail", "messages": _user()})
    assert response.status_code == 429, response.text
    assert "slow down" in _error_text(response)
    assert sorted(r.model for r in server.requests) == ["p1", "p2", "p3"]


# --------------------------------------------------------------------------- tests: security
@pytest.mark.parametrize("extra", [
    {"proposers": ["openai/evil"]},
    {"quorum": 3},
    {"aggregator": "openai/evil"},
    {"api_key": "sk-client-chosen"},
    {"extra_body": {"proposers": ["openai/evil"]}},
    {"extra_body": {"api_key": "sk-client-chosen"}},
], ids=["proposers", "quorum", "aggregator", "api_key", "extra_body.proposers", "extra_body.api_key"])

def test_request_body_cannot_change_topology_or_credentials(proxy, server, extra):
    _script(server)
    response = proxy.chat({"model": "moa_test", "messages": _user(), **extra})
    assert response.status_code == 400, response.text
    (key,) = extra["extra_body"] if "extra_body" in extra else extra
    assert key in _error_text(response) and "unknown profile" not in _error_text(response)
    assert server.requests == []


def test_request_body_api_base_never_reaches_upstream(proxy, server):
    _script(server)
    # LiteLLM rejects a client api_base on its own. (litellm 1.108.7 without the optional `prisma` package
    # answers that rejection with 500 instead of 400: its auth error handler imports prisma.)
    response = proxy.chat({"model": "moa_test", "messages": _user(), "api_base": "http://127.0.0.1:9/v1"})
    assert response.status_code in (400, 500), response.text
    # Where the operator let LiteLLM pass a client api_base through, composite-llm still refuses it.
    response = proxy.chat({"model": "moa_open", "messages": _user(), "api_base": "http://127.0.0.1:9/v1"})
    assert response.status_code == 400, response.text
    assert "api_base" in _error_text(response) and "allow_request_overrides" in _error_text(response)
    assert server.requests == []


# --------------------------------------------------------------------------- library level (no extra proxy)
class _FakeProxyModule(SimpleNamespace):
    """Stands in for `litellm.proxy.proxy_server`: general_settings is LiteLLM's own SettingsStore."""


def _install_proxy_block(monkeypatch, block: dict[str, Any], config_dir: Path) -> None:
    from litellm.proxy.config_resolvers.settings_store import SettingsStore

    store = SettingsStore("general_settings")
    store.load_yaml({"master_key": "sk-not-used", "composite_llm": block})
    module = _FakeProxyModule(general_settings=store, user_config_file_path=str(config_dir / "config.yaml"))
    monkeypatch.setitem(sys.modules, "litellm.proxy.proxy_server", module)


def _library_block(fake_base_url: str, allow: bool) -> dict[str, Any]:
    config = _test_config(fake_base_url)["general_settings"]["composite_llm"]
    config["providers"]["fake"]["litellm_params"]["api_key"] = FAKE_KEY
    return {**config, "allow_request_overrides": allow}


@pytest.mark.parametrize("allow", [False, True], ids=["default-refuses", "allow_request_overrides"])
async def test_allow_request_overrides_flag(monkeypatch, tmp_path, server, allow):
    """What a proxy with `allow_request_overrides: true` does, without booting a second proxy: the block is
    read from a SettingsStore exactly as the proxy binds it, and the request carries the proxy's body record."""
    _script(server)
    _install_proxy_block(monkeypatch, _library_block(server.base_url, allow), tmp_path)
    proposers = [{"model": "openai/p1", "provider": "fake"}]  # the profile's provider bundles stay usable
    body = {"model": "moa_test", "messages": _user(), "proposers": proposers}
    call = litellm.acompletion(model="composite/profile/moa_test", messages=_user(), proposers=proposers,
                               proxy_server_request={"url": "/v1/chat/completions", "body": body})
    if not allow:
        with pytest.raises(litellm.BadRequestError, match="allow_request_overrides"):
            await call
        assert server.requests == []
        return
    response = await call
    assert response.choices[0].message.content == "The aggregated answer is four."
    assert sorted(r.model for r in server.requests) == ["agg", "p1"]  # the client's one proposer


def test_invalid_block_is_reported_naming_the_field():
    block = {
        "providers": {"fake": {"litellm_params": {"api_base": "http://127.0.0.1:9/v1"}}},
        "profiles": {
            "ok": {"strategy": "moa", "topology": {"aggregator": "openai/a", "proposers": ["openai/b"]}},
            "broken": {"strategy": "moa", "topology": {"aggregator": {"model": "openai/a", "provider": "fake"},
                                                       "proposers": [{"model": "openai/b", "temprature": 0.2}]}},
        },
    }
    with pytest.raises(CompositeConfigError) as raised:
        load_proxy_block(block)
    message = str(raised.value)
    assert "general_settings.composite_llm" in message
    assert "profile 'broken': topology.proposers[0].temprature" in message


async def test_invalid_block_under_proxy_is_400_at_first_use(monkeypatch, tmp_path, server):
    block = {"profiles": {"moa_test": {"strategy": "moa", "topology": {"aggregator": "openai/agg",
                                                                      "proposers": [], "settings": {"quorum": 0}}}}}
    _install_proxy_block(monkeypatch, block, tmp_path)
    with pytest.raises(litellm.BadRequestError) as raised:
        await litellm.acompletion(model="composite/profile/moa_test", messages=_user())
    message = str(raised.value)
    assert "general_settings.composite_llm" in message and "settings.quorum" in message
    assert server.requests == []


# --------------------------------------------------------------------------- the shipped example config
def test_example_config_boots_and_lists_public_names(example_proxy):
    names = set(example_proxy.models())
    assert {"moa_light", "moa_hard", "council_basic", "composer_cli", "self_moa_smollm2", "moa_smollm2",
            "council_smollm2"} <= names
    # no provider keys in the environment: a Cerebras profile fails at call time, naming the variable
    response = example_proxy.chat({"model": "moa_light", "messages": _user()})
    assert response.status_code == 400, response.text
    assert "CEREBRAS_API_KEY" in _error_text(response)


def test_example_config_composite_deployments_never_retry_whole_fan_out():
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    composites = [d for d in config["model_list"] if d["litellm_params"]["model"].startswith("composite/")]
    assert composites and all(d["litellm_params"].get("num_retries") == 0 for d in composites)
    handlers = {e["provider"]: e["custom_handler"] for e in config["litellm_settings"]["custom_provider_map"]}
    assert handlers == {"composite": "composite_llm.litellm_provider.COMPOSITE_PROVIDER",
                        "local": "composite_llm.local.LOCAL_PROVIDER"}
    load_proxy_block(config["general_settings"]["composite_llm"], REPO)  # the whole block validates


# --------------------------------------------------------------------------- demo script and launchers
def test_demo_script_prints_summary_with_cost(proxy, server):
    _script(server)
    env = {**os.environ, "LITELLM_MASTER_KEY": proxy.master_key}
    env.pop("LITELLM_API_KEY", None)
    for extra in ([], ["--stream"]):
        run = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_proxy.py"), "--base-url", proxy.base_url,
                              "--models", "base_agg,moa_test,moa_missing", *extra],
                             capture_output=True, text=True, timeout=60, env=env)
        out = run.stdout
        assert run.returncode == 1, out + run.stderr  # one model fails on purpose
        assert "📊 SUMMARY" in out and "Task: How many r's in strawberry?" in out
        lines = out.splitlines()
        moa = next(i for i, line in enumerate(lines) if line.startswith("  ✓ moa_test"))
        assert "The aggregated answer is four." in lines[moa]
        assert " tok · $0.0" in lines[moa + 1], out  # tokens and the proxy's (summed) cost
        assert any(line.startswith("  ✓ base_agg") for line in lines)
        assert any(line.startswith("  ✗ moa_missing") and "unknown profile" in line for line in lines)


def test_cli_proxy_command(monkeypatch, tmp_path, capsys):
    from composite_llm import cli

    monkeypatch.chdir(tmp_path)
    for name in ("LITELLM_MASTER_KEY", "HOST", "PORT"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["proxy", "--dry-run"]) == 2
    assert "LITELLM_MASTER_KEY is not set" in capsys.readouterr().err

    (tmp_path / ".env").write_text("# comment\nexport LITELLM_MASTER_KEY='sk-from-dotenv'\nPORT=4555  # inline\n")
    assert cli.main(["proxy", "--dry-run"]) == 2
    assert "no proxy config" in capsys.readouterr().err

    (tmp_path / "litellm_proxy.example.yaml").write_text("model_list: []\n")
    assert cli.main(["proxy", "--dry-run"]) == 0
    argv = capsys.readouterr().out.split()
    assert argv[0].endswith("litellm") and argv[1:] == [
        "--config", str(tmp_path / "litellm_proxy.example.yaml"), "--host", "127.0.0.1", "--port", "4555"]

    (tmp_path / "litellm_proxy.yaml").write_text("model_list: []\n")
    monkeypatch.setenv("PORT", "4600")  # the environment wins over .env, flags win over both
    assert cli.main(["proxy", "--dry-run", "--host", "0.0.0.0", "--num-workers", "2", "--", "--detailed_debug"]) == 0
    assert capsys.readouterr().out.split()[1:] == [
        "--config", str(tmp_path / "litellm_proxy.yaml"), "--host", "0.0.0.0", "--port", "4600",
        "--num_workers", "2", "--detailed_debug"]

    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-1234")
    assert cli.main(["proxy", "--dry-run"]) == 2
    assert "publicly known" in capsys.readouterr().err


def test_run_proxy_script(tmp_path):
    script = REPO / "scripts" / "run_proxy_from_env.sh"
    (tmp_path / "litellm_proxy.example.yaml").write_text("model_list: []\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LITELLM_MASTER_KEY", "HOST", "PORT")}
    env["PATH"] = f"{Path(_litellm_cli()).parent}{os.pathsep}{env.get('PATH', '')}"

    run = subprocess.run(["bash", str(script), "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 2 and "LITELLM_MASTER_KEY is not set" in run.stderr and "secrets.token_urlsafe" in run.stderr

    (tmp_path / ".env").write_text('LITELLM_MASTER_KEY="sk-from-dotenv"\nPORT=4555 # inline comment\n')
    run = subprocess.run(["bash", str(script), "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[1:] == ["--config", "litellm_proxy.example.yaml", "--host", "127.0.0.1", "--port", "4555"]

    (tmp_path / "litellm_proxy.yaml").write_text("model_list: []\n")
    run = subprocess.run(["bash", str(script), "--dry-run", "--port", "4700", "--", "--num_workers", "2"],
                         cwd=tmp_path, env={**env, "HOST": "127.0.0.2"}, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[1:] == ["--config", "litellm_proxy.yaml", "--host", "127.0.0.2", "--port", "4700",
                                      "--num_workers", "2"]
