"""`router/<model_name>` members: sub-calls through a LiteLLM Router (SDK side, no proxy process).

The Router's deployments are models of the real FakeOpenAIServer; the composite is registered with
`composite_llm.register(router=...)`. What must hold: the group's deployments share the load, a failing
deployment is cooled down (the Router's bookkeeping runs although sub-calls are `no-log`), group fallbacks
apply, usage/cost stay the exact sum, sub-calls log nothing of their own, and a wrong group or a cycle is a
clear configuration error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger

import composite_llm
from composite_llm import router_members
from composite_llm.errors import CompositeConfigError
from composite_llm.profiles import REGISTRY
from composite_llm.testing import count_tokens
from conftest import cancel_once_sent

PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}


def _user(text: str = "What is 2+2?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _deployment(group: str, model: str, base_url: str, **extra: Any) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": f"openai/{model}", "api_base": base_url,
                                                    "api_key": "sk-fake-router", **PRICE, **extra}}


def _profiles(**profiles: dict[str, Any]) -> dict[str, Any]:
    return {"profiles": {name: {"strategy": "moa", "topology": topo} for name, topo in profiles.items()}}


@pytest.fixture()
def use_router():
    """Register a router (and optionally profiles) for one test; forget both afterwards."""
    routers: list[litellm.Router] = []

    def use(model_list: list[dict[str, Any]], profiles: dict[str, Any], **router_kwargs: Any) -> litellm.Router:
        router = litellm.Router(model_list=model_list, **router_kwargs)
        routers.append(router)
        composite_llm.register(router=router, profiles=profiles)
        return router
    yield use
    REGISTRY.set_explicit(None)
    router_members.set_router(None)
    for router in routers:
        router.discard()  # unhook its callbacks from LiteLLM's global lists


class _Recorder(CustomLogger):
    """Every success event LiteLLM's logging delivers (what a spend logger or Langfuse would see)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.events.append({"model": kwargs.get("model"), "cost": kwargs.get("response_cost")})


@pytest.fixture()
def recorder():
    probe = _Recorder()
    litellm.callbacks.append(probe)
    yield probe
    litellm.callbacks.remove(probe)


