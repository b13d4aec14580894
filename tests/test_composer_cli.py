"""CLI agents through LiteLLM: `composite/composer-cli/<model>`, `composite/cli/<spec>/<model>`, profiles,
streaming, timeouts with children killed, and a CLI agent as a MoA proposer."""

from __future__ import annotations

import json
import os
import time

import litellm
import pytest

from conftest import API_KEY, user
from test_cli_agents import PASSTHROUGH, alive, fake  # noqa: F401 - `fake` is a fixture

SETTINGS = {"env_passthrough": PASSTHROUGH, "kill_grace_seconds": 0.5}


def test_composer_cli_answers_with_system_and_user(fake, tmp_path):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    messages = [{"role": "system", "content": "You are a careful coder."},
                {"role": "user", "content": "Write hello world in Python."}]
    response = litellm.completion(model="composite/composer-cli/composer-1", messages=messages, **SETTINGS)
    assert response.choices[0].message.content == "Hello from composer-1."
    assert response.model == "composite/composer-cli/composer-1"
    record = fake.read_record()
    argv = record["argv"]
    assert argv[argv.index("--model") + 1] == "composer-1"
    assert "Write hello world in Python." in record["stdin"] and "You are a careful coder." in record["stdin"]
    assert record["cwd"] != os.getcwd() and not os.path.exists(record["cwd"])  # fresh temp dir, removed
    assert "--mode" in argv and argv[argv.index("--mode") + 1] == "ask" and "--force" not in argv
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert trace["sub_calls"][0]["model"] == "cli/cursor/composer-1"


def test_300kb_prompt_reaches_the_agent_intact(fake):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    big = ("lorem ipsum dolor sit amet " * 12000)[:300_000]
    litellm.completion(model="composite/composer-cli/composer-1", messages=user(big), **SETTINGS)
    assert fake.read_record()["stdin"] == big


def test_hanging_agent_with_child_is_killed_on_timeout(fake, monkeypatch):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    monkeypatch.setenv("FAKE_MODE", "hang_child")
    started = time.monotonic()
    with pytest.raises(litellm.Timeout):
        litellm.completion(model="composite/composer-cli/composer-1", messages=user("hi"), timeout=3, **SETTINGS)
    assert time.monotonic() - started < 15
    child = int(fake.child_pid.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


async def test_streaming_deltas(fake, monkeypatch):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    monkeypatch.setenv("FAKE_ANSWER", "one two three four")
    stream = await litellm.acompletion(model="composite/composer-cli/composer-1", messages=user("count"), stream=True,
                                       **SETTINGS)
    pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "one two three four"
    assert len(pieces) > 1


def test_generic_cli_form_and_profile(fake, explicit_profiles):  # noqa: F811
    fake.install("fake_claude.py", "claude")
    response = litellm.completion(model="composite/cli/claude/sonnet", messages=user("hi"), **SETTINGS)
    assert "sonnet" in response.choices[0].message.content
    fake.install("fake_agent.py", "agent")
    explicit_profiles({"profiles": {"composer_cli": {"strategy": "composer-cli", "topology": {
        "model": "composer-1", "settings": {"timeout_seconds": 30, "max_output_bytes": 65536, **SETTINGS}}}}})
    response = litellm.completion(model="composite/profile/composer_cli", messages=user("hi"))
    assert response.choices[0].message.content == "Hello from composer-1."


def test_missing_cli_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model="composite/composer-cli/composer-1", messages=user("hi"))
    assert "agent" in str(info.value)


def test_crash_is_an_api_error_without_secrets(fake, monkeypatch):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    monkeypatch.setenv("FAKE_MODE", "crash")
    monkeypatch.setenv("CURSOR_API_KEY", API_KEY)
    with pytest.raises(litellm.APIError) as info:
        litellm.completion(model="composite/composer-cli/composer-1", messages=user("hi"), **SETTINGS)
    assert API_KEY not in str(info.value)


def test_cli_agent_as_moa_proposer(fake, server, call_kwargs):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    server.set_model("p1", reply="http proposal")
    server.set_model("agg", reply="merged")
    response = litellm.completion(
        model="composite/moa/openai/agg", messages=user("hi"), **call_kwargs,
        proposers=["openai/p1", {"model": "composite/composer-cli/composer-1", "params": SETTINGS}],
    )
    assert response.choices[0].message.content == "merged"
    proposals = server.requests_for("agg")[0].last_user_text  # member answers: user-role content
    assert "Hello from composer-1." in proposals and "http proposal" in proposals
    # the nested composite's api_key default did not leak into the CLI's environment
    assert API_KEY not in json.dumps(fake.read_record()["env"])


def test_unknown_cli_spec_lists_known(server):
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/cli/nosuch/model", messages=user("hi"))
    assert "cursor" in str(info.value) and "claude" in str(info.value)


def test_answer_cut_at_the_output_cap_finishes_with_length(fake, monkeypatch):  # noqa: F811
    """Issue 14.9: a cut answer is `length` with a trace note, never a clean `stop`."""
    fake.install("fake_agent.py", "agent")
    monkeypatch.setenv("FAKE_MODE", "huge_json")
    response = litellm.completion(model="composite/composer-cli/composer-1", messages=user("hi"),
                                  max_output_bytes=200_000, **SETTINGS)
    choice = response.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content and set(choice.message.content) <= {"z", "\n"}
    trace = choice.message.provider_specific_fields["composite"]
    assert any("truncated at 200000 bytes" in note for note in trace["notes"])


async def test_streamed_answer_cut_at_the_output_cap_finishes_with_length(fake, monkeypatch):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    monkeypatch.setenv("FAKE_MODE", "huge_json")
    stream = await litellm.acompletion(model="composite/composer-cli/composer-1", messages=user("hi"), stream=True,
                                       max_output_bytes=200_000, **SETTINGS)
    finishes = [c.choices[0].finish_reason async for c in stream if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]


def test_50mb_without_a_newline_is_a_502_not_an_empty_200(fake, monkeypatch):  # noqa: F811
    fake.install("fake_agent.py", "agent")
    monkeypatch.setenv("FAKE_MODE", "huge_noline")
    with pytest.raises(litellm.APIError) as info:
        litellm.completion(model="composite/composer-cli/composer-1", messages=user("hi"), **SETTINGS)
    assert info.value.status_code == 502
    assert "exceeded max_output_bytes" in str(info.value)


@pytest.mark.parametrize("extra", [
    {"cli_base_url": "http://attacker.example/v1"},  # would send the operator's CLI key elsewhere
    {"settings": {"cli_base_url": "http://attacker.example/v1"}},
    {"keep_sessions": True},
    {"state_dir": "home"},
    {"supervise": False},
])
async def test_proxy_client_cannot_redirect_or_weaken_a_cli_agent(fake, extra):  # noqa: F811
    from test_security import _proxy_request

    fake.install("fake_agent.py", "agent")
    body = {"model": "cli_deployment", "messages": user("q"), **extra}
    with pytest.raises(litellm.BadRequestError) as info:
        await litellm.acompletion(model="composite/composer-cli/composer-1", messages=user("q"),
                                  proxy_server_request=_proxy_request(body), **extra)
    assert next(iter(extra)) in str(info.value) and "allow_request_overrides" in str(info.value)
    assert not fake.record.exists()  # nothing was started
