"""Offline local models (llama.cpp, model files from PyPI packages) as the LiteLLM provider `local/`.

    from composite_llm.local import register_local_provider
    register_local_provider()
    litellm.completion(model="local/smollm2-135m", messages=[...])

Importing this package does not import `llama_cpp`: the runtime is loaded on the first request, so
the rest of composite-llm works (and `composite-llm models` can say what is missing) without it.
"""

from __future__ import annotations

from composite_llm.local.catalog import CATALOG, MODELS, LocalModel, get_model, known_models
from composite_llm.local.errors import (
    LocalContextOverflow,
    LocalModelCorrupt,
    LocalModelError,
    LocalModelNotInstalled,
    LocalRuntimeMissing,
    UnknownLocalModel,
)
from composite_llm.local.provider import PROVIDER, LocalProvider
from composite_llm.registration import register_provider

#: The module-level handler registered under `local`; one per process, shared by every caller.
LOCAL_PROVIDER = LocalProvider()


def register_local_provider() -> LocalProvider:
    """Make `local/<name>` models available to LiteLLM; safe to call any number of times.

    Keeps every other entry of `litellm.custom_provider_map`, replaces a stale `local` entry that
    points at another handler (e.g. after a module reload), and never adds a duplicate.
    """
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