async def _events_settled(recorder: _Recorder, count: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(recorder.events) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # anything logged late (a sub-call's event) arrives too


# --------------------------------------------------------------------------- routing
async def test_router_members_spread_over_the_groups_deployments_with_exact_usage_and_cost(server, use_router,
                                                                                        recorder):
    for name in ("d1", "d2", "agg"):
        server.set_model(name, reply=f"{name} says 4")
    use_router([_deployment("pool", "d1", server.base_url), _deployment("pool", "d2", server.base_url),
                _deployment("final", "agg", server.base_url)],
               _profiles(pooled={"aggregator": "router/final", "proposers": ["router/pool"] * 4,
                                 "settings": {"retries": 0}}), num_retries=0)
    response = await litellm.acompletion(model="composite/profile/pooled", messages=_user())
    assert response.choices[0].message.content == "agg says 4"
    by_model = sorted(r.model for r in server.requests)
    assert by_model.count("agg") == 1 and by_model.count("d1") + by_model.count("d2") == 4
    assert by_model.count("d1") >= 1 and by_model.count("d2") >= 1 or len(set(by_model)) >= 2
    # usage and cost: the exact sum over the five upstream calls
    assert response.usage.prompt_tokens == sum(r.prompt_tokens for r in server.requests)
    assert response.usage.completion_tokens == sum(count_tokens(f"{r.model} says 4") for r in server.requests)
    expected = sum(r.prompt_tokens * PRICE["input_cost_per_token"]
                   + count_tokens(f"{r.model} says 4") * PRICE["output_cost_per_token"] for r in server.requests)
    assert response._hidden_params["response_cost"] == pytest.approx(expected, rel=1e-9)
    trace = response.choices[0].message.provider_specific_fields["composite"]
    assert [c["model"] for c in trace["sub_calls"]].count("router/pool") == 4
    # spend: one logged request (the composite) with the summed cost; the five sub-calls log nothing
    await _events_settled(recorder, 1)
    assert len(recorder.events) == 1, recorder.events
    assert recorder.events[0]["cost"] == pytest.approx(expected, rel=1e-9)


async def test_router_members_get_their_deployments_spread_across_requests(server, use_router):
    # Model names of its own: no other test's deployment (same params, same deployment id) is involved.
    for name in ("spread1", "spread2", "agg"):
        server.set_model(name, reply=f"{name} says 4")
    use_router([_deployment("pool", "spread1", server.base_url), _deployment("pool", "spread2", server.base_url)],
               _profiles(pooled={"aggregator": {"model": "openai/agg", "params": {"api_base": server.base_url,
                                                                                  "api_key": "sk-fake"}},
                                 "proposers": ["router/pool"], "settings": {"retries": 0}}), num_retries=0)
    for _ in range(12):
        await litellm.acompletion(model="composite/profile/pooled", messages=_user())
    counts = {m: len(server.requests_for(m)) for m in ("spread1", "spread2")}
    assert sum(counts.values()) == 12 and min(counts.values()) >= 1, counts  # simple-shuffle used both


async def test_failing_deployment_is_cooled_down_for_composite_members(server, use_router):
    """The Router's cooldown runs on its failure callback, which `no-log` sub-calls would skip: without the
    bookkeeping callback the broken deployment keeps receiving about half of the members' calls."""
    server.set_model("bad", fail_status=500, fail_message="deployment down")
    server.set_model("good", reply="good says 4")
    server.set_model("agg", reply="agg says 4")
    use_router([_deployment("pool", "bad", server.base_url), _deployment("pool", "good", server.base_url)],
               _profiles(pooled={"aggregator": {"model": "openai/agg", "params": {"api_base": server.base_url,
                                                                                  "api_key": "sk-fake"}},
                                 "proposers": ["router/pool"], "settings": {"retries": 1}}),
               num_retries=0, allowed_fails=0, cooldown_time=60)
    answered = 0
    for _ in range(12):
        response = await litellm.acompletion(model="composite/profile/pooled", messages=_user())
        answered += response.choices[0].message.content == "agg says 4"
        await asyncio.sleep(0.05)  # the failure callback runs just after the failed call returns
    assert answered == 12
    assert len(server.requests_for("bad")) == 1, len(server.requests_for("bad"))  # then in cooldown
    assert len(server.requests_for("good")) == 12


async def test_group_fallbacks_apply_to_members(server, use_router):
    server.set_model("down", fail_status=500, fail_message="group down")
    server.set_model("spare", reply="spare says 4")
    server.set_model("agg", reply="agg says 4")
    use_router([_deployment("primary", "down", server.base_url), _deployment("backup", "spare", server.base_url),
                _deployment("final", "agg", server.base_url)],
               _profiles(fb={"aggregator": "router/final", "proposers": ["router/primary"],
                             "settings": {"retries": 0}}),
               num_retries=0, fallbacks=[{"primary": ["backup"]}])
    response = await litellm.acompletion(model="composite/profile/fb", messages=_user())
    assert response.choices[0].message.content == "agg says 4"
    assert [r.model for r in server.requests] == ["down", "spare", "agg"]
    assert "spare says 4" in server.requests_for("agg")[0].all_text


async def test_streamed_final_stage_through_the_router(server, use_router):
    for name in ("d1", "agg"):
        server.set_model(name, reply=f"{name} says four", chunk_delay_s=0.0)
    use_router([_deployment("pool", "d1", server.base_url), _deployment("final", "agg", server.base_url)],
               _profiles(pooled={"aggregator": "router/final", "proposers": ["router/pool"],
                                 "settings": {"retries": 0}}), num_retries=0)
    stream = await litellm.acompletion(model="composite/profile/pooled", messages=_user(), stream=True,
                                       stream_options={"include_usage": True})
    text, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        usage = getattr(chunk, "usage", None) or usage
    assert "".join(text) == "agg says four"
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in server.requests)
    assert server.requests_for("agg")[0].stream


# --------------------------------------------------------------------------- configuration errors
def test_unknown_group_is_rejected_at_registration_listing_the_groups(server):
    router = litellm.Router(model_list=[_deployment("pool", "d1", server.base_url),
                                        _deployment("final", "agg", server.base_url)])
    try:
        with pytest.raises(CompositeConfigError) as raised:
            composite_llm.register(router=router, profiles=_profiles(
                typo={"aggregator": "router/final", "proposers": ["router/pools"]}))
        message = str(raised.value)
        assert "profile 'typo'" in message and "'pools' does not exist" in message
        assert "the router's groups: final, pool" in message
    finally:
        REGISTRY.set_explicit(None)
        router_members.set_router(None)


async def test_router_member_without_a_router_is_a_bad_request(server, explicit_profiles):
    explicit_profiles(_profiles(lonely={"aggregator": "openai/agg", "proposers": ["router/pool"]}))
    with pytest.raises(litellm.BadRequestError, match=r"register\(router=litellm.Router"):
        await litellm.acompletion(model="composite/profile/lonely", messages=_user(), api_base=server.base_url,
                                  api_key="sk-fake")
    assert server.requests == []


def test_group_serving_the_profile_itself_is_a_cycle_at_load_time(server):
    router = litellm.Router(model_list=[
        {"model_name": "self_ref", "litellm_params": {"model": "composite/profile/self_ref"}},
        _deployment("pool", "d1", server.base_url)])
    try:
        with pytest.raises(CompositeConfigError, match=r"composite cycle: composite/profile/self_ref -> "
                                                       r"router/self_ref -> composite/profile/self_ref"):
            composite_llm.register(router=router, profiles=_profiles(
                self_ref={"aggregator": "router/pool", "proposers": ["router/self_ref", "router/pool"]}))
    finally:
        REGISTRY.set_explicit(None)
        router_members.set_router(None)


