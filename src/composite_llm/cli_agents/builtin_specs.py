"""Built-in specs: Cursor ``agent``, Claude Code, Codex and Gemini CLI.

Flags and event shapes follow each CLI's documentation (see DESIGN.md §4); re-check ``--help`` of
the installed version when something changes. Every built-in is read-only unless the settings
say ``allow_writes: true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import CLISpecError
from .spec import CLISpec

__all__ = ["CURSOR", "CLAUDE", "CODEX", "GEMINI", "BUILTIN_SPECS", "SPEC_ALIASES", "get_spec", "known_spec_names"]

# Cursor `agent` (formerly `cursor-agent`). stream-json: system/init, user, assistant
# {message.content[].text}, tool_call started/completed, terminal result. With
# --stream-partial-output, deltas are assistant events carrying `timestamp_ms` (and never
# `model_call_id`); cumulative snapshots of the segment follow (mid-turn tagged `model_call_id`,
# at the end without `timestamp_ms`), so `result.result` is authoritative. Headless runs need
# --trust, and the process may linger after `result`: exit_on_result kills the group.
CURSOR = CLISpec(
    name="cursor",
    description="Cursor agent CLI (`agent`, formerly `cursor-agent`), e.g. model composer-1",
    command=["agent", "cursor-agent"],
    args=["-p", "--output-format", "stream-json", "--trust"],
    model_args=["--model", "{model}"],
    stream_args=["--stream-partial-output"],
    read_only_args=["--mode", "ask"],
    write_args=["--force"],
    prompt_via="stdin",
    env_keys=["CURSOR_API_KEY"],
    output_format="stream-json",
    terminal_events=[{"type": "result"}],
    exit_on_result=True,
    result_text_path="result",
    delta_events=[
        {"match": {"equals": {"type": "assistant"}, "present": ["timestamp_ms"], "absent": ["model_call_id"]},
         "path": "message.content[].text"},
    ],
    message_events=[{"match": {"type": "assistant"}, "path": "message.content[].text"}],
    error_when=[{"is_error": True}],
    error_message_paths=["error.message", "error", "result", "message", "subtype"],
    # Cursor reports camelCase usage; inputTokens is taken to exclude cache reads/writes
    # (Anthropic-style), so prompt tokens are the sum.
    usage={
        "prompt_tokens": ["usage.inputTokens", "usage.cacheReadTokens", "usage.cacheWriteTokens"],
        "completion_tokens": ["usage.outputTokens"],
        "cached_tokens": ["usage.cacheReadTokens"],
        "reasoning_tokens": ["usage.reasoningTokens"],
        "total_tokens": ["usage.totalTokens"],
    },
    session_id_paths=["session_id", "sessionId"],
)

# Claude Code: `claude -p --output-format stream-json --verbose`; partial messages arrive as
# stream_event/content_block_delta. Read-only = no built-in tools and no user MCP servers.
CLAUDE = CLISpec(
    name="claude",
    description="Claude Code CLI (`claude -p`)",
    command=["claude"],
    args=["-p", "--output-format", "stream-json", "--verbose"],
    model_args=["--model", "{model}"],
    stream_args=["--include-partial-messages"],
    read_only_args=["--tools", "", "--strict-mcp-config"],
    write_args=["--permission-mode", "acceptEdits"],
    prompt_via="stdin",
    env_keys=["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"],
    env_passthrough=["ANTHROPIC_BASE_URL", "CLAUDE_CONFIG_DIR"],
    output_format="stream-json",
    terminal_events=[{"type": "result"}],
    exit_on_result=True,
    result_text_path="result",
    delta_events=[
        {"match": {"type": "stream_event", "event.type": "content_block_delta", "event.delta.type": "text_delta"},
         "path": "event.delta.text"},
    ],
    message_events=[{"match": {"type": "assistant"}, "path": "message.content[].text"}],
    error_when=[{"is_error": True}],
    error_message_paths=["error.message", "error", "result", "message", "subtype"],
    # Anthropic usage: input_tokens excludes cache reads and cache writes.
    usage={
        "prompt_tokens": ["usage.input_tokens", "usage.cache_read_input_tokens",
                          "usage.cache_creation_input_tokens"],
        "completion_tokens": ["usage.output_tokens"],
        "cached_tokens": ["usage.cache_read_input_tokens"],
    },
    cost_usd_path="total_cost_usd",
    session_id_paths=["session_id"],
)

# Codex: `codex exec --json -m M -s read-only --skip-git-repo-check -` (prompt on stdin, which
# must close). Events: thread.started{thread_id}, item.completed{item{type:agent_message,text}},
# turn.completed{usage} | turn.failed{error{message}}, error{message}. No result text: the answer
# is the last agent message.
CODEX = CLISpec(
    name="codex",
    description="OpenAI Codex CLI (`codex exec --json`)",
    command=["codex"],
    args=["exec", "--json", "--skip-git-repo-check"],
    model_args=["-m", "{model}"],
    read_only_args=["-s", "read-only"],
    write_args=["-s", "workspace-write"],
    trailing_args=["-"],
    prompt_via="stdin",
    env_keys=["OPENAI_API_KEY", "CODEX_API_KEY"],
    env_passthrough=["CODEX_HOME", "OPENAI_BASE_URL"],
    output_format="stream-json",
    terminal_events=[{"type": ["turn.completed", "turn.failed"]}],
    exit_on_result=True,
    result_text_path=None,
    message_events=[{"match": {"type": "item.completed", "item.type": "agent_message"}, "path": "item.text"}],
    message_join="last",
    error_when=[{"type": "turn.failed"}],
    error_events=[{"type": "error"}],
    error_message_paths=["error.message", "message", "error"],
    # OpenAI usage: input_tokens includes the cached ones.
    usage={
        "prompt_tokens": ["usage.input_tokens"],
        "completion_tokens": ["usage.output_tokens"],
        "cached_tokens": ["usage.cached_input_tokens"],
        "reasoning_tokens": ["usage.reasoning_output_tokens"],
    },
    session_id_paths=["thread_id"],
)

# Gemini CLI: `gemini -o stream-json -m M` with the prompt on stdin (headless when stdin is not
# a TTY). Events: init{session_id}, message{role, content, delta}, tool_use, tool_result,
# error (non-fatal), result{status, error?, stats}. The answer is the assistant deltas.
GEMINI = CLISpec(
    name="gemini",
    description="Google Gemini CLI (`gemini -o stream-json`)",
    command=["gemini"],
    args=["--output-format", "stream-json"],
    model_args=["--model", "{model}"],
    read_only_args=["--approval-mode", "default"],
    write_args=["--approval-mode", "auto_edit"],
    prompt_via="stdin",
    env_keys=["GEMINI_API_KEY", "GOOGLE_API_KEY"],
    env_passthrough=["GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_GENAI_USE_VERTEXAI",
                     "GOOGLE_APPLICATION_CREDENTIALS"],
    output_format="stream-json",
    terminal_events=[{"type": "result"}],
    exit_on_result=True,
    result_text_path="response",
    delta_events=[{"match": {"type": "message", "role": "assistant"}, "path": "content"}],
    error_when=[{"type": "result", "status": "error"}],
    error_events=[{"type": "error"}],
    error_message_paths=["error.message", "message", "error"],
    usage={
        "prompt_tokens": ["stats.input_tokens"],
        "completion_tokens": ["stats.output_tokens"],
        "cached_tokens": ["stats.cached"],
        "total_tokens": ["stats.total_tokens"],
    },
    session_id_paths=["session_id"],
)

BUILTIN_SPECS: dict[str, CLISpec] = {s.name: s for s in (CURSOR, CLAUDE, CODEX, GEMINI)}

#: Other names that resolve to a built-in spec.
SPEC_ALIASES: dict[str, str] = {
    "agent": "cursor",
    "cursor-agent": "cursor",
    "composer": "cursor",
    "composer-cli": "cursor",
    "claude-code": "claude",
    "gemini-cli": "gemini",
}


def known_spec_names(custom_specs: Mapping[str, Any] | None = None) -> list[str]:
    return sorted(set(BUILTIN_SPECS) | set(custom_specs or {}))


def get_spec(name: str, custom_specs: Mapping[str, CLISpec | Mapping[str, Any]] | None = None) -> CLISpec:
    """The spec called ``name``: user specs (which may override built-ins) first, then built-ins.

    ``custom_specs`` maps names to :class:`CLISpec` objects or dicts (validated here; a dict
    without ``name`` takes its key). Raises :class:`CLISpecError` listing the known names.
    """
    if custom_specs and name in custom_specs:
        raw = custom_specs[name]
        if isinstance(raw, CLISpec):
            return raw
        if not isinstance(raw, Mapping):
            raise CLISpecError(f"CLI spec {name!r} must be a mapping, got {type(raw).__name__}", spec_name=name)
        data = dict(raw)
        data.setdefault("name", name)
        try:
            return CLISpec.model_validate(data)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise CLISpecError(f"invalid CLI spec {name!r}: {exc}", spec_name=name) from exc
    key = SPEC_ALIASES.get(name, name)
    if key in BUILTIN_SPECS:
        return BUILTIN_SPECS[key]
    raise CLISpecError(
        f"unknown CLI spec {name!r}; known specs: {', '.join(known_spec_names(custom_specs))}",
        spec_name=name,
    )
