"""Request building and error hygiene in process (issues 13 and 14): prices that stay on their node, the trace
of the last turn kept out of the next one, invalid parameters refused before any sub-call, redaction of
short keys and of keys echoed in answers, and profile files that break without taking others down.

The same cases through a real LiteLLM proxy with the official openai SDK are in tests/test_clients.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import litellm
import pytest
import yaml

from composite_llm import profiles as profiles_module
from composite_llm.profiles import files as profile_files
from composite_llm.errors import CompositeConfigError
from composite_llm.profiles import REGISTRY, load_profiles
from composite_llm.redact import REDACTED, Redactor, redact
from composite_llm.testing import count_tokens
from composite_llm.trace_log import TRACE_LOG_ENV
from conftest import API_KEY, user

MOA = "composite/moa/openai/agg"
PROPOSERS = ["openai/p1", "openai/p2"]
PRICE = {"input_cost_per_token": 1e-3, "output_cost_per_token": 2e-3}


def _script(server, **extra):
    for name in ("p1", "p2", "agg"):
        server.set_model(name, **{"reply": f"{name} says four", **extra.get(name, {})})


# --------------------------------------------------------------------------- 13.1 prices stay on their node
def _pricing_profiles(base_url: str) -> dict:
    bundle = {"fake": {"litellm_params": {"api_base": base_url, "api_key": API_KEY}}}

    def node(model, price=None):
        return {"model": model, "provider": "fake", **({"params": price} if price else {})}

    return {"providers": bundle, "profiles": {
        "priced": {"strategy": "moa", "topology": {"aggregator": node("openai/agg", PRICE),
                                                    "proposers": [node("openai/p1", PRICE)]}},
        "plain": {"strategy": "moa", "topology": {"aggregator": node("openai/agg"),
                                                   "proposers": [node("openai/p1")]}},
    }}


def _priced_cost(server) -> float:
    return sum(r.prompt_tokens * PRICE["input_cost_per_token"]
               + count_tokens(f"{r.model} says four") * PRICE["output_cost_per_token"] for r in server.requests)


@pytest.fixture()
def unpriced_models():
    """Start from no price for the test's model names. Other code in this process may have registered one
    (a hand-written `litellm.completion(..., input_cost_per_token=...)`, as the benchmark smoke test runs,
    registers it process-wide: LiteLLM's own behaviour); put back whatever was there afterwards."""
    names = ("openai/agg", "agg", "openai/p1", "p1")
    saved = {name: litellm.model_cost.pop(name) for name in names if name in litellm.model_cost}
    litellm.utils._invalidate_model_cost_lowercase_map()  # LiteLLM caches model info; the pin keeps this name
    yield
    for name in names:
        litellm.model_cost.pop(name, None)
    litellm.model_cost.update(saved)
    litellm.utils._invalidate_model_cost_lowercase_map()


@pytest.mark.parametrize("order", [["plain", "priced", "plain", "bare"], ["priced", "bare", "plain", "priced"]],
                         ids=["plain-first", "priced-first"])
def test_node_price_applies_to_that_nodes_calls_only(server, explicit_profiles, order, unpriced_models):
    _script(server)
    explicit_profiles(_pricing_profiles(server.base_url))
    for name in order:
        server.reset()
        _script(server)
        if name == "bare":
            response = litellm.completion(model="openai/agg", messages=user("q"), api_base=server.base_url,
                                          api_key=API_KEY)
            assert not response._hidden_params.get("response_cost"), f"bare model billed after {order}"
            continue
        response = litellm.completion(model=f"composite/profile/{name}", messages=user("q"))
        cost = response._hidden_params["response_cost"]
        trace = response.choices[0].message.provider_specific_fields["composite"]
        if name == "priced":
            assert cost == pytest.approx(_priced_cost(server), rel=1e-9)
            assert cost > 0 and trace["cost_complete"] is True
        else:
            assert not cost, f"the unpriced profile was billed ${cost} after {order}"
            assert trace["cost_complete"] is False
    assert "openai/agg" not in litellm.model_cost and "agg" not in litellm.model_cost  # nothing registered


def test_streamed_priced_final_stage_uses_the_node_price(server, explicit_profiles):
    _script(server)
    explicit_profiles(_pricing_profiles(server.base_url))
    chunks = list(litellm.completion(model="composite/profile/priced", messages=user("q"), stream=True,
                                     stream_options={"include_usage": True}))
    trace = next(_find_composite(c.model_dump()) for c in reversed(chunks) if _find_composite(c.model_dump()))
    assert trace["cost"] == pytest.approx(_priced_cost(server), rel=1e-9)


def _find_composite(value):
    """The composite trace dict anywhere inside a dumped chunk (None when absent)."""
    if isinstance(value, dict):
        if isinstance(value.get("composite"), dict) and "sub_calls" in value["composite"]:
            return value["composite"]
        children = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return None
    return next((found for found in map(_find_composite, children) if found), None)


def test_per_second_node_prices_are_refused(server, explicit_profiles):
    doc = _pricing_profiles(server.base_url)
    doc["profiles"]["plain"]["topology"]["aggregator"]["params"] = {"cost_per_second": 0.1}
    explicit_profiles(doc)
    with pytest.raises(litellm.BadRequestError, match="per-second prices"):
        litellm.completion(model="composite/profile/plain", messages=user("q"))


# --------------------------------------------------------------------------- 13.2 multi-turn history
@pytest.mark.parametrize("form", ["object", "model_dump", "dict_with_trace"])
def test_assistant_trace_fields_never_reach_members(server, call_kwargs, form):
    _script(server)
    first = litellm.completion(model=MOA, messages=user("first question"), proposers=PROPOSERS, **call_kwargs)
    message = first.choices[0].message
    assert message.reasoning_content and message.provider_specific_fields  # what a client appends back
    previous = {"object": message, "model_dump": message.model_dump(),
                "dict_with_trace": {"role": "assistant", "content": message.content,
                                    "reasoning_content": message.reasoning_content,
                                    "provider_specific_fields": message.provider_specific_fields,
                                    "thinking_blocks": [{"type": "thinking", "thinking": "hmm"}]}}[form]
    server.reset()
    _script(server)
    history = [*user("first question"), previous, *user("and again?")]
    litellm.completion(model=MOA, messages=history, proposers=PROPOSERS, **call_kwargs)
    assert len(server.requests) == 3
    for request in server.requests:
        sent = json.dumps(request.messages)
        assert "reasoning_content" not in sent and "provider_specific_fields" not in sent
        assert "thinking_blocks" not in sent and "sub_calls" not in sent
        assistant = [m for m in request.messages if m.get("role") == "assistant"]
        assert assistant and assistant[-1]["content"] == "agg says four"  # the answer itself stays


def test_assistant_tool_calls_survive_the_cleanup(server, call_kwargs):
    _script(server)
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2}"}}
    history = [*user("add"), {"role": "assistant", "content": None, "tool_calls": [call],
                              "reasoning_content": "old trace", "provider_specific_fields": {"composite": {}}},
               {"role": "tool", "tool_call_id": "call_1", "content": "4"}, *user("so?")]
    litellm.completion(model=MOA, messages=history, proposers=PROPOSERS, **call_kwargs)
    for request in server.requests:
        assistant = next(m for m in request.messages if m.get("role") == "assistant")
        assert assistant["tool_calls"][0]["function"]["name"] == "add"
        assert "reasoning_content" not in assistant and "provider_specific_fields" not in assistant


