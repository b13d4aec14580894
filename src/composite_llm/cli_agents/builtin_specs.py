"""Built-in specs: Cursor ``agent``, Claude Code, Codex and Gemini CLI.

Claude Code, Codex and Gemini CLI are checked against the real CLIs from npm (the versions in
:mod:`.versions`; tests/test_cli_agents_real.py drives them through a LiteLLM proxy, and their captured
event lines are fixtures in tests/fixtures/cli_agents/real/). Cursor's ``agent`` is not on npm: its
spec follows its documentation. Every built-in is read-only unless the settings say
``allow_writes: true``, keeps no session transcript unless they say ``keep_sessions: true``, and
runs with telemetry and non-essential traffic off.
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
        "cache_write_tokens": ["usage.cacheWriteTokens"],
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
    default_env={"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                 "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1"},
    no_session_args=["--no-session-persistence"],
    # ~/.claude.json and ~/.claude/ (settings, backups, telemetry spool) move with CLAUDE_CONFIG_DIR.
    state_env={"CLAUDE_CONFIG_DIR": "claude"},
    base_url_env="ANTHROPIC_BASE_URL",
    base_url_sources=["ANTHROPIC_BASE_URL"],
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
        "cache_write_tokens": ["usage.cache_creation_input_tokens"],
    },
    cost_usd_path="total_cost_usd",
    # An API failure is a result with is_error and the API's status (400, 404, ...).
    error_status_paths=["api_error_status"],
    session_id_paths=["session_id"],
)

# Codex: `codex exec --json -m M -s read-only --skip-git-repo-check -` (prompt on stdin, which
# must close). Events: thread.started{thread_id}, item.completed{item{type:agent_message,text}},
# item.completed{item{type:error,message}} (a warning, e.g. unknown model metadata),
# turn.completed{usage} | turn.failed{error{message}}, error{message}. No result text: the answer
# is the last agent message. Codex 0.17x ignores OPENAI_BASE_URL and its built-in provider sends
# CODEX_API_KEY, not OPENAI_API_KEY: a base URL (settings or OPENAI_BASE_URL) becomes a provider of
# its own through `-c` overrides, with the first key variable that is set as its env_key.
# Error messages embed the API's error body ({"error": {"code": "400"}}): the status is read there.
CODEX = CLISpec(
    name="codex",
    description="OpenAI Codex CLI (`codex exec --json`)",
    command=["codex"],
    args=["exec", "--json", "--skip-git-repo-check", "-c", "analytics.enabled=false",
          "-c", "check_for_update_on_startup=false"],
    model_args=["-m", "{model}"],
    read_only_args=["-s", "read-only"],
    write_args=["-s", "workspace-write"],
    trailing_args=["-"],
    prompt_via="stdin",
    env_keys=["OPENAI_API_KEY", "CODEX_API_KEY"],
    env_passthrough=["CODEX_HOME", "OPENAI_BASE_URL"],
    no_session_args=["--ephemeral"],
    # Analytics off, no update check (config keys of Codex 0.17x; unknown keys are ignored).
    state_env={"CODEX_HOME": "codex"},
    base_url_sources=["OPENAI_BASE_URL"],
    base_url_args=["-c", "model_provider=composite", "-c", "model_providers.composite.name=composite",
                   "-c", "model_providers.composite.base_url={base_url}",
                   "-c", "model_providers.composite.env_key={key_env}",
                   "-c", "model_providers.composite.wire_api=responses"],
    output_format="stream-json",
    terminal_events=[{"type": ["turn.completed", "turn.failed"]}],
    exit_on_result=True,
    result_text_path=None,
    message_events=[{"match": {"type": "item.completed", "item.type": "agent_message"}, "path": "item.text"}],
    message_join="last",
    error_when=[{"type": "turn.failed"}],
    error_events=[{"type": "error"}, {"type": "item.completed", "item.type": "error"}],
    error_message_paths=["error.message", "message", "item.message", "error"],
    # OpenAI usage: input_tokens includes the cached ones (reads and writes).
    usage={
        "prompt_tokens": ["usage.input_tokens"],
        "completion_tokens": ["usage.output_tokens"],
        "cached_tokens": ["usage.cached_input_tokens"],
        "reasoning_tokens": ["usage.reasoning_output_tokens"],
        "cache_write_tokens": ["usage.cache_write_input_tokens"],
    },
    session_id_paths=["thread_id"],
)

# Gemini CLI: `gemini -o stream-json -m M --skip-trust` with the prompt on stdin (headless when
# stdin is not a TTY). Every request runs in a fresh dir, which Gemini never trusts: without
# --skip-trust it exits 55. Events: init{session_id}, message{role, content, delta}, tool_use,
# tool_result, error (non-fatal), result{status, error?{type,message}, stats{input_tokens,
# output_tokens, cached, total_tokens, ...}} (no answer text in stream-json: the answer is the
# assistant deltas). The base URL is GOOGLE_GEMINI_BASE_URL; with an isolated state dir
# (GEMINI_CLI_HOME) a settings file selects API-key auth and turns usage statistics off.
GEMINI = CLISpec(
    name="gemini",
    description="Google Gemini CLI (`gemini -o stream-json`)",
    command=["gemini"],
    args=["--output-format", "stream-json", "--skip-trust"],
    model_args=["--model", "{model}"],
    read_only_args=["--approval-mode", "default"],
    write_args=["--approval-mode", "auto_edit"],
    prompt_via="stdin",
    env_keys=["GEMINI_API_KEY", "GOOGLE_API_KEY"],
    env_passthrough=["GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_GENAI_USE_VERTEXAI",
                     "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_GEMINI_BASE_URL", "GEMINI_CLI_HOME"],
    default_env={"GEMINI_TELEMETRY_ENABLED": "false"},
    state_env={"GEMINI_CLI_HOME": "gemini"},
    state_files={"gemini/.gemini/settings.json": {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
    }},
    # Gemini has no switch against chat recording: in the user's home, this run's chat folder goes.
    workspace_state_markers=[".gemini/tmp/*/.project_root", ".gemini/history/*/.project_root"],
    base_url_env="GOOGLE_GEMINI_BASE_URL",
    base_url_sources=["GOOGLE_GEMINI_BASE_URL"],
    output_format="stream-json",
    terminal_events=[{"type": "result"}],
    exit_on_result=True,
    result_text_path=None,
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
