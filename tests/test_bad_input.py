"""Bad input: model strings, profile documents, messages and request parameters that are wrong.

Every case must end in a LiteLLM exception with a clear message (a BadRequestError where the input is at
fault) - never a bare KeyError/TypeError/AttributeError, nor LiteLLM's wrapping of one - and never hang:
each call runs in a worker thread that is given a fixed time to finish. Hypothesis generates the inputs
where a grammar fits; the cases it would rarely find are spelled out below it.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import litellm
import openai
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from composite_llm import CompositeConfigError, load_profiles
from conftest import API_KEY, user

MOA = "composite/moa/openai/agg"
CALL_LIMIT_S = 20.0  # no single call may take longer: a hang fails the test instead of blocking the run
# Python errors that must never surface, bare or as the text of LiteLLM's wrapper exception.
PYTHON_ERRORS = re.compile(r"\b(KeyError|TypeError|AttributeError|IndexError|NameError|UnboundLocalError|"
                           r"RecursionError|AssertionError|ZeroDivisionError)\b|Traceback \(most recent")
HYPOTHESIS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers
class _Outcome:
    def __init__(self, response: Any = None, error: BaseException | None = None, elapsed: float = 0.0):
        self.response, self.error, self.elapsed = response, error, elapsed


def bounded(fn, *args: Any, limit: float = CALL_LIMIT_S, **kwargs: Any) -> _Outcome:
    """Run fn in a daemon thread; fail the test if it has not returned within `limit` seconds."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["response"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - examined by the caller
            box["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {limit} s (args={args!r:.300}, "
                    f"kwargs={kwargs!r:.300})")
    return _Outcome(box.get("response"), box.get("error"), time.monotonic() - started)


def assert_clear_litellm_error(error: BaseException | None, *, expected: type = openai.APIError,
                               needle: str | None = None) -> str:
    """The error is a LiteLLM exception (they derive from openai's) of the expected type with a readable
    message that is not a Python error in disguise. Returns the message."""
    assert error is not None, "expected an exception"
    assert isinstance(error, expected), f"{type(error).__module__}.{type(error).__name__}: {error}"
    assert type(error).__module__.startswith("litellm"), f"not a LiteLLM exception: {type(error)!r}: {error}"
    message = str(error)
    assert message.strip(), "empty error message"
    assert not PYTHON_ERRORS.search(message), f"a Python error leaked through: {message}"
    if needle is not None:
        assert needle in message, message
    return message


def completion(**kwargs: Any) -> _Outcome:
    return bounded(litellm.completion, **kwargs)


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    """No profile sources but the ones a test registers, and no coding-agent CLI on PATH: a generated model
    string may name any profile or strategy, and must never start a shipped profile or a real CLI."""
    empty = tmp_path_factory.mktemp("bad-input-cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(empty)
        mp.setenv("PATH", str(empty))
        for name in ("COMPOSITE_LLM_PROFILES", "CEREBRAS_API_KEY", "COMPOSITE_LLM_TRACE_LOG"):
            mp.delenv(name, raising=False)
        yield empty


# --------------------------------------------------------------------------- model strings
_SEGMENT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_HEADS = st.sampled_from(["profile", "moa", "MoA", "council", "composer-cli", "composer_cli", "cli", "debate",
                          "self-consistency", "best-of-n", "composite", "", " ", ".."]) | _SEGMENT
MODEL_STRINGS = st.builds(lambda head, rest: "/".join([head, *rest]), _HEADS, st.lists(_SEGMENT, max_size=4))


@HYPOTHESIS
@given(body=MODEL_STRINGS)
def test_any_model_string_ends_in_an_answer_or_a_clear_litellm_error(fake_server, isolated, body):
    outcome = completion(model="composite/" + body, messages=user("q"), api_base=fake_server.base_url,
                         api_key=API_KEY, timeout=10)
    if outcome.error is not None:
        assert_clear_litellm_error(outcome.error)
        assert API_KEY not in str(outcome.error)


@pytest.mark.parametrize("model,needle", [
    ("composite/", "empty composite model string"),
    ("composite/profile", "names no profile"),
    ("composite/profile//", "names no profile"),
    ("composite/moa", "expected composite/moa/<provider>/<model>"),
    ("composite/moa/gpt-4o", "expected composite/moa/<provider>/<model>"),
    ("composite/nosuch/openai/x", "unknown strategy 'nosuch'"),
    ("composite/cli/cursor", "expected composite/cli/<spec>/<model>"),
    ("composite/composer-cli/--force", "refusing model name '--force'"),
    ("composite/profile/" + "x" * 5000, "unknown profile"),
    ("composite/profile/\x00nul", "unknown profile"),
], ids=["empty", "profile-without-name", "profile-slashes-only", "strategy-only", "no-provider", "unknown-strategy",
        "cli-without-model", "option-as-cli-model", "5000-char-profile", "nul-in-profile"])
def test_bad_model_strings_are_bad_requests_naming_the_problem(fake_server, isolated, model, needle):
    outcome = completion(model=model, messages=user("q"), api_base=fake_server.base_url, api_key=API_KEY)
    message = assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError)
    assert needle in message, message
    assert outcome.elapsed < 5


