"""The declarative description of one coding-agent CLI.

A :class:`CLISpec` says how to start the CLI (candidate executables, argv template), how to hand
it the prompt (stdin or a temp file) and how to read its output: which events are deltas,
complete messages or the terminal result, and where the answer text, usage, cost, session id and
error flag live inside them. Users add their own CLI with a dict::

    CLISpec.model_validate({
        "name": "mycli", "command": ["mycli"], "args": ["--json"],
        "output_format": "stream-json",
        "terminal_events": [{"type": "done"}], "result_text_path": "answer",
    })

Field paths are dotted (``usage.input_tokens``); ``name[]`` maps over a list and joins the text
found in its items (``message.content[].text``); ``name[0]`` / ``name[-1]`` index a list.
An event match is a mapping of path -> expected value (shorthand) or an explicit
``{"equals": {...}, "present": [...], "absent": [...]}``; an expected value that is a list means
"any of these".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CLISpec",
    "EventMatch",
    "TextRule",
    "UsagePaths",
    "PLACEHOLDERS",
    "resolve_path",
    "resolve_text",
    "resolve_number",
    "MISSING",
    "fill_placeholders",
]

#: Placeholders allowed inside argv templates.
PLACEHOLDERS = frozenset({"model", "prompt_file", "workspace", "base_url", "key_env"})
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_PART_RE = re.compile(r"^([^\[\]]*)((?:\[-?\d*\])*)$")
_INDEX_RE = re.compile(r"\[(-?\d*)\]")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def _parse_path(path: str) -> list[tuple[str, Any]]:
    """``"a.b[].c[0]"`` -> ``[("key","a"), ("key","b"), ("each",None), ("key","c"), ("index",0)]``."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"empty field path {path!r}")
    steps: list[tuple[str, Any]] = []
    for part in path.split("."):
        m = _PATH_PART_RE.match(part)
        if m is None or (not m.group(1) and not m.group(2)):
            raise ValueError(f"bad field path {path!r} (segment {part!r})")
        if m.group(1):
            steps.append(("key", m.group(1)))
        for idx in _INDEX_RE.findall(m.group(2)):
            steps.append(("each", None) if idx == "" else ("index", int(idx)))
    return steps


def resolve_path(obj: Any, path: str) -> Any:
    """Value at ``path`` inside ``obj``; a list when the path contains ``[]``; ``MISSING`` if absent."""
    values = [obj]
    fanned = False
    for kind, arg in _parse_path(path):
        nxt: list[Any] = []
        for v in values:
            if kind == "key":
                if isinstance(v, Mapping) and arg in v:
                    nxt.append(v[arg])
            elif kind == "each":
                if isinstance(v, list):
                    nxt.extend(v)
                    fanned = True
            elif isinstance(v, list) and -len(v) <= arg < len(v):
                nxt.append(v[arg])
        values = nxt
        if not values:
            return [] if fanned else MISSING
    return values if fanned else values[0]


def resolve_text(obj: Any, path: str) -> str | None:
    """Text at ``path``: a string, or the strings of a mapped list joined; None when absent."""
    value = resolve_path(obj, path)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [v for v in value if isinstance(v, str)]
        return "".join(parts) if parts else None
    return None


def resolve_number(obj: Any, path: str) -> float | None:
    """Number at ``path`` (ints, floats and numeric strings; booleans are not numbers)."""
    value = resolve_path(obj, path)
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _same(a: Any, b: Any) -> bool:
    """Equality that does not confuse ``True`` with ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    return value


class EventMatch(BaseModel):
    """Which JSON events a rule applies to. All conditions must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    equals: dict[str, Any] = Field(default_factory=dict)
    present: list[str] = Field(default_factory=list)
    absent: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data and not set(data) <= {"equals", "present", "absent"}:
            return {"equals": dict(data)}
        return data

    @model_validator(mode="after")
    def _check_paths(self) -> EventMatch:
        if not (self.equals or self.present or self.absent):
            raise ValueError("an event match needs at least one condition")
        for path in [*self.equals, *self.present, *self.absent]:
            _parse_path(path)
        return self

    def matches(self, event: Mapping[str, Any]) -> bool:
        for path, expected in self.equals.items():
            value = resolve_path(event, path)
            if value is MISSING:
                return False
            options = expected if isinstance(expected, list) else [expected]
            if not any(_same(value, option) for option in options):
                return False
        for path in self.present:
            if resolve_path(event, path) in (MISSING, None):
                return False
        for path in self.absent:
            if resolve_path(event, path) not in (MISSING, None):
                return False
        return True


