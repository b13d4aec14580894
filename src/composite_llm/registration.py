"""The one way composite_llm puts a LiteLLM custom provider in place (`composite`, `local`, a benchmark's).

LiteLLM (1.108.7) finds a custom provider in two places: the handler in `litellm.custom_provider_map`
(looked up by name on every call), and the name in `litellm.provider_list` / `litellm._custom_providers`
(which route `name/model` strings to that map), filled from the map by `litellm.utils.custom_llm_setup()`.
Registration therefore edits the map and then runs that setup. The map is edited in place, never
rebound, so code holding the list (the proxy's config loader, a test restoring it) sees one list.
"""

from __future__ import annotations

import threading

import litellm
import litellm.utils
from litellm.llms.custom_llm import CustomLLM

__all__ = ["register_provider", "unregister_provider"]

_lock = threading.Lock()


def _provider_map() -> list:
    """`litellm.custom_provider_map` as a list to edit (made one if someone set None or a tuple)."""
    current = litellm.custom_provider_map
    if not isinstance(current, list):
        current = list(current or [])
        litellm.custom_provider_map = current
    return current


def register_provider(name: str, handler: CustomLLM) -> CustomLLM:
    """Make `name/<model>` strings reach `handler`; safe to call any number of times, from any thread.

    Keeps every other provider's entry; an entry of the same name pointing at another handler (e.g. one
    left by a module reload) is replaced, and duplicates of the name are collapsed into one entry.
    """
    if not name or "/" in name:
        raise ValueError(f"a provider name must be non-empty and contain no '/', got {name!r}")
    if not isinstance(handler, CustomLLM):
        raise TypeError(f"the handler of provider {name!r} must be a litellm CustomLLM, got {type(handler).__name__}")
    with _lock:
        entries = _provider_map()
        ours = [e for e in entries if e.get("provider") == name]
        if len(ours) != 1 or ours[0].get("custom_handler") is not handler:
            entries[:] = [e for e in entries if e.get("provider") != name] + [
                {"provider": name, "custom_handler": handler}]
        litellm.utils.custom_llm_setup()
    return handler


def unregister_provider(name: str) -> None:
    """Remove `name`'s entry (a test's or benchmark's temporary provider); other entries stay."""
    with _lock:
        entries = _provider_map()
        entries[:] = [e for e in entries if e.get("provider") != name]
