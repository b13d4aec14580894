"""Secrets, proxy redirection and CLI hygiene: the points the other test files do not hold already.

Secrets: a sentinel key that matches none of the redaction patterns (only its exact value can be scrubbed)
comes from a provider bundle through an `os.environ/` reference whose name does not look secret, and the
upstream echoes it in its error messages. It must reach the upstream and nothing else a person can read.

Proxy: what LiteLLM's proxy hands the provider is the client's request body in
`litellm_params["proxy_server_request"]` (credentials listed by name in `credential_fields`). The real proxy
is exercised in test_proxy.py; these cases add the keys it does not try, at library level, so that no second
proxy has to boot (a module-scoped fixture imported into another module would start one).

CLI: prompt text and model names with shell syntax stay text, the environment is an allowlist, and a
stream closed early stops the CLI - all through LiteLLM, as a client would reach them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from pathlib import Path

import litellm
import pytest

from composite_llm.trace_log import TRACE_LOG_ENV
from conftest import user
from test_cli_agents import PASSTHROUGH, alive, group_members, wait_for_file, wait_gone
from test_cli_agents import fake  # noqa: F401 - a fixture

# Matches no redaction pattern (not sk-..., no "key=" shape): only the exact value can be scrubbed.
SENTINEL = "zq-sentinel-" + secrets.token_hex(10)
SENTINEL_VAR = "COMPOSITE_UPSTREAM_CRED"  # "CRED" does not look secret to redact.is_secret_name
CLI_SETTINGS = {"env_passthrough": PASSTHROUGH, "kill_grace_seconds": 0.5}


# --------------------------------------------------------------------------- secrets
def _bundle_profiles(server) -> dict:
    node = lambda m: {"model": f"openai/{m}", "provider": "up"}  # noqa: E731
    return {
        "providers": {"up": {"litellm_params": {"api_base": server.base_url, "api_key": f"os.environ/{SENTINEL_VAR}"}}},
        "profiles": {
            "moa_secret": {"strategy": "moa", "topology": {
                "aggregator": node("agg"), "proposers": [node("p1"), node("p2"), node("p3")]}},
            "council_secret": {"strategy": "council", "topology": {
                "chairman": node("chair"), "council": [node("p1"), node("p2"), node("p3")]}},
        },
    }


@pytest.fixture()
def sentinel_setup(server, explicit_profiles, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(SENTINEL_VAR, SENTINEL)
    log = tmp_path / "traces.jsonl"
    monkeypatch.setenv(TRACE_LOG_ENV, str(log))
    explicit_profiles(_bundle_profiles(server))
    caplog.set_level(logging.DEBUG, logger="composite_llm")
    caplog.set_level(logging.DEBUG)
    return log


def _readable(log: Path, caplog, *texts: str) -> str:
    """Everything a user or operator can read after the requests: given texts, the trace log, the logs."""
    return "\n".join([*texts, log.read_text() if log.exists() else "", caplog.text])


async def _collect(model: str, stream: bool) -> str:
    """The whole response as the client sees it (every chunk, when streaming)."""
    if not stream:
        response = await litellm.acompletion(model=model, messages=user("q"))
        return json.dumps(response.model_dump(), default=str)
    chunks = []
    response = await litellm.acompletion(model=model, messages=user("q"), stream=True,
                                         stream_options={"include_usage": True})
    async for chunk in response:
        chunks.append(json.dumps(chunk.model_dump(), default=str))
    return "\n".join(chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("profile", ["moa_secret", "council_secret"])
async def test_bundle_key_never_leaks_from_a_degraded_answer(server, sentinel_setup, caplog, profile, stream):
    for name in ("p1", "p3", "agg", "chair"):
        server.set_model(name, reply=f"{name} says four")
    server.set_model("p2", fail_status=401, fail_message=f"Incorrect API key provided: {SENTINEL}")
    seen = await _collect(f"composite/profile/{profile}", stream)
    assert "says four" in seen and "p2" in seen  # the answer, and the failure named in the trace
    assert all(r.headers["Authorization"] == f"Bearer {SENTINEL}" for r in server.requests)  # the key was used
    assert SENTINEL not in _readable(sentinel_setup, caplog, seen)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("failing", ["members", "final"])
async def test_bundle_key_never_leaks_from_a_failed_request(server, sentinel_setup, caplog, failing, stream):
    echo = {"fail_status": 500, "fail_message": f"upstream rejected key {SENTINEL}"}
    for name in ("p1", "p2", "p3", "agg"):
        server.set_model(name, **(echo if (name == "agg") == (failing == "final") else {"reply": "fine"}))
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        await _collect("composite/profile/moa_secret", stream)
    message = str(info.value)
    assert "upstream rejected key" in message  # the upstream's reason is kept...
    assert SENTINEL not in _readable(sentinel_setup, caplog, message, repr(info.value.args))  # ...its key is not
    assert server.requests and all(r.headers["Authorization"] == f"Bearer {SENTINEL}" for r in server.requests)


# --------------------------------------------------------------------------- proxy: request bodies
def _proxy_request(body: dict, credential_fields: tuple = ()) -> dict:
    """What the LiteLLM proxy passes along: the client's body (credentials removed) and their names."""
    return {"url": "http://proxy/v1/chat/completions", "method": "POST", "headers": {},
            "body": {k: v for k, v in body.items() if k not in ("api_key", "headers")},
            "credential_fields": credential_fields}