class TextRule(BaseModel):
    """Events matching ``match`` carry text at ``path``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: EventMatch
    path: str

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str) -> str:
        _parse_path(v)
        return v


class UsagePaths(BaseModel):
    """Where token counts live in the terminal event. Each field lists paths whose values are summed
    (e.g. Anthropic-style prompt tokens = input + cache reads + cache writes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: list[str] = Field(default_factory=list)
    completion_tokens: list[str] = Field(default_factory=list)
    cached_tokens: list[str] = Field(default_factory=list)
    reasoning_tokens: list[str] = Field(default_factory=list)
    #: Prompt tokens written to the provider's cache (a subset of prompt_tokens, like cached_tokens).
    cache_write_tokens: list[str] = Field(default_factory=list)
    #: Read only when no completion count is found: completion = total - prompt (the total of a
    #: composite's usage is always prompt + completion).
    total_tokens: list[str] = Field(default_factory=list)

    @field_validator("*", mode="before")
    @classmethod
    def _str_to_list(cls, v: Any) -> Any:
        return _as_list(v)

    @field_validator("*")
    @classmethod
    def _check_paths(cls, v: list[str]) -> list[str]:
        for path in v:
            _parse_path(path)
        return v


class CLISpec(BaseModel):
    """Declarative description of one coding-agent CLI (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""

    # --- how to start it -------------------------------------------------------------------
    #: Candidate executables; the first found on PATH wins (e.g. ``["agent", "cursor-agent"]``).
    command: list[str] = Field(min_length=1)
    #: argv after the executable. Placeholders: ``{model}``, ``{prompt_file}``, ``{workspace}``.
    args: list[str] = Field(default_factory=list)
    #: Added after ``args`` when a model is given (omitted for an empty model).
    model_args: list[str] = Field(default_factory=lambda: ["--model", "{model}"])
    #: Added for streaming requests (partial-output flags).
    stream_args: list[str] = Field(default_factory=list)
    #: Added unless writes are allowed (read-only / ask modes, tools off).
    read_only_args: list[str] = Field(default_factory=list)
    #: Added only when the settings say ``allow_writes: true``.
    write_args: list[str] = Field(default_factory=list)
    #: Last in argv, after the user's ``extra_args`` (e.g. codex's ``-`` = prompt from stdin).
    trailing_args: list[str] = Field(default_factory=list)
    prompt_via: Literal["stdin", "file"] = "stdin"
    #: Secret variables the CLI authenticates with: passed through to the child and redacted.
    env_keys: list[str] = Field(default_factory=list)
    #: Non-secret variables the CLI needs (config dirs, base URLs): passed through.
    env_passthrough: list[str] = Field(default_factory=list)
    #: Variables set for the child unless the parent environment sets them (then the parent's value
    #: passes through): telemetry and non-essential traffic off.
    default_env: dict[str, str] = Field(default_factory=dict)
    #: Added unless the settings say ``keep_sessions: true`` (the CLI's no-transcript switches).
    no_session_args: list[str] = Field(default_factory=list)
    #: Variables naming the CLI's state/config dir, pointed into the per-request state dir (a
    #: subfolder named by the value) when the state is isolated (see ``CLISettings.state_dir``).
    state_env: dict[str, str] = Field(default_factory=dict)
    #: Files written into the per-request state dir before the run (path relative to it -> JSON
    #: document), e.g. a settings file that selects API-key auth and turns statistics off.
    state_files: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: When the CLI keeps its state in the user's home (``state_dir: home``) and sessions are not kept:
    #: globs (relative to the dir named by the first ``state_env`` variable that is set, else HOME) of
    #: marker files holding a project path; a marker naming this run's temp workspace has its folder
    #: removed after the run (Gemini writes each chat under ``.gemini/tmp/<slug>/`` with such a marker).
    workspace_state_markers: list[str] = Field(default_factory=list)
    #: The variable the CLI reads its API base URL from; set from ``CLISettings.cli_base_url``.
    base_url_env: str | None = None
    #: Parent variables a base URL is taken from when the settings give none (first set wins).
    base_url_sources: list[str] = Field(default_factory=list)
    #: argv added when a base URL is known (``{base_url}``; ``{key_env}`` = the first of
    #: ``env_keys`` set in the environment), for CLIs that take it as a config override.
    base_url_args: list[str] = Field(default_factory=list)

    # --- how to read it --------------------------------------------------------------------
    output_format: Literal["json", "stream-json", "text"] = "stream-json"
    #: Events that end the run (the first one seen is "the result event").
    terminal_events: list[EventMatch] = Field(default_factory=lambda: [EventMatch(equals={"type": "result"})])
    #: Treat the terminal event as the end: stop reading and kill the process group.
    exit_on_result: bool = True
    #: Path of the authoritative answer text inside the terminal event (None: assemble from events).
    result_text_path: str | None = "result"
    #: Events that are incremental text deltas.
    delta_events: list[TextRule] = Field(default_factory=list)
    #: Events that carry a complete assistant message (or a snapshot of one).
    message_events: list[TextRule] = Field(default_factory=list)
    #: How to assemble the answer from complete messages when the result has no text.
    message_join: Literal["concat", "last"] = "concat"
    #: Conditions on the terminal event that mean failure (e.g. ``is_error: true``).
    error_when: list[EventMatch] = Field(default_factory=lambda: [EventMatch(equals={"is_error": True})])
    #: Non-terminal events that report an error (recorded; reported if the run fails).
    error_events: list[EventMatch] = Field(default_factory=list)
    #: Where an error message is, in the terminal or error event (first string found wins).
    error_message_paths: list[str] = Field(default_factory=lambda: ["error.message", "error", "message", "result"])
    #: Where the upstream HTTP status of a failed run is, in the terminal event (e.g. Claude's
    #: ``api_error_status``). A message that embeds an API error body (``{"error": {"code": 400}}``)
    #: is read as well.
    error_status_paths: list[str] = Field(default_factory=list)
    usage: UsagePaths = Field(default_factory=UsagePaths)
    #: Path of the cost in USD inside the terminal event.
    cost_usd_path: str | None = None
    #: Paths tried on every event; the first non-empty string is the session id.
    session_id_paths: list[str] = Field(default_factory=lambda: ["session_id"])

    @field_validator(
        "command", "args", "model_args", "stream_args", "read_only_args", "write_args", "trailing_args",
        "env_keys", "env_passthrough", "error_message_paths", "session_id_paths", "no_session_args",
        "base_url_sources", "base_url_args", "error_status_paths", "workspace_state_markers",
        mode="before",
    )
    @classmethod
    def _str_to_list(cls, v: Any) -> Any:
        return _as_list(v)

    @field_validator("terminal_events", "error_when", "error_events", mode="before")
    @classmethod
    def _match_to_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, (Mapping, EventMatch)) else v

    @field_validator("delta_events", "message_events", mode="before")
    @classmethod
    def _rule_to_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, (Mapping, TextRule)) else v

    @field_validator("command")
    @classmethod
    def _check_command(cls, v: list[str]) -> list[str]:
        for c in v:
            if not c or not c.strip() or "\x00" in c:
                raise ValueError(f"bad executable name {c!r}")
        return v

    @field_validator("args", "model_args", "stream_args", "read_only_args", "write_args", "trailing_args",
                     "no_session_args", "base_url_args")
    @classmethod
    def _check_placeholders(cls, v: list[str]) -> list[str]:
        for arg in v:
            if "\x00" in arg:
                raise ValueError(f"NUL byte in argument {arg!r}")
            unknown = set(_PLACEHOLDER_RE.findall(arg)) - PLACEHOLDERS
            if unknown:
                raise ValueError(
                    f"unknown placeholder(s) {sorted(unknown)} in {arg!r}; allowed: {sorted(PLACEHOLDERS)}"
                )
        return v

    @field_validator("result_text_path", "cost_usd_path")
    @classmethod
    def _check_opt_path(cls, v: str | None) -> str | None:
        if v is not None:
            _parse_path(v)
        return v

    @field_validator("error_message_paths", "session_id_paths", "error_status_paths")
    @classmethod
    def _check_paths(cls, v: list[str]) -> list[str]:
        for path in v:
            _parse_path(path)
        return v

    @field_validator("state_env", "state_files")
    @classmethod
    def _check_relative(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            rel = value if isinstance(value, str) else key
            if not rel or rel.startswith(("/", "~")) or ".." in rel.replace("\\", "/").split("/"):
                raise ValueError(f"state path {rel!r} must stay inside the per-request state dir")
        return v

    @model_validator(mode="after")
    def _check_prompt_file(self) -> CLISpec:
        all_args = [*self.args, *self.model_args, *self.stream_args, *self.read_only_args,
                    *self.write_args, *self.trailing_args, *self.no_session_args, *self.base_url_args]
        uses_file = any("{prompt_file}" in a for a in all_args)
        if self.prompt_via == "file" and not uses_file:
            raise ValueError("prompt_via='file' needs a '{prompt_file}' placeholder in args")
        if self.prompt_via == "stdin" and uses_file:
            raise ValueError("'{prompt_file}' is only available with prompt_via='file'")
        if self.output_format != "text" and not self.terminal_events:
            raise ValueError("JSON output formats need at least one terminal event match")
        return self


def fill_placeholders(arg: str, values: Mapping[str, str]) -> str:
    """Replace ``{model}``-style placeholders; anything else in braces is left as is."""
    return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), arg)