# --------------------------------------------------------------------------- profile documents
def _valid_document() -> dict[str, Any]:
    return {
        "providers": {"fake": {"litellm_params": {"api_base": "http://127.0.0.1:9/v1", "api_key": "os.environ/X"}}},
        "profiles": {
            "m": {"strategy": "moa", "description": "d", "topology": {
                "aggregator": {"model": "openai/agg", "provider": "fake", "fallbacks": ["openai/agg2"]},
                "proposers": [{"model": "openai/p1", "provider": "fake", "params": {"temperature": 0.2}},
                              "openai/p2"],
                "settings": {"quorum": 1, "grace_s": 1.0, "retries": 1}}},
            "c": {"strategy": "council", "topology": {
                "chairman": "openai/chair", "council": ["openai/c1", {"model": "openai/c2", "timeout_s": 5}],
                "reviewers": ["openai/r1"], "settings": {"review_quorum": 0, "shuffle": True}}},
        },
    }


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, width=32) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _mutate(doc: dict[str, Any], path: tuple, kind: str, junk: Any) -> dict[str, Any]:
    """Replace the value at `path`, delete it, or add an unknown key next to it."""
    doc = copy.deepcopy(doc)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if kind == "replace":
        parent[last] = junk
    elif kind == "delete":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last]["unknwn_key"] = junk
    else:
        parent[last] = junk
    return doc


@st.composite
def broken_documents(draw) -> dict[str, Any]:
    """The valid document with 1-3 random edits: a value replaced by junk, a key deleted, an unknown key added.
    (A document that is not a mapping at all is covered by the cases below.)"""
    doc = _valid_document()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)[1:]))
        doc = _mutate(doc, path, draw(st.sampled_from(["replace", "delete", "unknown"])), draw(_JSON))
    return doc


def _install_proxy_block(mp: pytest.MonkeyPatch, block: Any, config_dir: Path) -> None:
    """Make `block` the running proxy's general_settings.composite_llm (read at request time)."""
    module = SimpleNamespace(general_settings={"composite_llm": block},
                              user_config_file_path=str(config_dir / "missing-config.yaml"))
    mp.setitem(sys.modules, "litellm.proxy.proxy_server", module)


@HYPOTHESIS
@given(doc=broken_documents())
def test_any_broken_profile_document_is_rejected_clearly(fake_server, isolated, doc):
    """Loading never raises anything but CompositeConfigError; under the proxy, where documents are read at
    request time, the same problem reaches the client as a BadRequestError and nothing is called."""
    try:
        load_profiles(doc)
    except CompositeConfigError as exc:
        problem = str(exc)
    else:
        assume(False)  # the mutation happened to keep the document valid
        return
    assert problem.startswith("invalid composite profiles in <profiles dict>:"), problem
    assert not PYTHON_ERRORS.search(problem), problem
    fake_server.clear_requests()
    with pytest.MonkeyPatch.context() as mp:
        _install_proxy_block(mp, doc, isolated)
        outcome = completion(model="composite/profile/m", messages=user("q"), api_base=fake_server.base_url,
                             api_key=API_KEY)
    message = assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError)
    assert "general_settings.composite_llm" in message
    assert not fake_server.requests


