"""Coding-agent CLIs (Cursor ``agent``, Claude Code, Codex, Gemini, or your own) as chat models.

One declarative :class:`CLISpec` per CLI plus a subprocess runner with strict hygiene::

    from composite_llm.cli_agents import get_spec, run_cli_agent, CLISettings

    result = await run_cli_agent(get_spec("cursor"), "composer-1", messages,
                                 CLISettings(timeout_seconds=120))
    print(result.text, result.usage)

The package itself knows nothing about LiteLLM: ``strategy.py`` (the ``composer-cli`` strategy, loaded
by ``plugin.py`` through composite_llm.plugins) adapts it.
"""

from .builtin_specs import BUILTIN_SPECS, CLAUDE, CODEX, CURSOR, GEMINI, SPEC_ALIASES, get_spec, known_spec_names
from .errors import (
    CLIAgentError,
    CLIExitError,
    CLINotFoundError,
    CLIOutputError,
    CLISpecError,
    CLITimeoutError,
)
from ..redact import Redactor
from .runner import (
    BASE_ENV_ALLOWLIST,
    CLIEvent,
    CLIResult,
    CLISettings,
    TextDelta,
    build_argv,
    build_env,
    run_cli_agent,
    stream_cli_agent,
)
from .serialize import content_to_text, serialize_messages
from .spec import CLISpec, EventMatch, TextRule, UsagePaths

__all__ = [
    "BASE_ENV_ALLOWLIST",
    "BUILTIN_SPECS",
    "CLAUDE",
    "CODEX",
    "CURSOR",
    "GEMINI",
    "SPEC_ALIASES",
    "CLIAgentError",
    "CLIEvent",
    "CLIExitError",
    "CLINotFoundError",
    "CLIOutputError",
    "CLIResult",
    "CLISettings",
    "CLISpec",
    "CLISpecError",
    "CLITimeoutError",
    "EventMatch",
    "Redactor",
    "TextDelta",
    "TextRule",
    "UsagePaths",
    "build_argv",
    "build_env",
    "content_to_text",
    "get_spec",
    "known_spec_names",
    "run_cli_agent",
    "serialize_messages",
    "stream_cli_agent",
]
