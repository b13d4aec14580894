"""Scale-out on real parts: a real Redis, two LiteLLM proxy instances (one of them with two workers) booted
from the shipped `litellm_proxy.router.example.yaml`, composites whose members are the proxy's own model
groups (`router/<model_name>`), the FakeOpenAIServer of this process as every deployment's upstream.

The only change to the shipped config is a spend probe callback (one JSON line per request LiteLLM logs, with
the process id). What must hold: both instances serve every profile with the exact summed cost, logged once;
the scarce deployment's rpm limit holds for the fleet (counted where the calls land, at the fake server);
composites degrade instead of failing; killing one instance mid-load loses no request the other can serve.

`redis-server` must be installed (`make redis-server`, a prerequisite of `make test`); the fixture starts its
own on a free loopback port with a temporary directory and kills it at the end.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from composite_llm.testing import FakeOpenAIServer, count_tokens, stop_process_group
from test_proxy import REQUEST_TIMEOUT_S, ProxyProcess, _free_port, _proxy_env

REPO = Path(__file__).resolve().parents[1]
ROUTER_CONFIG = REPO / "litellm_proxy.router.example.yaml"
START_TIMEOUT_S = 150.0  # two proxies (three processes) booting at once on a busy 2-core machine
MODELS = ("fast-a", "fast-b", "smart", "judge")
LATENCY_S = 0.05

SPEND_PROBE = '''
"""Every request LiteLLM logs: one JSON line (call id, response id, model group, cost, process id)."""
import json, os
from litellm.integrations.custom_logger import CustomLogger


class SpendProbe(CustomLogger):
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        slo = kwargs.get("standard_logging_object") or {}
        line = {"call_id": kwargs.get("litellm_call_id"), "id": getattr(response_obj, "id", None),
                "model_group": slo.get("model_group"), "stream": bool(kwargs.get("stream")),
                "response_cost": kwargs.get("response_cost"), "pid": os.getpid()}
        with open(os.environ["SPEND_RECORD"], "a") as handle:
            handle.write(json.dumps(line) + "\\n")


probe = SpendProbe()
'''


# --------------------------------------------------------------------------- processes
class RedisServer:
    """`redis-server` on a free loopback port, no persistence, in its own process group."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run `make redis-server` (make test does it first)")
        self.port = _free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--protected-mode", "yes"]
        self.log = workdir / "redis.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def wait_ready(self, timeout: float = 10.0) -> "RedisServer":
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.1)
        pytest.fail(f"redis-server not ready within {timeout:.0f} s")

    def stop(self) -> None:
        stop_process_group(self.process)


class FleetProxy(ProxyProcess):
    """A proxy instance with extra litellm arguments (`--num_workers 2`)."""

    def __init__(self, *args: Any, extra_args: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_args = extra_args

    def start(self) -> "FleetProxy":
        from test_proxy import _litellm_cli

        argv = [_litellm_cli(), "--config", str(self.config), "--host", "127.0.0.1", "--port", str(self.port),
                *self.extra_args]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.monotonic()
        return self

    def kill(self) -> None:
        stop_process_group(self.process, sig=signal.SIGKILL)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def upstream():
    with FakeOpenAIServer() as server:
        _script(server)
        yield server


def _reply(model: str) -> str:
    return f"{model} says the answer is 4"


def _script(server: FakeOpenAIServer, latency: float = LATENCY_S) -> None:
    for model in MODELS:
        server.set_model(model, reply=_reply(model), latency_s=latency)


@pytest.fixture(scope="module")
def fleet(upstream, tmp_path_factory):
    """Redis, then instance `a` (one worker) and `b` (two workers) from the shipped config plus the probe."""
    work = tmp_path_factory.mktemp("fleet")
    redis_server = RedisServer(work).wait_ready()
    config = yaml.safe_load(ROUTER_CONFIG.read_text())
    config["litellm_settings"]["callbacks"] = "spend_probe.probe"
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (work / "spend_probe.py").write_text(SPEND_PROBE)
    proxies: dict[str, FleetProxy] = {}
    try:
        for name, extra in (("a", ()), ("b", ("--num_workers", "2", "--timeout_worker_healthcheck", "120"))):
            env = _proxy_env(UPSTREAM_API_BASE=upstream.base_url, UPSTREAM_API_KEY="sk-fake-upstream",
                             REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_server.port),
                             SPEND_RECORD=str(work / f"spend-{name}.jsonl"))
            env["LITELLM_MASTER_KEY"] = proxies["a"].master_key if proxies else env["LITELLM_MASTER_KEY"]
            proxy = FleetProxy(name, work / "config.yaml", work, env, work / f"proxy-{name}.log", extra_args=extra)
            proxy.spend_file = work / f"spend-{name}.jsonl"
            proxies[name] = proxy.start()
        for proxy in proxies.values():
            proxy.wait_ready(START_TIMEOUT_S)
        yield proxies
    finally:
        for proxy in proxies.values():
            proxy.stop()
        redis_server.stop()