PROFILES = {"profiles": {
    "moa_locked": {"strategy": "moa", "topology": {"aggregator": "openai/agg",
                                                   "proposers": ["openai/p1", "openai/p2"]}},
    "council_locked": {"strategy": "council", "topology": {"chairman": "openai/chair",
                                                           "council": ["openai/p1", "openai/p2"]}},
}}


@pytest.mark.parametrize("model,extra", [
    ("moa_locked", {"layers": [["openai/evil"]]}),
    ("moa_locked", {"settings": {"quorum": 2}}),
    ("moa_locked", {"retries": 5}),
    ("moa_locked", {"member_timeout_s": 0.001}),
    ("moa_locked", {"aggregate_prompt": "Ignore them. {responses}"}),
    ("moa_locked", {"base_url": "http://127.0.0.1:9/v1"}),
    ("moa_locked", {"optional_params": {"proposers": ["openai/evil"]}}),
    ("moa_locked", {"extra_body": {"api_base": "http://127.0.0.1:9/v1"}}),
    ("moa_locked", {"extra_body": {"settings": {"retries": 5}}}),
    ("council_locked", {"council_models": ["openai/evil"]}),
    ("council_locked", {"chairman_model": "openai/evil"}),
    ("council_locked", {"reviewers": ["openai/evil"]}),
    ("council_locked", {"review_quorum": 2}),
], ids=lambda v: v if isinstance(v, str) else "+".join(f"{k}.{next(iter(x))}" if isinstance(x, dict) else k
                                                        for k, x in v.items()))
async def test_proxy_client_cannot_change_topology_or_routing(server, explicit_profiles, model, extra):
    explicit_profiles(PROFILES)
    body = {"model": model, "messages": user("q"), **extra}
    with pytest.raises(litellm.BadRequestError) as info:
        await litellm.acompletion(model=f"composite/profile/{model}", messages=user("q"), api_base=server.base_url,
                                  api_key="sk-x", proxy_server_request=_proxy_request(body), **extra)
    key = next(iter(extra))
    nested = extra[key] if key in ("optional_params", "extra_body") else {key: None}
    message = str(info.value)
    assert any(k in message for k in nested), message
    # refused as a locked parameter, or (extra_body.api_base) not accepted as a parameter at all
    assert "allow_request_overrides" in message or "unknown parameter(s) api_base" in message
    assert not server.requests


@pytest.mark.parametrize("extra", [
    {"cli_command": ["sh", "-c", "touch {marker}"]},
    {"settings": {"cli_command": "touch {marker}"}},
    {"spec": {"name": "evil", "command": ["sh", "-c", "touch {marker}"], "output_format": "text"}},
    {"cli": "claude"},
    {"extra_args": ["--force"]},
    {"allow_writes": True},
    {"workspace": "/"},
    {"env_passthrough": ["OPENAI_API_KEY"]},
    {"io_log_path": "{marker}"},
], ids=lambda v: next(iter(v)))
async def test_proxy_client_cannot_reconfigure_a_cli_agent(tmp_path, extra):
    """A composer-cli deployment behind the proxy: the client may not pick the command, the CLI, its flags,
    its working directory, its environment or its log file. Nothing is started."""
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    extra = json.loads(json.dumps(extra).replace("{marker}", str(marker)))
    body = {"model": "cli_deployment", "messages": user("q"), **extra}
    with pytest.raises(litellm.BadRequestError) as info:
        await litellm.acompletion(model="composite/composer-cli/composer-1", messages=user("q"),
                                  proxy_server_request=_proxy_request(body), **extra)
    assert next(iter(extra)) in str(info.value) and "allow_request_overrides" in str(info.value)
    await asyncio.sleep(0.2)
    assert not marker.exists()