@pytest.mark.parametrize("doc,needle", [
    ({"profiles": [1, 2]}, "profiles: expected a mapping"),
    ({"providers": "x", "profiles": {}}, "providers: expected a mapping"),
    ({"profiles": {"p": "moa"}}, "profile 'p'"),
    ({"profiles": {"p": {"topology": {}}}}, "profile 'p'.strategy: Field required"),
    ({"profiles": {"p": {"strategy": 5}}}, "profile 'p'.strategy"),
    ({"profiles": {"p": {"strategy": "moa", "topology": "x"}}}, "profile 'p'.topology"),
    ({"profiles": {"p": {"strategy": "moa", "topology": {"aggregator": 7, "proposers": ["a/b"]}}}},
     "topology.aggregator"),
    ({"profiles": {"p": {"strategy": "moa", "topology": {"aggregator": "a/b", "proposers": 5}}}},
     "topology.proposers"),
    ({"profiles": {"p": {"strategy": "moa", "topology": {"aggregator": "a/b", "proposers": [" "]}}}},
     "model must not be blank"),
    ({"profiles": {"p": {"strategy": "moa", "topology": {"aggregator": "a/b", "proposers": ["a/c"],
                                                         "settings": {"quorum": "many"}}}}}, "settings.quorum"),
    ({"profiles": {"p": {"strategy": "moa", "topology": {"aggregator": {"model": "a/b", "params": "x"},
                                                         "proposers": ["a/c"]}}}}, "aggregator.params"),
    ({"profiles": {"p": {"strategy": "moa", "topology": {"aggregator": {"model": "a/b", "fallbacks": "a/c"},
                                                         "proposers": ["a/c"]}}}}, "aggregator.fallbacks"),
    ({"profiles": {"p": {"strategy": "moa", "topology": {"aggregator": {"model": "a/b", "timeout_s": -1},
                                                         "proposers": ["a/c"]}}}}, "aggregator.timeout_s"),
    ({"profiles": {"p": {"strategy": "council", "topology": {"chairman": "a/b", "council": ["a/c"],
                                                             "reviewrs": ["a/d"]}}}}, "topology.reviewrs"),
    ({"profiles": {"p": {"strategy": "moa", "topology": {"aggregator": "a/b", "proposers": ["a/c"]}}},
      "alow_request_overrides": True}, "alow_request_overrides: unknown field"),
    ({"strategy_registry": {"nope": "x.y:Z"}, "profiles": {}}, "strategy_registry.nope"),
], ids=["profiles-a-list", "providers-a-string", "profile-a-string", "strategy-missing", "strategy-a-number",
        "topology-a-string", "aggregator-a-number", "proposers-a-number", "blank-model", "quorum-a-string",
        "params-a-string", "fallbacks-a-string", "negative-timeout", "misspelt-reviewers", "misspelt-top-level-key",
        "unknown-strategy-in-registry"])
def test_broken_profile_documents_name_the_field(doc, needle):
    with pytest.raises(CompositeConfigError) as info:
        load_profiles(doc)
    assert needle in str(info.value)


@pytest.mark.parametrize("block", [[1, 2], "profiles", 42], ids=["list", "string", "number"])
def test_proxy_block_that_is_not_a_mapping_is_a_bad_request(fake_server, isolated, block):
    with pytest.MonkeyPatch.context() as mp:
        _install_proxy_block(mp, block, isolated)
        outcome = completion(model="composite/profile/m", messages=user("q"), api_base=fake_server.base_url,
                             api_key=API_KEY)
    assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError,
                               needle="expected a mapping with 'providers' and 'profiles'")


