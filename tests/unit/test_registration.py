"""composite_llm.registration: one idempotent way to put a custom provider in LiteLLM's tables."""

from __future__ import annotations

import threading

import litellm
import pytest
from litellm.llms.custom_llm import CustomLLM
from litellm.utils import ProviderConfigManager

from composite_llm.litellm_provider import COMPOSITE_PROVIDER, register_composite_provider
from composite_llm.local import LOCAL_PROVIDER, register_local_provider
from composite_llm.registration import register_provider, unregister_provider

NAME = "unitprov"


class _Handler(CustomLLM):
    pass


@pytest.fixture()
def provider_map():
    """The map as the test found it, restored in place afterwards."""
    saved = list(litellm.custom_provider_map)
    yield litellm.custom_provider_map
    litellm.custom_provider_map[:] = saved


def _entries(name: str) -> list:
    return [e for e in litellm.custom_provider_map if e["provider"] == name]


def test_registration_is_idempotent_keeps_others_and_edits_the_list_in_place(provider_map):
    other = {"provider": "someone-else", "custom_handler": _Handler()}
    provider_map.append(other)
    handler = _Handler()
    for _ in range(3):
        assert register_provider(NAME, handler) is handler
    assert litellm.custom_provider_map is provider_map  # never rebound
    assert _entries(NAME) == [{"provider": NAME, "custom_handler": handler}]
    assert other in provider_map
    assert NAME in litellm.provider_list and NAME in litellm._custom_providers  # routable
    assert ProviderConfigManager.get_custom_llm_handler(NAME) is handler


def test_a_stale_or_duplicated_entry_is_replaced_by_one(provider_map):
    stale = _Handler()
    provider_map.extend([{"provider": NAME, "custom_handler": stale}] * 2)
    fresh = register_provider(NAME, _Handler())
    assert _entries(NAME) == [{"provider": NAME, "custom_handler": fresh}]
    unregister_provider(NAME)
    assert _entries(NAME) == []


def test_a_map_set_to_none_is_recovered(provider_map, monkeypatch):
    monkeypatch.setattr(litellm, "custom_provider_map", None)
    handler = register_provider(NAME, _Handler())
    assert litellm.custom_provider_map == [{"provider": NAME, "custom_handler": handler}]


def test_bad_registrations_are_refused():
    with pytest.raises(ValueError, match="provider name"):
        register_provider("a/b", _Handler())
    with pytest.raises(TypeError, match="CustomLLM"):
        register_provider(NAME, object())  # type: ignore[arg-type]


def test_concurrent_registration_leaves_one_entry(provider_map):
    handler = _Handler()
    threads = [threading.Thread(target=register_provider, args=(NAME, handler)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert _entries(NAME) == [{"provider": NAME, "custom_handler": handler}]


def test_both_providers_register_through_it(provider_map):
    """`composite` and `local` end up as exactly one entry each, in the same list, after repeated calls
    (before, one rebound the list and the other mutated it)."""
    register_local_provider()
    register_composite_provider()
    register_composite_provider()
    assert litellm.custom_provider_map is provider_map
    assert _entries("composite") == [{"provider": "composite", "custom_handler": COMPOSITE_PROVIDER}]
    assert _entries("local") == [{"provider": "local", "custom_handler": LOCAL_PROVIDER}]