# --------------------------------------------------------------------------- 13.6 bad input, error hygiene
def test_short_api_key_does_not_mangle_error_text(server):
    """README's own example key "x": the error text keeps every x (whole tokens only, never under 8 chars)."""
    server.set_model("p1", fail_status=500, fail_message="the proxy box exploded")
    server.set_model("p2", fail_status=500, fail_message="the proxy box exploded")
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, api_base=server.base_url,
                           api_key="x")
    message = str(info.value)
    assert "box exploded" in message and "OpenAIException" in message and REDACTED not in message


def test_redactor_replaces_whole_tokens_of_eight_characters_or_more():
    assert Redactor(["x"])("OpenAIException xx x") == "OpenAIException xx x"
    assert Redactor(["short7c"])("key short7c") == "key short7c"
    secret = "abcd1234efgh"
    assert Redactor([secret])(f"k={secret}, '{secret}' x{secret}y") == f"k={REDACTED}, '{REDACTED}' x{secret}y"
    assert redact(f"Bearer {secret}", secrets={secret}) == f"Bearer {REDACTED}"


def test_empty_environment_variable_counts_as_unset(server, explicit_profiles, monkeypatch):
    monkeypatch.setenv("COMPOSITE_TEST_EMPTY_KEY", "")
    explicit_profiles({"providers": {"empty": {"litellm_params": {"api_base": server.base_url,
                                                                    "api_key": "os.environ/COMPOSITE_TEST_EMPTY_KEY"}}},
                       "profiles": {"needs_key": {"strategy": "moa", "topology": {
                           "aggregator": {"model": "openai/agg", "provider": "empty"},
                           "proposers": [{"model": "openai/p1", "provider": "empty"}]}}}})
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="composite/profile/needs_key", messages=user("q"))
    assert "environment variable COMPOSITE_TEST_EMPTY_KEY is not set (it is empty)" in str(info.value)
    assert server.requests == []