# --------------------------------------------------------------------------- composites of composites
def _register(doc: dict) -> None:
    from composite_llm.profiles import REGISTRY

    REGISTRY.set_explicit(doc)


def _nested_chain(depth: int) -> dict:
    """c0 -> c1 -> ... -> c{depth-1}, the last one a plain MoA on the fake server."""
    profiles = {f"c{i}": {"strategy": "moa", "topology": {"aggregator": "openai/agg",
                                                         "proposers": [f"composite/profile/c{i + 1}"]}}
                for i in range(depth - 1)}
    profiles[f"c{depth - 1}"] = {"strategy": "moa", "topology": {"aggregator": "openai/agg",
                                                                "proposers": ["openai/p1"]}}
    return {"profiles": profiles}


_CYCLE = {"profiles": {
    "a": {"strategy": "moa", "topology": {"aggregator": "openai/agg", "proposers": ["composite/profile/b"]}},
    "b": {"strategy": "moa", "topology": {"aggregator": "openai/agg", "proposers": ["composite/profile/a"]}},
}}


@pytest.fixture()
def registered(isolated):
    from composite_llm.profiles import REGISTRY

    yield _register
    REGISTRY.set_explicit(None)


def test_cycle_of_two_composites_is_refused_before_any_model_call(fake_server, registered):
    fake_server.reset()
    registered(_CYCLE)
    outcome = completion(model="composite/profile/a", messages=user("q"), api_base=fake_server.base_url,
                         api_key=API_KEY)
    assert outcome.error is not None
    assert not fake_server.requests


def test_cycle_of_two_composites_is_a_bad_request(fake_server, registered):
    registered(_CYCLE)
    outcome = completion(model="composite/profile/a", messages=user("q"), api_base=fake_server.base_url,
                         api_key=API_KEY)
    assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError, needle="cycle")


def test_cycle_chain_names_each_composite_once(fake_server, registered):
    registered(_CYCLE)
    outcome = completion(model="composite/profile/a", messages=user("q"), api_base=fake_server.base_url,
                         api_key=API_KEY)
    message = assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError)
    assert "composite/profile/a -> composite/profile/b -> composite/profile/a" in message, message


def test_composites_nested_too_deep_are_refused_before_any_model_call(fake_server, registered):
    fake_server.reset()
    registered(_nested_chain(7))
    outcome = completion(model="composite/profile/c0", messages=user("q"), api_base=fake_server.base_url,
                         api_key=API_KEY)
    assert outcome.error is not None
    assert not fake_server.requests


def test_composites_nested_too_deep_are_a_bad_request(fake_server, registered):
    registered(_nested_chain(7))
    outcome = completion(model="composite/profile/c0", messages=user("q"), api_base=fake_server.base_url,
                         api_key=API_KEY)
    assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError, needle="nested deeper than 4")


@pytest.mark.parametrize("where", ["bundle", "node", "nested-param", "fallback"])
def test_missing_env_reference_is_a_bad_request_naming_it(fake_server, registered, where):
    fake_server.reset()
    ref = "os.environ/COMPOSITE_TEST_UNSET_VARIABLE"
    aggregator: dict[str, Any] = {"model": "openai/agg"}
    proposer: dict[str, Any] = {"model": "openai/p1"}
    doc: dict[str, Any] = {"profiles": {"envy": {"strategy": "moa", "topology": {
        "aggregator": aggregator, "proposers": [proposer]}}}}
    if where == "bundle":
        doc["providers"] = {"b": {"litellm_params": {"api_key": ref}}}
        proposer["provider"] = "b"
    elif where == "node":
        proposer["params"] = {"api_key": ref}
    elif where == "nested-param":
        proposer["params"] = {"extra_headers": {"X-Key": ref}}
    else:
        aggregator["fallbacks"] = [{"model": "openai/fb", "params": {"api_key": ref}}]
    registered(doc)
    outcome = completion(model="composite/profile/envy", messages=user("q"), api_base=fake_server.base_url,
                         api_key=API_KEY)
    message = assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError,
                                         needle="COMPOSITE_TEST_UNSET_VARIABLE")
    assert "node" in message
    assert not fake_server.requests


