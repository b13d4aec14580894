"""The local models' plugin: the `local/` LiteLLM provider, registered through
`composite_llm.registration.register_provider` (see composite_llm.plugins). llama.cpp itself is loaded
on the first request, so registering costs nothing where it is not installed."""

from __future__ import annotations


def register() -> None:
    from . import register_local_provider

    register_local_provider()