@pytest.mark.parametrize("params", [{"logprobs": True}, {"top_logprobs": 3}, {"logprobs": True, "top_logprobs": 2}])
def test_logprobs_are_refused_not_silently_dropped(server, call_kwargs, params):
    with pytest.raises(litellm.BadRequestError, match="logprobs is not supported"):
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **params, **call_kwargs)
    assert server.requests == []


def test_logprobs_false_is_accepted(server, call_kwargs):
    _script(server)
    litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, logprobs=False, **call_kwargs)
    assert len(server.requests) == 3


def test_prompt_cache_key_is_accepted_and_not_forwarded(server, call_kwargs):
    """LiteLLM's Anthropic Messages conversion adds `prompt_cache_key` (Claude Code through the proxy): a hint
    the composite takes without refusing the request or passing it to members of other providers."""
    _script(server)
    response = litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS,
                                  prompt_cache_key="claude-code-session", **call_kwargs)
    assert response.choices[0].message.content == "agg says four"
    assert len(server.requests) == 3
    assert all("prompt_cache_key" not in r.body for r in server.requests)


def test_input_over_the_cap_is_refused_before_any_sub_call(server, explicit_profiles):
    explicit_profiles({"max_input_bytes": 10_000, "profiles": {"small": {"strategy": "moa", "topology": {
        "aggregator": {"model": "openai/agg", "params": {"api_base": server.base_url, "api_key": API_KEY}},
        "proposers": [{"model": "openai/p1", "params": {"api_base": server.base_url, "api_key": API_KEY}}]}}}})
    with pytest.raises(litellm.BadRequestError, match="over this composite's input cap of 10,000 bytes"):
        litellm.completion(model="composite/profile/small", messages=user("y" * 20_000))
    assert server.requests == []


def test_default_input_cap_refuses_five_megabytes(server, call_kwargs):
    with pytest.raises(litellm.BadRequestError, match="max_input_bytes"):
        litellm.completion(model=MOA, messages=user("z" * 5_000_000), proposers=PROPOSERS, **call_kwargs)
    assert server.requests == []


# --------------------------------------------------------------------------- 14.6 bad parameters
@pytest.mark.parametrize("params", [
    {"max_tokens": 0}, {"max_tokens": -5}, {"max_completion_tokens": 0}, {"max_tokens": "ten"},
    {"temperature": -1}, {"temperature": 2.5}, {"temperature": "hot"}, {"top_p": 1.5},
    {"presence_penalty": 3}, {"frequency_penalty": -2.5}, {"seed": "abc"}, {"stop": 5},
], ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_invalid_standard_parameters_are_refused_before_any_sub_call(server, call_kwargs, params):
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **params, **call_kwargs)
    name = next(iter(params))
    assert name.replace("max_completion_tokens", "max_tokens") in str(info.value)  # LiteLLM renames it
    assert server.requests == []


def test_every_member_refusing_with_400_answers_400(server, call_kwargs):
    refused = {"fail_status": 400, "fail_message": "max_tokens is too large for this model"}
    _script(server, p1=refused, p2=refused)
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model=MOA, messages=user("q"), proposers=PROPOSERS, **call_kwargs)
    assert "max_tokens is too large" in str(info.value)
    assert len(server.requests) == 2  # a 400 is not retried