@pytest.mark.parametrize("source", [[{"profiles": {}}], None, 42], ids=["list", "none", "number"])
def test_load_profiles_rejects_a_source_of_the_wrong_type(source):
    with pytest.raises(CompositeConfigError, match="path|dict|mapping"):
        load_profiles(source)


# --------------------------------------------------------------------------- messages
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_PART = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _TEXT),
    st.just({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}),
    st.builds(lambda t: {"type": "text", "text": t}, st.just("")),
)
# Contents LiteLLM itself accepts: it rejects non-text scalars and unknown part types before any provider
# runs (held separately by the test of LiteLLM's own limitation).
_CONTENT = st.one_of(_TEXT, st.lists(_PART, max_size=3), st.none(), st.dictionaries(_TEXT, _TEXT,
                                                                                               max_size=2))
_TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
_MESSAGE = st.one_of(
    st.builds(lambda role, content: {"role": role, "content": content},
              st.sampled_from(["user", "system", "developer", "assistant", "wizard", "", "USER"]), _CONTENT),
    st.builds(lambda c: {"role": "assistant", "content": c, "tool_calls": [_TOOL_CALL]}, st.none() | _TEXT),
    st.builds(lambda c: {"role": "tool", "tool_call_id": "call_1", "content": c}, _TEXT),
    st.builds(lambda c: {"content": c}, _TEXT),
)
_NOT_A_MESSAGE = st.sampled_from([None, 0, "user", ["role", "user"], [("role", "user")], []])


def _has_user_message(messages: Any) -> bool:
    return isinstance(messages, list) and any(isinstance(m, dict) and m.get("role") == "user" for m in messages)


@HYPOTHESIS
@given(messages=st.lists(_MESSAGE, max_size=5))
def test_any_message_list_ends_in_an_answer_or_a_clear_litellm_error(fake_server, isolated, messages):
    outcome = completion(model=MOA, messages=messages, proposers=["openai/p1"], api_base=fake_server.base_url,
                         api_key=API_KEY, timeout=10)
    if outcome.error is not None:
        assert_clear_litellm_error(outcome.error)
    else:
        assert _has_user_message(messages)
        assert outcome.response.choices[0].message.content
    if not _has_user_message(messages):
        assert isinstance(outcome.error, litellm.BadRequestError), outcome.error


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(messages=st.lists(_MESSAGE | _NOT_A_MESSAGE, max_size=5) | _JSON)
def test_the_providers_own_message_check_rejects_anything_it_cannot_answer(messages):
    """The provider's validation of whatever LiteLLM hands it (including what LiteLLM itself would choke on,
    see test_non_list_messages_fail_inside_litellm_before_the_provider): a CompositeConfigError - the
    provider turns it into a BadRequestError - or a checked conversation with a user message."""
    from composite_llm.request import build_request

    try:
        request = build_request(model="composite/moa/openai/agg", messages=messages, api_base=None, api_key=None,
                                optional_params={"proposers": ["openai/p1"]}, litellm_params={}, timeout=None)
    except CompositeConfigError as exc:
        assert str(exc).startswith("composite/moa/openai/agg: messages")
        assert not PYTHON_ERRORS.search(str(exc))
    else:
        assert any(m.get("role") == "user" for m in request.messages)


@pytest.mark.parametrize("messages,needle", [
    ([{"role": "wizard", "content": "x"}, {"role": "user", "content": "hi"}], "messages[0] has unknown role 'wizard'"),
    ([{"role": "assistant", "content": "I answered"}, {"role": "tool", "tool_call_id": "x", "content": "r"}],
     "no user message"),
    ([{"content": "no role: LiteLLM makes it an assistant message"}], "no user message"),
    ([{"role": "system", "content": [{"type": "text", "text": "only a system prompt"}]}], "no user message"),
], ids=["unknown-role", "assistant-and-tool-only", "no-role", "system-only"])
def test_message_lists_without_an_answerable_user_turn_are_bad_requests(fake_server, isolated, messages, needle):
    outcome = completion(model=MOA, messages=messages, proposers=["openai/p1"], api_base=fake_server.base_url,
                         api_key=API_KEY)
    assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError, needle=needle)