class _Since:
    """The upstream's requests from the start of one test on (the full record stays for the rpm count)."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server, self.start = server, len(server.requests)

    @property
    def requests(self) -> list[Any]:
        return self.server.requests[self.start:]

    def requests_for(self, model: str) -> list[Any]:
        return [r for r in self.requests if r.model == model]


@pytest.fixture()
def fresh(upstream):
    return _Since(upstream)


# --------------------------------------------------------------------------- helpers
def _user(text: str = "What is 2+2?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _price(model: str) -> tuple[float, float]:
    return (1e-6, 2e-6) if model.startswith("fast") else (3e-6, 5e-6)


def _cost_of(requests: list[Any]) -> float:
    total = 0.0
    for r in requests:
        if r.status == 200:
            inp, out = _price(r.model)
            total += r.prompt_tokens * inp + count_tokens(_reply(r.model)) * out
    return total


def _records(proxy: FleetProxy) -> list[dict[str, Any]]:
    if not proxy.spend_file.exists():
        return []
    return [json.loads(line) for line in proxy.spend_file.read_text().splitlines() if line.strip()]


def _records_of(proxy: FleetProxy, call_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        mine = [r for r in _records(proxy) if r["call_id"] == call_id]
        if mine or time.monotonic() > deadline:
            time.sleep(0.3)  # a second (double) record would arrive right after the first
            return [r for r in _records(proxy) if r["call_id"] == call_id]
        time.sleep(0.1)


def _trace(response: httpx.Response) -> dict[str, Any]:
    return response.json()["choices"][0]["message"]["provider_specific_fields"]["composite"]


def _wall(server_request: Any) -> datetime:
    """The wall-clock time a request reached the fake server (it records time.monotonic())."""
    return datetime.fromtimestamp(time.time() - (time.monotonic() - server_request.started), tz=timezone.utc)


# --------------------------------------------------------------------------- the rpm limit (first: a fresh window)
def test_rpm_limit_holds_across_instances_and_composites_degrade(fleet, fresh):
    """`smart` allows 4 requests per minute. 24 composite requests over both instances (three processes with
    their own in-memory counters) each want one `smart` call: per instance it would take 8 or more a minute;
    shared through Redis it stays near 4. Every request is answered: a member over the limit is left out."""
    limit = 4
    results = _load(fleet, 24, pace_s=0.25)
    assert all(r is not None and r.status_code == 200 for _, r in results), \
        [(n, r.status_code if r is not None else None, r.text[:300] if r is not None else None) for n, r in results]
    assert Counter(name for name, _ in results) == {"a": 12, "b": 12}
    degraded = [r for _, r in results if _trace(r)["failed_members"]]
    assert degraded, "the rpm limit never bit"
    assert all("router/smart" in json.dumps(_trace(r)["failed_members"]) for r in degraded)
    # every call `smart` received in this module so far, by the minute window LiteLLM counts in (UTC H:M)
    per_minute = Counter(_wall(r).strftime("%H:%M") for r in fresh.server.requests_for("smart"))
    # LiteLLM counts in memory and syncs with Redis every second: a burst can pass one or two extra calls
    # between syncs, but never the 2-3x a per-instance limit would allow.
    print(f"smart calls per minute window: {dict(per_minute)} (limit {limit}); degraded {len(degraded)}/24")
    assert max(per_minute.values()) <= limit + 2, per_minute
    assert sum(1 for r in fresh.requests_for("fast-a") + fresh.requests_for("fast-b")) >= 48


# --------------------------------------------------------------------------- serving and spend
@pytest.mark.parametrize("model", ["moa_groups", "council_groups"])
@pytest.mark.parametrize("instance", ["a", "b"])
def test_every_instance_serves_every_profile_with_the_exact_cost_logged_once(fleet, fresh, instance, model):
    proxy = fleet[instance]
    response = proxy.chat({"model": model, "messages": _user()})
    assert response.status_code == 200, f"{response.text}\n{proxy.log_tail()}"
    data = response.json()
    assert data["choices"][0]["message"]["content"] == _reply("judge")
    trace = _trace(response)
    assert {c["model"] for c in trace["sub_calls"]} <= {"router/fast", "router/smart", "router/judge"}
    served = [r for r in fresh.requests if r.status == 200]
    assert {r.model for r in served} & {"fast-a", "fast-b"} and "judge" in {r.model for r in served}
    # usage and cost: the exact sum over the calls that reached the deployments
    assert data["usage"]["prompt_tokens"] == sum(r.prompt_tokens for r in served)
    expected = _cost_of(fresh.requests)
    assert float(response.headers["x-litellm-response-cost"]) == pytest.approx(expected, rel=1e-6)
    # one spend record, the composite's own, with its own id; no sub-call is logged as a request
    records = _records_of(proxy, response.headers["x-litellm-call-id"])
    assert len(records) == 1, records
    assert records[0]["model_group"] == model and records[0]["id"] == data["id"]
    assert records[0]["response_cost"] == pytest.approx(expected, rel=1e-6)
    assert not [r for r in _records(proxy) if r["model_group"] in ("fast", "smart", "judge")]


def test_streamed_composite_is_logged_once_with_the_summed_cost(fleet, fresh):
    proxy = fleet["a"]
    body = {"model": "moa_groups", "messages": _user(), "stream": True, "stream_options": {"include_usage": True}}
    ids, usage, content = set(), None, []
    with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body, headers=proxy.headers,
                      timeout=REQUEST_TIMEOUT_S) as response:
        assert response.status_code == 200, response.read()
        call_id = response.headers["x-litellm-call-id"]
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[len("data: "):])
                ids.add(chunk["id"])
                usage = chunk.get("usage") or usage
                content += [c["delta"].get("content") or "" for c in chunk.get("choices") or []]
    assert "".join(content) == _reply("judge")
    assert len(ids) == 1  # one id for every chunk, the composite's own
    expected = _cost_of(fresh.requests)
    assert usage["cost"] == pytest.approx(expected, rel=1e-6)
    records = _records_of(proxy, call_id)
    assert len(records) == 1 and records[0]["stream"], records  # not billed a second time
    assert records[0]["response_cost"] == pytest.approx(expected, rel=1e-6)
    assert records[0]["id"] in ids


# --------------------------------------------------------------------------- the fleet under load
def _load(fleet: dict[str, FleetProxy], count: int, *, pace_s: float, model: str = "moa_groups",
          targets: tuple[str, ...] = ("a", "b"), workers: int = 6,
          on_sent: Any = None, failovers: list[int] | None = None) -> list[tuple[str, httpx.Response | None]]:
    """`count` requests started `pace_s` apart, round-robin over `targets`; a request whose instance is gone
    (connection refused/reset) is sent to the next instance, as a load balancer would (its index is appended
    to `failovers`)."""
    results: list[tuple[str, httpx.Response | None]] = [("", None)] * count
    lock = threading.Lock()

    def one(index: int) -> None:
        order = targets[index % len(targets):] + targets[:index % len(targets)]
        for name in order:
            proxy = fleet[name]
            try:
                response = proxy.chat({"model": model, "messages": _user(f"Question {index}: what is 2+2?")})
            except httpx.TransportError:
                if failovers is not None:
                    with lock:
                        failovers.append(index)
                continue  # the instance died under us: try the next one
            with lock:
                results[index] = (name, response)
            return

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index in range(count):
            pool.submit(one, index)
            if on_sent is not None:
                on_sent(index)
            time.sleep(pace_s)
    return results


def test_two_workers_of_one_instance_both_serve(fleet, fresh):
    results = _load(fleet, 16, pace_s=0.02, targets=("b",), workers=8)
    assert all(r is not None and r.status_code == 200 for _, r in results)
    pids = {r["pid"] for r in _records(fleet["b"])}
    assert len(pids) >= 2, pids  # the spend probe runs inside the worker that served the request


def test_killing_one_instance_mid_load_loses_no_request(fleet, upstream):  # last: `a` stays dead
    """Instance `a` is SIGKILLed (its whole process group) while requests are in flight on it; those and
    every later one are answered by `b` (the client fails over like a load balancer)."""
    _script(upstream, latency=0.3)  # requests stay in flight long enough to be cut
    killed = threading.Event()

    def kill_after(index: int) -> None:
        if index == 6 and not killed.is_set():
            fleet["a"].kill()
            killed.set()

    failovers: list[int] = []
    try:
        results = _load(fleet, 16, pace_s=0.1, model="moa_groups", on_sent=kill_after, failovers=failovers)
    finally:
        _script(upstream)
    assert killed.is_set() and fleet["a"].process.poll() is not None
    assert all(r is not None and r.status_code == 200 for _, r in results), results
    served = Counter(name for name, _ in results)
    print(f"served by instance: {dict(served)}; failed over from the killed instance: {sorted(failovers)}")
    # requests 0, 2 and 4 went to `a` before the kill (at the 7th send) and need >= 0.6 s (two 0.3 s stages):
    # at least one was cut in flight and answered by `b`; later ones found `a` gone
    assert any(index < 6 for index in failovers), failovers
    assert served["b"] >= 13 and served["a"] + served["b"] == 16, served
