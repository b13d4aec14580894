"""What real clients do to a composite behind a real LiteLLM proxy (issues 13 and 14), with the official
`openai` SDK at its defaults (two retries on 408/429/5xx) wherever the issue names a client.

The proxy process, its base config and the fake upstream come from tests/test_proxy.py; this module adds
the deployments and profiles its cases need (priced and unpriced profiles sharing one aggregator model, a
profile the model_list does not expose, a bundle whose key variable is empty, a small input cap) and the
request guard callback. Every upstream request is recorded by the in-process FakeOpenAIServer, so the
figures below are counts of what actually reached an upstream.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from test_proxy import (FAKE_KEY, FINAL_PRICE, PROPOSER_PRICE, REQUEST_TIMEOUT_S, SPEND_RECORDER, ProxyProcess,
                        _error_text, _proxy_env, _reply, _script, _test_config, _user, fake, server)  # noqa: F401

import composite_llm
from composite_llm.testing import count_tokens

INPUT_CAP = 200_000


def _node(model: str, price=None) -> dict:
    return {"model": f"openai/{model}", "provider": "fake", **({"params": dict(price)} if price else {})}


def _client_config(fake_base_url: str) -> dict:
    config = _test_config(fake_base_url)
    block = config["general_settings"]["composite_llm"]
    block["max_input_bytes"] = INPUT_CAP
    block["providers"]["empty"] = {"litellm_params": {"api_base": fake_base_url,
                                                      "api_key": "os.environ/EMPTY_UPSTREAM_KEY"}}
    moa = lambda aggregator, proposers: {"strategy": "moa", "topology": {  # noqa: E731
        "aggregator": aggregator, "proposers": proposers, "settings": {"retries": 0}}}
    block["profiles"].update({
        "priced": moa(_node("agg", FINAL_PRICE), [_node("p1", PROPOSER_PRICE)]),
        "plain": moa(_node("agg"), [_node("p1")]),
        "internal_only": moa(_node("agg"), [_node("p1")]),  # defined, but no deployment exposes it
        "needs_empty_key": moa({"model": "openai/agg", "provider": "empty"},
                               [{"model": "openai/p1", "provider": "empty"}]),
    })
    for name in ("priced", "plain", "needs_empty_key"):
        config["model_list"].append({"model_name": name,
                                     "litellm_params": {"model": f"composite/profile/{name}", "num_retries": 0}})
    # separate public names per failure test, so one test's router state (cooldowns) never touches another
    for name in ("sdk_fail", "sdk_rate", "sdk_rate_paid", "sdk_bad_params", "sdk_refused"):
        config["model_list"].append({"model_name": name,
                                     "litellm_params": {"model": "composite/profile/moa_test", "num_retries": 0}})
    config["litellm_settings"]["callbacks"] = ["spend_recorder.recorder", "composite_llm.proxy_guard.REQUEST_GUARD"]
    return config


@pytest.fixture(scope="module")
def proxy(fake, tmp_path_factory):
    work = tmp_path_factory.mktemp("clients")
    (work / "config.yaml").write_text(yaml.safe_dump(_client_config(fake.base_url), sort_keys=False))
    (work / "spend_recorder.py").write_text(SPEND_RECORDER)
    env = _proxy_env(FAKE_UPSTREAM_KEY=FAKE_KEY, SPEND_RECORD=str(work / "spend.jsonl"), EMPTY_UPSTREAM_KEY="")
    # the proxy runs in a temp dir: it must import the composite_llm under test, wherever PYTHONPATH pointed
    source_root = str(Path(composite_llm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    process = ProxyProcess("clients", work / "config.yaml", work, env, work / "proxy.log")
    process.spend_file = work / "spend.jsonl"
    process.start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture()
def client(proxy) -> openai.OpenAI:
    """The official SDK exactly as users create it: default retries (2) and backoff."""
    with openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key=proxy.master_key, timeout=REQUEST_TIMEOUT_S) as sdk:
        assert sdk.max_retries == 2
        yield sdk


# --------------------------------------------------------------------------- 13.3 client retries
def test_sdk_default_retries_do_not_rerun_a_failed_fan_out(client, server):
    down = {"fail_status": 500, "fail_message": "upstream exploded"}
    _script(server, p1=down, p2=down, p3=down)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="sdk_fail", messages=_user())
    assert info.value.status_code == 503 and "only 0 of 3 members answered" in info.value.message
    assert info.value.response.headers.get("x-should-retry") == "false"
    assert sorted(r.model for r in server.requests) == ["p1", "p2", "p3"]  # one fan-out (was three)


def test_sdk_429_with_nothing_paid_is_retried_after_retry_after(client, server):
    limited = {"fail_status": 429, "fail_message": "slow down", "retry_after": "1"}
    _script(server, p1=limited, p2=limited, p3=limited)
    with pytest.raises(openai.RateLimitError) as info:
        client.with_options(max_retries=1).chat.completions.create(model="sdk_rate", messages=_user())
    headers = info.value.response.headers
    assert headers.get("x-should-retry") == "true" and headers.get("retry-after") == "1"
    assert len(server.requests) == 6  # the client's one retry, after the upstream's Retry-After: no cost


def test_sdk_429_after_paid_sub_calls_is_not_retried(client, server):
    _script(server, agg={"fail_status": 429, "fail_message": "slow down"})
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="sdk_rate_paid", messages=_user())
    assert info.value.response.headers.get("x-should-retry") == "false"
    assert sorted(r.model for r in server.requests) == ["agg", "p1", "p2", "p3"]  # proposers ran (and cost) once


# --------------------------------------------------------------------------- 14.6 bad parameters
@pytest.mark.parametrize("params", [{"max_tokens": 0}, {"temperature": -1}], ids=["max_tokens=0", "temperature=-1"])
def test_sdk_invalid_parameters_cost_no_upstream_call(client, server, params):
    _script(server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="sdk_bad_params", messages=_user(), **params)
    assert next(iter(params)) in info.value.message
    assert server.requests == []  # refused before any sub-call (was every member, three times)


def test_sdk_members_all_refusing_with_400_is_one_fan_out(client, server):
    refused = {"fail_status": 400, "fail_message": "context length exceeded"}
    _script(server, p1=refused, p2=refused, p3=refused)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="sdk_refused", messages=_user())
    assert "context length exceeded" in info.value.message
    assert sorted(r.model for r in server.requests) == ["p1", "p2", "p3"]


# --------------------------------------------------------------------------- 13.2 multi-turn
@pytest.mark.parametrize("form", ["object", "model_dump"])
def test_sdk_multi_turn_history_sends_no_trace_to_members(client, server, form):
    _script(server)
    first = client.chat.completions.create(model="moa_test", messages=_user("first question"))
    message = first.choices[0].message
    assert "reasoning_content" in message.model_dump() and "provider_specific_fields" in message.model_dump()
    messages: list = [*_user("first question")]
    messages.append(message if form == "object" else message.model_dump())
    messages += _user("and the second?")
    server.reset()
    _script(server)
    second = client.chat.completions.create(model="moa_test", messages=messages)
    assert second.choices[0].message.content == _reply("agg")
    assert sorted(r.model for r in server.requests) == ["agg", "p1", "p2", "p3"]
    for request in server.requests:
        sent = json.dumps(request.messages)
        assert "reasoning_content" not in sent and "provider_specific_fields" not in sent and "sub_calls" not in sent
        assert any(m.get("role") == "assistant" and m.get("content") == _reply("agg") for m in request.messages)


# --------------------------------------------------------------------------- 13.1 prices through the proxy
def _cost(response: httpx.Response) -> float:
    return float(response.headers.get("x-litellm-response-cost") or 0.0)


def test_node_price_never_changes_other_models_cost_through_the_proxy(client, server):
    def call(model: str) -> float:
        server.reset()
        _script(server)
        raw = client.chat.completions.with_raw_response.create(model=model, messages=_user())
        raw.parse()
        return float(raw.headers.get("x-litellm-response-cost") or 0.0)

    expected_priced = None
    seen = {}
    for model in ("plain", "base_agg", "priced", "plain", "base_agg", "priced"):
        cost = call(model)
        if model == "priced":
            expected_priced = sum(
                r.prompt_tokens * (FINAL_PRICE if r.model == "agg" else PROPOSER_PRICE)["input_cost_per_token"]
                + count_tokens(_reply(r.model)) * (FINAL_PRICE if r.model == "agg" else PROPOSER_PRICE)[
                    "output_cost_per_token"] for r in server.requests)
            assert cost == pytest.approx(expected_priced, rel=1e-6)
        else:
            assert cost == 0.0, f"{model} billed ${cost} after {seen}"
        seen.setdefault(model, []).append(cost)
    assert expected_priced and expected_priced > 0


# --------------------------------------------------------------------------- 13.6 bad input, error hygiene
@pytest.mark.parametrize("messages", ["hi", None, [1, 2], {"role": "user"}],
                         ids=["string", "null", "numbers", "object"])
@pytest.mark.parametrize("model", ["moa_test", "base_agg"])
def test_malformed_messages_get_a_short_400(proxy, server, messages, model):
    response = proxy.chat({"model": model, "messages": messages})
    assert response.status_code == 400, response.text
    assert len(response.content) < 400, response.text
    for leak in ("Traceback", "site-packages", ".py", "/work/", "/root/"):
        assert leak not in response.text
    assert "messages" in _error_text(response)
    assert server.requests == []


def test_unknown_profile_lists_only_names_the_client_can_call(proxy, server):
    response = proxy.chat({"model": "moa_missing", "messages": _user()})
    assert response.status_code == 400, response.text
    message = _error_text(response)
    assert "no_such_profile" in message and "moa_test" in message and "priced" in message
    assert "internal_only" not in message  # a profile no deployment exposes
    assert "searched" not in message and "general_settings" not in message and "/" not in message.split(":", 1)[-1]
    assert server.requests == []


def test_oversized_input_is_refused_before_any_sub_call(client, server):
    _script(server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="moa_test", messages=_user("w " * INPUT_CAP))
    assert "input cap" in info.value.message and "max_input_bytes" in info.value.message
    assert server.requests == []


def test_empty_key_variable_is_a_400_naming_it(client, server):
    _script(server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="needs_empty_key", messages=_user())
    assert "EMPTY_UPSTREAM_KEY is not set (it is empty)" in info.value.message
    assert server.requests == []


def test_logprobs_are_refused_through_the_proxy(client, server):
    _script(server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="moa_test", messages=_user(), logprobs=True)
    assert "logprobs is not supported" in info.value.message
    assert server.requests == []