@pytest.mark.parametrize("messages", ["hello", None, {"role": "user", "content": "hi"}, [None],
                                      [42, {"role": "user", "content": "hi"}]],
                         ids=["string", "none", "dict", "list-of-none", "list-with-int"])
def test_non_list_messages_fail_inside_litellm_before_the_provider(fake_server, isolated, messages):
    """Known LiteLLM limitation (not composite-llm's): litellm.completion() validates `messages` itself
    (litellm.utils.validate_and_fix_openai_messages) before any provider runs, and raises a bare
    AttributeError/TypeError for a non-list or non-dict entries. The provider is never reached, so it cannot
    turn this into a BadRequestError; the LiteLLM proxy rejects such bodies before calling LiteLLM. This test
    pins that the error comes from LiteLLM, not from composite_llm (and fails if LiteLLM starts handling it,
    so the table in TESTING.md can be updated)."""
    fake_server.clear_requests()
    outcome = completion(model=MOA, messages=messages, proposers=["openai/p1"], api_base=fake_server.base_url,
                         api_key=API_KEY)
    assert isinstance(outcome.error, (AttributeError, TypeError)), outcome.error
    frames = traceback.extract_tb(outcome.error.__traceback__)
    assert frames[-1].filename.endswith(os.path.join("litellm", "utils.py"))
    assert not any("composite_llm" in frame.filename for frame in frames)
    assert not fake_server.requests


def test_tool_conversation_reaches_members_and_aggregator_intact(server, call_kwargs):
    server.set_model("p1", reply="proposal")
    server.set_model("agg", reply="It is 21 degrees in Paris.")
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object",
                                                                                  "properties": {}}}}]
    outcome = completion(model=MOA, messages=messages, proposers=["openai/p1"], tools=tools, **call_kwargs)
    assert outcome.error is None, outcome.error
    assert outcome.response.choices[0].message.content == "It is 21 degrees in Paris."
    for request in (server.requests_for("p1")[0], server.requests_for("agg")[0]):
        sent = [m for m in request.messages if m["role"] != "system"]
        assert sent[1]["tool_calls"][0]["id"] == "call_1" and sent[2] == messages[2]