async def test_cycle_of_two_profiles_through_router_groups_is_a_bad_request(server, use_router):
    server.set_model("d1", reply="d1 says 4")
    use_router([{"model_name": "group_a", "litellm_params": {"model": "composite/profile/a", "num_retries": 0}},
                {"model_name": "group_b", "litellm_params": {"model": "composite/profile/b", "num_retries": 0}},
                _deployment("pool", "d1", server.base_url)],
               _profiles(a={"aggregator": "router/pool", "proposers": ["router/group_b"]},
                         b={"aggregator": "router/pool", "proposers": ["router/group_a"]}), num_retries=0)
    with pytest.raises(litellm.BadRequestError, match="composite cycle: composite/profile/a -> composite/profile/b"
                                                      " -> router/group_a -> composite/profile/a"):
        await litellm.acompletion(model="composite/profile/a", messages=_user())
    assert server.requests == []


async def test_a_composite_group_is_a_usable_member(server, use_router):
    for name in ("d1", "d2", "agg"):
        server.set_model(name, reply=f"{name} says 4")
    use_router([{"model_name": "inner_group", "litellm_params": {"model": "composite/profile/inner", "num_retries": 0}},
                _deployment("pool", "d1", server.base_url), _deployment("solo", "d2", server.base_url),
                _deployment("final", "agg", server.base_url)],
               _profiles(inner={"aggregator": "router/final", "proposers": ["router/pool"]},
                         outer={"aggregator": "router/final", "proposers": ["router/inner_group", "router/solo"]}),
               num_retries=0)
    response = await litellm.acompletion(model="composite/profile/outer", messages=_user())
    assert response.choices[0].message.content == "agg says 4"
    assert sorted(r.model for r in server.requests) == ["agg", "agg", "d1", "d2"]
    assert response.usage.prompt_tokens == sum(r.prompt_tokens for r in server.requests)


def test_register_rejects_something_that_is_not_a_router():
    with pytest.raises(CompositeConfigError, match="litellm.Router"):
        composite_llm.register(router="gpt-4o")


def test_proxy_usage_shows_the_tested_router_config_verbatim():
    """PROXY_USAGE.md section 9 is a copy of litellm_proxy.router.example.yaml, which the scale-out test
    boots; the two must not drift apart."""
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "PROXY_USAGE.md").read_text()
    section = text[text.index("## 9. Members through the proxy's Router"):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):]
    block = block[:block.index("\n```")]
    config_text = (repo / "litellm_proxy.router.example.yaml").read_text()
    assert block.strip() == config_text.strip()
    config = yaml.safe_load(config_text)
    from composite_llm.profiles import load_proxy_block

    groups = {d["model_name"] for d in config["model_list"]}
    router = litellm.Router(model_list=[{"model_name": g, "litellm_params": {"model": "openai/x", "api_key": "k"}}
                                        for g in groups])
    router_members.set_router(router)
    try:  # every router/ node of the shipped block names a group of the shipped model_list
        assert sorted(load_proxy_block(config["general_settings"]["composite_llm"]).profiles) == [
            "council_groups", "moa_groups"]
    finally:
        router_members.set_router(None)


async def test_request_api_base_and_key_do_not_override_a_router_deployment(server, use_router):
    """The composite request's api_base/api_key are defaults for direct members only: a router member goes to
    its deployment with the deployment's own credentials (the request's would otherwise win in the Router)."""
    for name in ("d1", "agg"):
        server.set_model(name, reply=f"{name} says 4")
    use_router([_deployment("pool", "d1", server.base_url)],
               _profiles(mixed={"aggregator": "openai/agg", "proposers": ["router/pool"], "settings": {"retries": 0}}),
               num_retries=0)
    response = await litellm.acompletion(model="composite/profile/mixed", messages=_user(), api_base=server.base_url,
                                         api_key="sk-request-key")
    assert response.choices[0].message.content == "agg says 4"
    assert server.requests_for("d1")[0].headers["Authorization"] == "Bearer sk-fake-router"
    assert server.requests_for("agg")[0].headers["Authorization"] == "Bearer sk-request-key"


async def test_cancelling_the_caller_cancels_router_members(server, use_router):
    """Cancellation reaches sub-calls inside the Router: the deployments see the disconnects, the
    aggregator is never called."""
    for name in ("d1", "d2"):
        server.set_model(name, latency_s=30)
    use_router([_deployment("pool", "d1", server.base_url), _deployment("pool", "d2", server.base_url),
                _deployment("final", "agg", server.base_url)],
               _profiles(pooled={"aggregator": "router/final", "proposers": ["router/pool"] * 3}), num_retries=0)
    task = asyncio.ensure_future(litellm.acompletion(model="composite/profile/pooled", messages=_user()))
    await cancel_once_sent(task, server, 3)
    assert not server.requests_for("agg")
