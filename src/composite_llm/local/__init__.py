"""Offline local models (llama.cpp, model files from PyPI packages) as the LiteLLM provider `local/`.

    from composite_llm.local import register_local_provider
    register_local_provider()
    litellm.completion(model="local/smollm2-135m", messages=[...])

Importing this package imports neither `llama_cpp` nor `litellm`: the runtime is loaded on the first
request, and the LiteLLM provider (`LocalProvider`, `LOCAL_PROVIDER`, `PROVIDER`) on first use, so the
rest of composite-llm works without llama.cpp and `composite-llm models` (`command.py`) starts fast.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from composite_llm.local.catalog import CATALOG, MODELS, LocalModel, get_model, known_models
from composite_llm.local.errors import (
    LocalContextOverflow,
    LocalModelCorrupt,
    LocalModelError,
    LocalModelNotInstalled,
    LocalRuntimeMissing,
    UnknownLocalModel,
)
if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from composite_llm.local.provider import PROVIDER, LocalProvider

    #: The module-level handler registered under `local`; one per process, shared by every caller.
    LOCAL_PROVIDER: LocalProvider

_instance_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """The provider names, imported on first use (provider.py imports litellm, which takes seconds)."""
    if name not in ("PROVIDER", "LocalProvider", "LOCAL_PROVIDER"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from composite_llm.local import provider

    if name != "LOCAL_PROVIDER":
        return getattr(provider, name)
    with _instance_lock:  # one per process: the proxy config and register_local_provider share it
        if "LOCAL_PROVIDER" not in globals():
            globals()["LOCAL_PROVIDER"] = provider.LocalProvider()
    return globals()["LOCAL_PROVIDER"]


def register_local_provider() -> LocalProvider:
    """Make `local/<name>` models available to LiteLLM; safe to call any number of times.

    Keeps every other entry of `litellm.custom_provider_map`, replaces a stale `local` entry that
    points at another handler (e.g. after a module reload), and never adds a duplicate.
    """
    from composite_llm.local.provider import PROVIDER
    from composite_llm.registration import register_provider  # imports litellm: only when registering

    LOCAL_PROVIDER = __getattr__("LOCAL_PROVIDER")
    register_provider(PROVIDER, LOCAL_PROVIDER)
    return LOCAL_PROVIDER


__all__ = [
    "CATALOG",
    "LOCAL_PROVIDER",
    "MODELS",
    "PROVIDER",
    "LocalContextOverflow",
    "LocalModel",
    "LocalModelCorrupt",
    "LocalModelError",
    "LocalModelNotInstalled",
    "LocalProvider",
    "LocalRuntimeMissing",
    "UnknownLocalModel",
    "get_model",
    "known_models",
    "register_local_provider",
]