def test_image_content_reaches_council_members_as_a_list(server, call_kwargs):
    content = [{"type": "text", "text": "What is in this picture?"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    for name in ("c1", "c2"):
        server.set_model(name, reply=f"a cat says {name}")
    server.set_model("chair", reply="A cat.")
    outcome = completion(model="composite/council/openai/chair", messages=[{"role": "user", "content": content}],
                         council_models=["openai/c1", "openai/c2"], **call_kwargs)
    assert outcome.error is None, outcome.error
    assert outcome.response.choices[0].message.content == "A cat."
    stage1 = [r for r in server.requests if "FINAL RANKING" not in r.all_text and r.model != "chair"]
    assert len(stage1) == 2 and all(r.messages[-1]["content"] == content for r in stage1)
    # the chairman's last turn is the framed answers and reviews; the user's list content comes just before
    assert server.requests_for("chair")[0].messages[-2]["content"] == content


def test_very_long_message_arrives_intact_and_in_bounded_time(server, call_kwargs):
    big = ("All work and no play makes Jack a dull boy. ✓ " * 45_000)[:2_000_000]
    server.set_model("p1", reply="short")
    server.set_model("agg", reply="done")
    outcome = completion(model=MOA, messages=user(big), proposers=["openai/p1"], **call_kwargs)
    assert outcome.error is None, outcome.error
    assert outcome.elapsed < 15
    digest = hashlib.sha256(big.encode()).hexdigest()
    for name in ("p1", "agg"):  # the aggregator's own last turn is the framed proposals: check the user's
        first_user = next(m for m in server.requests_for(name)[0].messages if m["role"] == "user")
        assert hashlib.sha256(first_user["content"].encode()).hexdigest() == digest


# --------------------------------------------------------------------------- request parameters
_PARAM_NAMES = st.sampled_from(["proposers", "layers", "aggregator", "settings", "quorum", "grace_s", "deadline_s",
                                "member_timeout_s", "retries", "member_tools", "aggregate_prompt",
                                "max_tool_iterations", "n", "extra_body", "optional_params", "proposer",
                                "samples"])


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=_PARAM_NAMES, value=_JSON)
def test_any_inline_parameter_value_ends_in_an_answer_or_a_clear_litellm_error(fake_server, isolated, name, value):
    kwargs = {"proposers": ["openai/p1"], name: value}
    outcome = completion(model=MOA, messages=user("q"), api_base=fake_server.base_url, api_key=API_KEY,
                         timeout=10, **kwargs)
    if outcome.error is not None:
        assert_clear_litellm_error(outcome.error)


@pytest.mark.parametrize("kwargs,needle", [
    pytest.param({"proposers": "openai/p1"}, "topology.proposers", id="proposers-a-string"),
    pytest.param({"proposers": [1, 2]}, "topology.proposers", id="proposers-numbers"),
    pytest.param({"proposers": [{}]}, "proposers[0].model", id="proposer-without-model"),
    pytest.param({"proposers": ["openai/p1"], "quorum": "all"}, "settings.quorum", id="quorum-a-string"),
    pytest.param({"proposers": ["openai/p1"], "quorum": 2}, "quorum=2 exceeds the 1 members", id="quorum-too-big"),
    pytest.param({"proposers": ["openai/p1"], "settings": {"quorom": 1}}, "settings.quorom: unknown field",
                 id="misspelt-setting"),
    pytest.param({"proposers": ["openai/p1"], "settings": "fast"}, "settings",
                 id="settings-not-a-mapping"),
    pytest.param({"proposers": ["openai/p1"], "settings": [["retries", 1, 2]]}, "settings",
                 id="settings-a-list"),
    pytest.param({"proposers": ["openai/p1"], "layers": [["openai/p2"]]}, "not both", id="proposers-and-layers"),
    pytest.param({"proposers": ["openai/p1"], "extra_body": "x"}, "extra_body must be a mapping",
                 id="extra_body-a-string"),
    pytest.param({"proposers": ["openai/p1"], "n": 3}, "n=3 is not supported", id="n-3"),
    pytest.param({"proposers": ["openai/p1"], "proposer": ["x"]}, "unknown parameter(s) proposer",
                 id="misspelt-parameter"),
    pytest.param({"proposers": ["openai/p1"], "aggregate_prompt": "no slot"}, "{responses}",
                 id="prompt-without-slot"),
    pytest.param({"proposers": ["openai/p1"], "composite_depth": "deep"}, "composite_depth",
                 id="composite_depth-not-a-number"),
    pytest.param({"proposers": ["openai/p1"], "composite_stack": 5}, "composite_stack",
                 id="composite_stack-not-a-list"),
])
def test_wrong_inline_parameters_are_bad_requests_naming_them(fake_server, isolated, kwargs, needle):
    fake_server.clear_requests()
    outcome = completion(model=MOA, messages=user("q"), api_base=fake_server.base_url, api_key=API_KEY, **kwargs)
    assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError, needle=needle)
    assert not fake_server.requests


def test_profile_settings_override_that_is_not_a_mapping_is_a_bad_request(fake_server, isolated, explicit_profiles):
    explicit_profiles({"profiles": {"base": {"strategy": "moa", "topology": {
        "aggregator": "openai/agg", "proposers": ["openai/p1"]}}}})
    outcome = completion(model="composite/profile/base", messages=user("q"), settings="fast",
                         api_base=fake_server.base_url, api_key=API_KEY)
    assert_clear_litellm_error(outcome.error, expected=litellm.BadRequestError, needle="settings")