# --------------------------------------------------------------------------- 14.5 keys echoed in answers
ECHOED = "plainvalue-7f3a9c2e5b1d"  # matches no pattern: only the known-value net can catch it
SHAPED = "sk-proj-EchoedKey0123456789abcdef"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_key_echoed_in_a_200_answer_is_redacted_from_trace_and_log(server, tmp_path, monkeypatch, stream):
    log = tmp_path / "traces.jsonl"
    monkeypatch.setenv(TRACE_LOG_ENV, str(log))
    server.set_model("p1", reply=f"your key is {ECHOED} and also {SHAPED}")
    server.set_model("p2", reply="four")
    server.set_model("agg", reply="four")
    kwargs = dict(model=MOA, messages=user("q"), proposers=PROPOSERS, api_base=server.base_url, api_key=ECHOED)
    if stream:
        chunks = list(litellm.completion(**kwargs, stream=True))
        readable = json.dumps([c.model_dump() for c in chunks], default=str)
        progress = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
        assert "proposer openai/p1" in progress
    else:
        response = litellm.completion(**kwargs)
        readable = json.dumps(response.model_dump(), default=str)
        assert "proposer openai/p1" in response.choices[0].message.reasoning_content
    assert server.requests_for("p1")[0].headers["Authorization"] == f"Bearer {ECHOED}"
    logged = log.read_text()
    for secret in (ECHOED, SHAPED):
        assert secret not in readable and secret not in logged
    assert "your key is [REDACTED]" in readable  # the preview is kept, the key is not


# --------------------------------------------------------------------------- 14.7 profile files
def _profile_doc(names, model="openai/agg") -> str:
    return yaml.safe_dump({"profiles": {n: {"strategy": "moa", "topology": {
        "aggregator": model, "proposers": ["openai/p1"]}} for n in names}})


def _broken_doc(nodes: int) -> str:
    return yaml.safe_dump({"profiles": {"big": {"strategy": "moa", "topology": {
        "aggregator": "openai/agg", "proposers": [{"model": "openai/p", "temprature": 0.1}] * nodes}}}})


def _touch_later(path: Path, text: str) -> None:
    """Write and move mtime forward, so the cache sees a new version even on coarse file systems."""
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_broken_file_is_isolated_from_other_files_of_the_folder(tmp_path, monkeypatch):
    (tmp_path / "good.yaml").write_text(_profile_doc(["good_one"]))
    (tmp_path / "bad.yaml").write_text(_broken_doc(3))
    (tmp_path / "torn.yaml").write_text("profiles: {x: [unclosed\n")
    monkeypatch.setenv(profiles_module.PROFILES_ENV, str(tmp_path))
    snapshot = REGISTRY.snapshot()
    assert snapshot.get("good_one").name == "good_one"  # served although two files beside it are broken
    with pytest.raises(CompositeConfigError) as info:
        snapshot.get("big")  # the broken file's own profile: its error, naming the file and the field
    assert "bad.yaml" in str(info.value) and "temprature" in str(info.value)


def test_load_failures_are_cached_and_error_bodies_capped(tmp_path, monkeypatch):
    path = tmp_path / "huge.yaml"
    path.write_text(_broken_doc(1000))
    parses = []
    original = profile_files.parse_document
    monkeypatch.setattr(profile_files, "parse_document", lambda *a, **k: parses.append(1) or original(*a, **k))
    messages = []
    for _ in range(5):
        with pytest.raises(CompositeConfigError) as info:
            load_profiles(path)
        messages.append(str(info.value))
    assert len(parses) == 1  # one parse per file version, not one per request
    assert len(messages[0]) <= profiles_module.MAX_ERROR_CHARS and "more problem(s)" in messages[0]