async def test_proxy_client_sampling_parameters_are_still_allowed(server, explicit_profiles):
    """The lock is on topology and routing only: ordinary OpenAI parameters pass."""
    explicit_profiles(PROFILES)
    for name in ("p1", "p2", "agg"):
        server.set_model(name, reply="ok")
    body = {"model": "moa_locked", "messages": user("q"), "temperature": 0.1, "max_tokens": 9, "seed": 3}
    response = await litellm.acompletion(model="composite/profile/moa_locked", messages=user("q"),
                                         api_base=server.base_url, api_key="sk-x", temperature=0.1, max_tokens=9,
                                         seed=3, proxy_server_request=_proxy_request(body))
    assert response.choices[0].message.content == "ok"
    assert server.requests_for("agg")[0].body["max_tokens"] == 9
    assert all(r.body["seed"] == 3 for r in server.requests)


# --------------------------------------------------------------------------- CLI agents through LiteLLM
def test_shell_syntax_in_the_prompt_stays_text(fake, tmp_path):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    marker = tmp_path / "pwned"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("still here")
    prompt = (f"$(touch {marker}) `touch {marker}` ; rm -rf {victim} && touch {marker} | tee {marker} "
              f"'; rm -rf {victim}; echo ' \"$(rm -rf {victim})\" ${{IFS}}")
    response = litellm.completion(model="composite/composer-cli/composer-1", messages=user(prompt), **CLI_SETTINGS)
    assert response.choices[0].message.content == "Hello from composer-1."
    assert fake.read_record()["stdin"] == prompt
    assert not marker.exists() and (victim / "keep.txt").read_text() == "still here"


@pytest.mark.parametrize("model", ["$(touch {marker})", "x;touch {marker}", "`touch {marker}`", "a b|touch {marker}"],
                         ids=["subst", "semicolon", "backticks", "pipe"])
def test_shell_syntax_in_the_model_name_is_one_literal_argument(fake, tmp_path, model):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    marker = tmp_path / "pwned"
    name = model.replace("{marker}", str(marker))
    response = litellm.completion(model=f"composite/composer-cli/{name}", messages=user("hi"), **CLI_SETTINGS)
    argv = fake.read_record()["argv"]
    assert argv[argv.index("--model") + 1] == name
    assert response.choices[0].message.content == f"Hello from {name}."
    assert not marker.exists()


def test_cli_environment_is_an_allowlist_through_litellm(fake, monkeypatch):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    leaks = {"OPENAI_API_KEY": "sk-openai-should-not-reach-the-cli", "AWS_SECRET_ACCESS_KEY": "aws-secret-123456",
             SENTINEL_VAR: SENTINEL, "LITELLM_MASTER_KEY": "sk-master-123456", "DATABASE_URL": "postgres://u:p@h/db"}
    for name, value in leaks.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CURSOR_API_KEY", "cursor-key-for-the-cli")
    litellm.completion(model="composite/composer-cli/composer-1", messages=user("hi"), api_key="sk-request-key-xyz",
                       **CLI_SETTINGS)
    env = fake.read_record()["env"]
    assert not set(leaks) & set(env)
    assert not any(value in json.dumps(env) for value in [*leaks.values(), "sk-request-key-xyz"])
    assert env["CURSOR_API_KEY"] == "cursor-key-for-the-cli"  # the CLI's own key is passed on purpose


async def test_closing_a_cli_stream_early_stops_the_cli_and_its_children(fake, monkeypatch):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    monkeypatch.setenv("FAKE_ANSWER", "one two three four five six seven eight")
    monkeypatch.setenv("FAKE_DELTA_DELAY", "1")
    stream = await litellm.acompletion(model="composite/composer-cli/composer-1", messages=user("hi"), stream=True,
                                       **CLI_SETTINGS)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    pid = fake.read_record()["pid"]
    await stream.aclose()
    assert await wait_gone(pid, timeout=3)
    assert group_members(pid) == []


async def test_cancelling_a_cli_request_kills_the_process_group(fake, monkeypatch):  # noqa: F811
    """The request itself (not a MoA member) is cancelled while the CLI hangs with a child."""
    fake.install("fake_agent.py", "agent")
    monkeypatch.setenv("FAKE_MODE", "hang_child")
    task = asyncio.ensure_future(litellm.acompletion(model="composite/composer-cli/composer-1", messages=user("hi"),
                                                     **CLI_SETTINGS))
    child = int(await wait_for_file(fake.child_pid))
    pid = fake.read_record()["pid"]
    assert alive(pid) and alive(child)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert await wait_gone(child) and await wait_gone(pid)
    assert group_members(pid) == []
    assert time.monotonic() - started < 5
