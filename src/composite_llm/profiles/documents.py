"""What a profile document holds once validated: the document models, the loaded profile and source, and the
two load errors (an unknown profile, a document that failed to load).

No I/O and no validation logic here: `validation.py` builds these, `files.py` caches them per file,
`sources.py` searches them in precedence order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from ..errors import CompositeConfigError
from ..schema import ProviderBundle, StrictModel
from ..strategies.base import Strategy, Topology

# A composite sends the whole conversation to every member: the default cap per request (about 1M tokens
# of text, past every model's context; 0 disables it).
DEFAULT_MAX_INPUT_BYTES = 4 * 1024 * 1024
# Error bodies stay readable: a document with a thousand broken nodes lists the first problems only.
MAX_LISTED_PROBLEMS = 20
MAX_ERROR_CHARS = 4000


class UnknownProfileError(CompositeConfigError):
    """No source defines the profile. Keeps the pieces so the proxy can word it for its clients."""

    def __init__(self, name: str, known: list[str], searched: str) -> None:
        self.name, self.known, self.searched = name, known, searched
        super().__init__(f"unknown profile {name!r}; known profiles: {', '.join(known) or 'none'} "
                         f"(searched: {searched})")

    def for_proxy_client(self, callable_names: list[str] | None) -> str:
        """The message for a proxy client: only model names it could call, no server paths."""
        if callable_names is None:
            return f"unknown profile {self.name!r} (the proxy's composite configuration does not define it)"
        return (f"unknown profile {self.name!r}; composite models served here: "
                f"{', '.join(callable_names) or 'none'}")


class ProfileFileError(CompositeConfigError):
    """A profile document that failed to load. `declared` holds the profile names it defines when its YAML
    could be read (so only lookups of those names are affected), None when even that is unknown."""

    def __init__(self, message: str, declared: frozenset[str] | None = None) -> None:
        super().__init__(message)
        self.declared = declared

    def may_define(self, name: str) -> bool:
        return self.declared is None or name in self.declared


def first_problem(exc: BaseException) -> str:
    """The first problem of a load error, on one line (for trace notes and log lines)."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    return " ".join(lines[:2])[:300] or type(exc).__name__


def capped(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """An error body cut to `limit` characters, saying how long it was."""
    return message if len(message) <= limit else message[: limit - 40] + f"\n  ... ({len(message):,} characters, cut)"


class ProfileSpec(StrictModel):
    strategy: str = Field(min_length=1)
    description: str | None = None
    topology: dict[str, Any] = Field(default_factory=dict)


class TraceLogConfig(StrictModel):
    """JSONL log of every composite request (one line per request, secrets redacted)."""

    enabled: bool = True
    path: str = "composite_traces.jsonl"


class ResearchObservability(StrictModel):
    """composite_llm_research's `observability: {enabled, log_file}` block, read as a trace log setting."""

    enabled: bool = False
    log_file: str | None = None


class DocumentSettings(StrictModel):
    """Top-level keys of a profile document besides providers/profiles."""

    profiles_path: str | list[str] | None = None
    allow_request_overrides: bool = False
    trace_log: TraceLogConfig | None = None
    observability: ResearchObservability | None = None
    # composite_llm_research mapped strategy names to classes; strategies are registered in code here, so the block
    # is accepted for compatibility and checked to name known strategies only.
    strategy_registry: dict[str, str] | None = None
    # Cap on the conversation size of one composite request, in bytes of JSON (None: the default,
    # DEFAULT_MAX_INPUT_BYTES; 0: no cap).
    max_input_bytes: int | None = Field(default=None, ge=0)


@dataclass
class LoadedProfile:
    """A validated profile ready to run."""

    name: str
    strategy: Strategy[Any]
    topology: Topology
    origin: str
    providers: dict[str, ProviderBundle]
    description: str | None = None
    # Set when the profile comes from the last good version of a file that has since become invalid.
    stale: str | None = None


@dataclass
class LoadedSource:
    origin: str
    providers: dict[str, ProviderBundle] = field(default_factory=dict)
    profiles: dict[str, LoadedProfile] = field(default_factory=dict)
    settings: DocumentSettings = field(default_factory=DocumentSettings)
    # Files of a folder that failed to load: the folder's other files still serve their profiles.
    broken: list[ProfileFileError] = field(default_factory=list)


def stale_copy(source: LoadedSource, warning: str) -> LoadedSource:
    """The last good version of a source, every profile marked with why it is stale."""
    profiles = {name: dataclasses.replace(profile, stale=warning) for name, profile in source.profiles.items()}
    return dataclasses.replace(source, profiles=profiles)