def test_file_that_becomes_invalid_keeps_serving_its_last_good_version(server, tmp_path, monkeypatch, caplog):
    path = tmp_path / "live.yaml"
    bundle = {"params": {"api_base": server.base_url, "api_key": API_KEY}}
    doc = lambda reply_model: yaml.safe_dump({"profiles": {"live": {"strategy": "moa", "topology": {  # noqa: E731
        "aggregator": {"model": reply_model, **bundle}, "proposers": [{"model": "openai/p1", **bundle}]}}}})
    path.write_text(doc("openai/agg"))
    monkeypatch.setenv(profiles_module.PROFILES_ENV, str(path))
    log = tmp_path / "traces.jsonl"
    monkeypatch.setenv(TRACE_LOG_ENV, str(log))
    _script(server)
    assert litellm.completion(model="composite/profile/live", messages=user("q")).choices[0].message.content \
        == "agg says four"
    for broken in ("", "profiles: {live: {strategy: moa, topology: {aggre", _broken_doc(2)):
        _touch_later(path, broken)  # truncate-then-write, a half-written file, an invalid edit
        caplog.clear()
        response = litellm.completion(model="composite/profile/live", messages=user("q"))
        assert response.choices[0].message.content == "agg says four"
        trace = response.choices[0].message.provider_specific_fields["composite"]
        assert any("became invalid" in note and "last good version" in note for note in trace["notes"])
        assert "became invalid" in response.choices[0].message.reasoning_content
        assert any("became invalid" in r.getMessage() for r in caplog.records)
    assert "became invalid" in log.read_text().splitlines()[-1]
    _touch_later(path, doc("openai/p2"))  # fixed: the new version is served, no note
    response = litellm.completion(model="composite/profile/live", messages=user("q"))
    assert response.choices[0].message.content == "p2 says four"
    assert response.choices[0].message.provider_specific_fields["composite"]["notes"] == []


def test_file_invalid_from_the_start_is_an_error_not_a_silent_empty_source(tmp_path, monkeypatch):
    path = tmp_path / "new.yaml"
    path.write_text(_broken_doc(2))
    monkeypatch.setenv(profiles_module.PROFILES_ENV, str(path))
    with pytest.raises(litellm.BadRequestError, match="temprature"):
        litellm.completion(model="composite/profile/big", messages=user("q"))
    started = time.process_time()
    for _ in range(20):
        with pytest.raises(litellm.BadRequestError):
            litellm.completion(model="composite/profile/big", messages=user("q"))
    assert time.process_time() - started < 20  # generous bound; the parse count is asserted above


def test_proxy_block_that_becomes_invalid_keeps_its_last_good_version(server, tmp_path, monkeypatch):
    from test_proxy import _install_proxy_block

    good = {"profiles": {"hot": {"strategy": "moa", "topology": {
        "aggregator": {"model": "openai/agg", "params": {"api_base": server.base_url, "api_key": API_KEY}},
        "proposers": [{"model": "openai/p1", "params": {"api_base": server.base_url, "api_key": API_KEY}}]}}}}
    _script(server)
    _install_proxy_block(monkeypatch, good, tmp_path)
    assert litellm.completion(model="composite/profile/hot", messages=user("q")).choices[0].message.content \
        == "agg says four"
    broken = json.loads(json.dumps(good))
    broken["profiles"]["hot"]["topology"]["settings"] = {"quorum": 0}  # a hot edit with a mistake
    _install_proxy_block(monkeypatch, broken, tmp_path)
    response = litellm.completion(model="composite/profile/hot", messages=user("q"))
    assert response.choices[0].message.content == "agg says four"
    notes = response.choices[0].message.provider_specific_fields["composite"]["notes"]
    assert any("block became invalid" in note and "settings.quorum" in note for note in notes)


def test_nested_composite_whose_members_all_refuse_is_a_failed_member_not_a_config_error(server, explicit_profiles):
    """An inner composite answering 400 because its upstreams refused the request is one failed proposer of
    the outer MoA (which answers from its others), not a configuration error of the whole request."""
    bundle = {"api_base": server.base_url, "api_key": API_KEY}
    explicit_profiles({"profiles": {
        "inner": {"strategy": "moa", "topology": {"aggregator": {"model": "openai/agg", "params": bundle},
                                                  "proposers": [{"model": "openai/r1", "params": bundle}]}},
        "outer": {"strategy": "moa", "topology": {"aggregator": {"model": "openai/agg", "params": bundle},
                                                  "proposers": [{"model": "openai/p1", "params": bundle},
                                                                "composite/profile/inner"]}}}})
    _script(server)
    server.set_model("r1", fail_status=400, fail_message="prompt too long for r1")
    response = litellm.completion(model="composite/profile/outer", messages=user("q"))
    assert response.choices[0].message.content == "agg says four"
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert any("inner" in name for name in trace["failed_members"])
