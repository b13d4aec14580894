"""Run a coding-agent CLI as a chat model: one subprocess per request, with strict hygiene.

* argv list, no shell; the prompt goes to stdin (written concurrently with reading stdout, so a
  prompt of any size cannot deadlock on the pipe) or to a private temp file;
* its own process group (``start_new_session``), a fresh temp working directory per request
  (removed afterwards) unless a workspace is configured;
* environment = a small allowlist plus the spec's key variables and the configured passthrough
  names, nothing else;
* stdout read incrementally with an idle and a total timeout (the request's ``timeout`` bounds
  the total) and an output cap; on timeout, cancellation, after the terminal result event, and at
  the end of every run, SIGTERM then SIGKILL go to the whole process group, and the CLI is reaped;
* errors in one hierarchy (:mod:`.errors`) with redacted messages; an optional JSONL I/O log,
  redacted as well.

Public entry points: :func:`run_cli_agent` (one :class:`CLIResult`) and :func:`stream_cli_agent`
(:class:`TextDelta` events, then exactly one :class:`CLIResult`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import glob
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .builtin_specs import get_spec
from .errors import CLIAgentError, CLIExitError, CLINotFoundError, CLIOutputError, CLISpecError, CLITimeoutError
from .output import OutputParser, strip_ansi
from ..redact import Redactor, is_secret_name, secret_env_values
from .serialize import serialize_messages
from ..timeouts import timeout_seconds
from ..usage import UsageTotals
from .spec import CLISpec, fill_placeholders

__all__ = [
    "BASE_ENV_ALLOWLIST",
    "CLISettings",
    "CLIResult",
    "TextDelta",
    "CLIEvent",
    "run_cli_agent",
    "stream_cli_agent",
    "build_argv",
    "build_env",
]

#: Variables every CLI child gets (when set in the parent); everything else must be named.
BASE_ENV_ALLOWLIST: tuple[str, ...] = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER")

_CHUNK = 64 * 1024
_STDERR_TAIL_BYTES = 16 * 1024
_TAIL_CHARS = 2000
_SUMMARY_CHARS = 1200
#: After the CLI exits, how long to keep reading stdout held open by a leftover child.
_EXIT_DRAIN_GRACE = 1.0
#: How often to check whether the CLI has exited.
_EXIT_POLL = 0.05
#: Bound on waiting for the reaped leader and the stderr reader during cleanup.
_REAP_TIMEOUT = 5.0
#: The subreaper supervisor (stdlib only, run as a file: see its docstring).
_SUPERVISOR = str(Path(__file__).with_name("_supervisor.py"))
#: Exit status of the supervisor when it could not start the CLI.
_SUPERVISOR_CANNOT_START = 127


class CLISettings(BaseModel):
    """Per-deployment settings of a CLI agent (composite_llm_research's names where it had them)."""

    model_config = ConfigDict(extra="forbid")

    #: Total wall-clock limit of one run; the request's ``timeout`` lowers it.
    timeout_seconds: float = Field(300.0, gt=0)
    #: Limit on silence (no stdout) before the run is killed.
    idle_timeout_seconds: float = Field(120.0, gt=0)
    #: stdout kept at most; beyond it reading stops, the group is killed and ``truncated`` is set.
    max_output_bytes: int = Field(4 * 1024 * 1024, gt=0)
    #: Override of the executable: a name/path (str), or an argv prefix (list), e.g.
    #: ``["node", "/opt/agent/index.js"]``. The spec's candidates are then ignored.
    cli_command: str | list[str] | None = None
    #: Working directory. Default: a fresh temp dir per request, removed afterwards.
    workspace: str | None = None
    #: Use the spec's ``write_args`` instead of its ``read_only_args``.
    allow_writes: bool = False
    #: Append a JSONL record of each run (argv, prompt, stdout lines, stderr, end) here, redacted.
    io_log_path: str | None = None
    #: Extra CLI arguments (before the spec's trailing args); placeholders allowed.
    extra_args: list[str] = Field(default_factory=list)
    #: Extra environment variable names passed through to the CLI.
    env_passthrough: list[str] = Field(default_factory=list)
    #: Time between SIGTERM and SIGKILL to the process group.
    kill_grace_seconds: float = Field(2.0, ge=0)
    #: After the terminal result event, how long the CLI may take to exit by itself.
    result_grace_seconds: float = Field(0.5, ge=0)
    #: Keep the CLI's session transcripts (its own default). Off: the spec's no-persistence
    #: switches are passed and its state dir is per request (see ``state_dir``), so no prompt
    #: outlives the request.
    keep_sessions: bool = False
    #: Where the CLI keeps its state (config dir, transcripts, caches): ``request`` = a fresh dir
    #: per request, removed afterwards; ``home`` = the CLI's usual place (a login made with the
    #: CLI lives there); ``auto`` = ``request`` when one of the spec's key variables is set (key
    #: auth needs no stored login) and sessions are not kept, else ``home``.
    state_dir: Literal["auto", "request", "home"] = "auto"
    #: The model API the CLI talks to (e.g. a LiteLLM proxy): set through the spec's base-URL
    #: variable or config override. Default: the spec's ``base_url_sources`` variables.
    cli_base_url: str | None = None
    #: Run the CLI under a small supervisor that is a child subreaper (Linux), so descendants that
    #: left the process group (``setsid``) are killed with it. Off: process-group kill only.
    supervise: bool = True

    @field_validator("workspace", "io_log_path", mode="before")
    @classmethod
    def _fspath(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("extra_args", "env_passthrough", mode="before")
    @classmethod
    def _str_to_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("cli_base_url")
    @classmethod
    def _check_base_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {v!r}")
        return v

    @field_validator("cli_command")
    @classmethod
    def _check_command(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is None:
            return v
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and (not v or not v[0].strip())):
            raise ValueError("cli_command must name an executable")
        return v


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer as the CLI streamed it."""

    text: str


class CLIResult(BaseModel):
    """The outcome of one CLI run (also the trace record of the sub-call)."""

    model_config = ConfigDict(extra="forbid")

    text: str
    #: Token counts the CLI reported (0 where it reported none).
    usage: UsageTotals = Field(default_factory=UsageTotals)
    #: True when the CLI reported any token count.
    usage_reported: bool = False
    cost_usd: float | None = None
    session_id: str | None = None
    duration_s: float = 0.0
    #: The CLI's exit status; negative = killed by that signal (e.g. after the result event).
    exit_code: int | None = None
    #: stdout exceeded ``max_output_bytes``; the text may be incomplete.
    truncated: bool = False
    stderr_tail: str = ""
    #: The argv that ran (redacted).
    argv: list[str] = Field(default_factory=list)
    spec_name: str = ""
    model: str | None = None
    #: The working directory used (a temp dir is already removed when you read this).
    cwd: str = ""
    #: Why reading stopped: "eof", "exit", "result" or "truncated".
    stop_reason: str = "eof"
    #: Non-fatal problems: error events and error items of the CLI, stdout that was not JSON.
    warnings: list[str] = Field(default_factory=list)


CLIEvent = TextDelta | CLIResult


# --- helpers -----------------------------------------------------------------------------------
def _check_model(model: str | None) -> str | None:
    if model is None:
        return None
    if not isinstance(model, str):
        raise CLISpecError(f"model must be a string, got {type(model).__name__}")
    model = model.strip()
    if not model:
        return None
    if model.startswith("-") or any(ord(c) < 32 for c in model):
        raise CLISpecError(f"refusing model name {model!r} (starts with '-' or has control characters)")
    return model


def _summarize(text: str, limit: int = _SUMMARY_CHARS) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return "..." + text[-limit:]


def resolve_base_url(spec: CLISpec, settings: CLISettings, environ: Mapping[str, str] | None = None) -> str | None:
    """The model API base URL for this run: the settings', else the first of the spec's
    ``base_url_sources`` set in ``environ``; None = the CLI's own default endpoint."""
    if settings.cli_base_url:
        return settings.cli_base_url
    env_in = os.environ if environ is None else environ
    for name in spec.base_url_sources:
        if env_in.get(name):
            return env_in[name]
    return None


def build_env(
    spec: CLISpec, settings: CLISettings, environ: Mapping[str, str] | None = None, *, base_url: str | None = None
) -> dict[str, str]:
    """The child's environment: the spec's ``default_env`` (telemetry off), then the allowlist,
    the spec's keys, passthrough and default names, the settings' passthrough — each only if set in
    ``environ`` (default ``os.environ``) — then the base URL in the variable the CLI reads."""
    env_in = os.environ if environ is None else environ
    names = [*BASE_ENV_ALLOWLIST, *spec.env_keys, *spec.env_passthrough, *spec.default_env,
             *settings.env_passthrough]
    env = dict(spec.default_env)
    env.update({name: env_in[name] for name in dict.fromkeys(names) if name in env_in})
    if base_url and spec.base_url_env:
        env[spec.base_url_env] = base_url
    return env


def _resolve_command(spec: CLISpec, settings: CLISettings, path_env: str) -> list[str]:
    if settings.cli_command:
        prefix = [settings.cli_command] if isinstance(settings.cli_command, str) else list(settings.cli_command)
        found = shutil.which(prefix[0], path=path_env)
        if not found:
            raise CLINotFoundError(
                f"{spec.name} CLI: cli_command executable {prefix[0]!r} not found or not executable",
                candidates=[prefix[0]],
                spec_name=spec.name,
            )
        return [found, *prefix[1:]]
    for candidate in spec.command:
        found = shutil.which(candidate, path=path_env)
        if found:
            return [found]
    raise CLINotFoundError(
        f"{spec.name} CLI not found: none of {', '.join(repr(c) for c in spec.command)} is on PATH "
        "(install it, or set cli_command)",
        candidates=list(spec.command),
        spec_name=spec.name,
    )


def build_argv(
    spec: CLISpec,
    settings: CLISettings,
    *,
    command: Sequence[str],
    model: str | None,
    streaming: bool,
    workspace: str,
    prompt_file: str | None = None,
    base_url: str | None = None,
    key_env: str = "",
) -> list[str]:
    """argv = command + args + model_args + stream_args + mode args + no-session args (unless
    sessions are kept) + base-URL args (when a base URL is known) + extra_args + trailing_args."""
    values = {"model": model or "", "workspace": workspace, "prompt_file": prompt_file or "",
              "base_url": base_url or "", "key_env": key_env}

    def fill(args: Sequence[str]) -> list[str]:
        return [fill_placeholders(a, values) for a in args]

    argv = [*command, *fill(spec.args)]
    if model:
        argv += fill(spec.model_args)
    if streaming:
        argv += fill(spec.stream_args)
    argv += fill(spec.write_args if settings.allow_writes else spec.read_only_args)
    if not settings.keep_sessions:
        argv += fill(spec.no_session_args)
    if base_url:
        argv += fill(spec.base_url_args)
    argv += fill(settings.extra_args)
    argv += fill(spec.trailing_args)
    return argv


class _IOLog:
    """Append-only JSONL log of one run; write failures disable it instead of failing the run."""

    def __init__(self, path: str, redact: Redactor, run_id: str) -> None:
        self._redact = redact
        self._run_id = run_id
        self._fh: TextIO | None = None
        try:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(os.path.expanduser(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")
        except OSError:
            self._fh = None

    def write(self, kind: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record = {"ts": round(time.time(), 3), "run_id": self._run_id, "kind": kind, **self._redact.obj(fields)}
        try:
            self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._fh.flush()
        except (OSError, ValueError):
            self.close()

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


# --- one run -------------------------------------------------------------------------------------
class _Run:
    def __init__(
        self,
        spec: CLISpec | str,
        model: str | None,
        messages: Sequence[Any] | str,
        settings: CLISettings | Mapping[str, Any] | None,
        timeout: Any,
        streaming: bool,
    ) -> None:
        self.spec = get_spec(spec) if isinstance(spec, str) else spec
        if settings is None:
            settings = CLISettings()
        elif isinstance(settings, Mapping):
            try:
                settings = CLISettings.model_validate(settings)
            except ValueError as exc:
                raise CLISpecError(f"invalid CLI settings: {exc}", spec_name=self.spec.name) from exc
        self.settings: CLISettings = settings
        self.model = _check_model(model)
        self.prompt = messages if isinstance(messages, str) else serialize_messages(messages)
        self.streaming = streaming
        total = settings.timeout_seconds
        requested = timeout_seconds(timeout)
        if requested is not None:
            total = min(total, requested)
        self.total_timeout = total
        self.idle_timeout = min(settings.idle_timeout_seconds, total)
        self.base_url = resolve_base_url(self.spec, settings)
        self.env = build_env(self.spec, settings, base_url=self.base_url)
        secret_names = [*self.spec.env_keys, *(n for n in settings.env_passthrough if is_secret_name(n))]
        self.redact = Redactor(secret_env_values(secret_names))
        self.parser = OutputParser(self.spec, streaming=streaming)
        self.run_id = uuid.uuid4().hex[:12]

        self.proc: asyncio.subprocess.Process | None = None
        self.wait_task: asyncio.Future[int] | None = None
        self.stdin_task: asyncio.Task[None] | None = None
        self.stderr_task: asyncio.Task[None] | None = None
        self.argv: list[str] = []
        self.workspace = ""
        self._own_workspace = False
        #: Per-request private dir: the CLI's TMPDIR and, when isolated, its state dirs.
        self.state_root = ""
        self.state_isolated = False
        self._supervised = False
        self._prompt_file: str | None = None
        self.log: _IOLog | None = None
        self.started = 0.0
        self.deadline = 0.0
        self.stdout_bytes = 0
        self.raw = bytearray()
        self.truncated = False
        self.stop_reason = "eof"
        self._stderr_tail = bytearray()
        self.duration_s = 0.0

    # -- redaction helpers
    @property
    def redacted_argv(self) -> list[str]:
        return [self.redact(a) for a in self.argv]

    def stderr_tail(self) -> str:
        text = strip_ansi(self._stderr_tail.decode("utf-8", "replace"))
        return self.redact(text[-_TAIL_CHARS:].strip())

    def _error_kwargs(self) -> dict[str, Any]:
        return {
            "spec_name": self.spec.name,
            "exit_code": self.proc.returncode if self.proc is not None else None,
            "stderr_tail": self.stderr_tail(),
            "argv": self.redacted_argv,
        }

    def _stderr_part(self) -> str:
        tail = self.stderr_tail()
        return f"; stderr: {_summarize(tail)}" if tail else ""

    # -- lifecycle
    def _prepare(self) -> None:
        spec, settings = self.spec, self.settings
        command = _resolve_command(spec, settings, os.environ.get("PATH", os.defpath))
        if settings.workspace:
            ws = Path(settings.workspace).expanduser()
            if not ws.is_dir():
                raise CLISpecError(f"{spec.name} CLI: workspace {str(ws)!r} is not a directory", spec_name=spec.name)
            self.workspace = str(ws.resolve())
        else:
            self.workspace = os.path.realpath(tempfile.mkdtemp(prefix="composite-llm-cli-"))
            self._own_workspace = True
        self._prepare_state()
        if spec.prompt_via == "file":
            fd, path = tempfile.mkstemp(prefix="composite-llm-prompt-", suffix=".txt")
            self._prompt_file = path
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.prompt.encode("utf-8"))
        key_env = next((name for name in spec.env_keys if self.env.get(name)), "")
        self.argv = build_argv(
            spec, settings, command=command, model=self.model, streaming=self.streaming,
            workspace=self.workspace, prompt_file=self._prompt_file, base_url=self.base_url, key_env=key_env,
        )
        if settings.io_log_path:
            self.log = _IOLog(settings.io_log_path, self.redact, self.run_id)
            self.log.write(
                "start", spec=spec.name, model=self.model, argv=self.argv, cwd=self.workspace,
                env_keys=sorted(self.env), prompt_via=spec.prompt_via, prompt=self.prompt,
                timeout_s=self.total_timeout, idle_timeout_s=self.idle_timeout,
            )

    def _isolate_state(self) -> bool:
        mode = self.settings.state_dir
        if mode == "auto":
            return not self.settings.keep_sessions and any(self.env.get(k) for k in self.spec.env_keys)
        return mode == "request"

    def _prepare_state(self) -> None:
        """A private per-request dir: the CLI's TMPDIR (Gemini writes its error reports there) and,
        when the state is isolated, its config/state dirs and generated settings files."""
        self.state_root = os.path.realpath(tempfile.mkdtemp(prefix="composite-llm-cli-state-"))
        tmp = os.path.join(self.state_root, "tmp")
        os.mkdir(tmp, 0o700)
        self.env["TMPDIR"] = tmp
        self.state_isolated = self._isolate_state()
        if not self.state_isolated:
            return
        for var, sub in self.spec.state_env.items():
            folder = os.path.join(self.state_root, sub)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            self.env[var] = folder
        for rel, doc in self.spec.state_files.items():
            path = os.path.join(self.state_root, rel)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2)

    def _remove_workspace_state(self) -> None:
        """In the user's home, remove the folders the CLI keyed to this run's temp workspace (their
        marker file names it): its transcript of this request, nothing else."""
        spec = self.spec
        if self.state_isolated or self.settings.keep_sessions or not spec.workspace_state_markers:
            return
        base = next((self.env[v] for v in spec.state_env if self.env.get(v)), None) or self.env.get("HOME")
        if not base:
            return
        for pattern in spec.workspace_state_markers:
            for marker in glob.glob(os.path.join(glob.escape(base), pattern)):
                try:
                    with open(marker, encoding="utf-8") as fh:
                        owner = fh.read(4096).strip()
                except OSError:
                    continue
                if owner and os.path.realpath(owner) == self.workspace:
                    shutil.rmtree(os.path.dirname(marker), ignore_errors=True)

    def _spawn_argv(self) -> list[str]:
        """The CLI's argv, under the subreaper supervisor where it can run (Linux, a Python)."""
        if self.settings.supervise and sys.platform.startswith("linux") and sys.executable:
            self._supervised = True
            grace = self.settings.kill_grace_seconds / 2
            return [sys.executable, "-I", "-S", _SUPERVISOR, f"{grace:g}", str(os.getpid()), "--", *self.argv]
        return list(self.argv)

    async def _spawn(self) -> None:
        stdin = asyncio.subprocess.PIPE if self.spec.prompt_via == "stdin" else asyncio.subprocess.DEVNULL
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self._spawn_argv(),
                stdin=stdin,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.workspace,
                env=self.env,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise CLINotFoundError(
                f"{self.spec.name} CLI could not be started ({exc.strerror or type(exc).__name__}): "
                f"{self.redact(self.argv[0])}",
                candidates=[self.argv[0]], spec_name=self.spec.name, argv=self.redacted_argv,
            ) from None
        except OSError as exc:
            raise CLIAgentError(
                f"{self.spec.name} CLI could not be started: {self.redact(str(exc))}",
                spec_name=self.spec.name, argv=self.redacted_argv,
            ) from None
        self.wait_task = asyncio.ensure_future(self._watch_exit(self.proc))
        if self.proc.stdin is not None:
            self.stdin_task = asyncio.ensure_future(self._write_stdin(self.prompt.encode("utf-8")))
        self.stderr_task = asyncio.ensure_future(self._read_stderr())

    @staticmethod
    async def _watch_exit(proc: asyncio.subprocess.Process) -> int:
        """Resolves when the CLI has exited (and was reaped by asyncio's child watcher).

        ``Process.wait()`` is not used for this: it also waits for stdout/stderr to close, which a
        leftover child can hold open indefinitely.
        """
        while proc.returncode is None:
            await asyncio.sleep(_EXIT_POLL)
        return proc.returncode

    async def _write_stdin(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        stdin = self.proc.stdin
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the CLI exited or closed stdin without reading everything
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                stdin.close()

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            data = await self.proc.stderr.read(_CHUNK)
            if not data:
                return
            self._stderr_tail.extend(data)
            if len(self._stderr_tail) > _STDERR_TAIL_BYTES:
                del self._stderr_tail[: len(self._stderr_tail) - _STDERR_TAIL_BYTES]
            if self.log is not None:
                self.log.write("stderr", text=data.decode("utf-8", "replace"))

    def _timeout_error(self, kind: str) -> CLITimeoutError:
        if kind == "idle":
            what = f"produced no output for {self.idle_timeout:g}s (idle timeout)"
            limit = self.idle_timeout
        else:
            what = f"did not finish within {self.total_timeout:g}s (total timeout)"
            limit = self.total_timeout
        return CLITimeoutError(
            f"{self.spec.name} CLI {what}; its process group was killed{self._stderr_part()}",
            kind=kind, timeout_s=limit, **self._error_kwargs(),
        )

    async def _pump(self) -> AsyncIterator[str]:
        """Read stdout until EOF / exit / result / cap; yield text deltas. Raises on timeout."""
        assert self.proc is not None and self.proc.stdout is not None and self.wait_task is not None
        stdout, wait_task = self.proc.stdout, self.wait_task
        spec, settings, parser = self.spec, self.settings, self.parser
        text_mode = spec.output_format == "text"
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        buf = bytearray()
        read_task: asyncio.Future[bytes] | None = None
        last_activity = time.monotonic()
        exited_at: float | None = None
        result_at: float | None = None
        try:
            while True:
                now = time.monotonic()
                limit = math.inf
                if result_at is not None:
                    if wait_task.done():
                        self.stop_reason = "result"
                        break
                    limit = result_at + settings.result_grace_seconds - now
                    if limit <= 0:
                        self.stop_reason = "result"
                        break
                elif wait_task.done():
                    # The CLI exited; a leftover child may still hold stdout open.
                    exited_at = now if exited_at is None else exited_at
                    limit = max(exited_at, last_activity) + _EXIT_DRAIN_GRACE - now
                    if limit <= 0:
                        self.stop_reason = "exit"
                        break
                total_left = self.deadline - now
                if total_left <= 0:
                    raise self._timeout_error("total")
                idle_left = last_activity + self.idle_timeout - now
                if idle_left <= 0 and result_at is None:
                    raise self._timeout_error("idle")
                if read_task is None:
                    read_task = asyncio.ensure_future(stdout.read(_CHUNK))
                waiters: set[asyncio.Future[Any]] = {read_task}
                if not wait_task.done():
                    waiters.add(wait_task)
                wait_s = max(0.0, min(limit, total_left, idle_left if result_at is None else math.inf))
                done, _ = await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                if read_task not in done:
                    continue
                data = read_task.result()
                read_task = None
                if not data:
                    self.stop_reason = "eof"
                    break
                last_activity = time.monotonic()
                room = settings.max_output_bytes - self.stdout_bytes
                if len(data) >= room:
                    if len(data) > room:
                        self.truncated = True
                    data = data[:room]
                self.stdout_bytes += len(data)
                if spec.output_format == "json":
                    self.raw.extend(data)  # the document may span lines: parsed whole at the end
                if text_mode:
                    text = decoder.decode(data)
                    if self.log is not None and text:
                        self.log.write("stdout", text=text)
                    for delta in parser.feed_chunk(text):
                        yield delta
                else:
                    buf.extend(data)
                    while result_at is None:
                        nl = buf.find(b"\n")
                        if nl < 0:
                            break
                        line = bytes(buf[:nl]).decode("utf-8", "replace")
                        del buf[: nl + 1]
                        if self.log is not None:
                            self.log.write("stdout", line=line)
                        for delta in parser.feed_line(line):
                            yield delta
                        if parser.terminal_seen and spec.exit_on_result:
                            result_at = time.monotonic()
                    if result_at is not None:
                        buf.clear()
                if self.truncated:
                    self.stop_reason = "truncated"
                    break
        finally:
            if read_task is not None and not read_task.done():
                read_task.cancel()
        # Flush what is left: a decoder tail, or a last line without its newline.
        if text_mode:
            tail = decoder.decode(b"", final=True)
            if tail:
                for delta in parser.feed_chunk(tail):
                    yield delta
        elif buf and result_at is None and not self.truncated:
            line = bytes(buf).decode("utf-8", "replace")
            if self.log is not None:
                self.log.write("stdout", line=line)
            for delta in parser.feed_line(line):
                yield delta

    async def _await_exit(self) -> None:
        """stdout ended (EOF): let the CLI finish by itself before the group is signalled."""
        wait_task = self.wait_task
        if wait_task is None or wait_task.done() or self.stop_reason != "eof":
            return
        now = time.monotonic()
        if self.parser.terminal_seen:
            limit, kind = self.settings.result_grace_seconds, None
        else:
            total_left = self.deadline - now
            limit = min(total_left, self.idle_timeout)
            kind = "total" if total_left <= self.idle_timeout else "idle"
        try:
            # asyncio.timeout, not wait_for: wait_for can swallow a cancellation on Python 3.11 (the client left).
            async with asyncio.timeout(max(0.0, limit)):
                await asyncio.shield(wait_task)
        except asyncio.TimeoutError:
            if kind is not None:
                raise self._timeout_error(kind) from None

    # -- process-group termination
    def _signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the CLI's process group; False when the group no longer exists."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - a foreign group reused the id
            return False

    async def _terminate(self) -> None:
        proc, wait_task = self.proc, self.wait_task
        if proc is None or wait_task is None:
            return
        if not wait_task.done() or self._signal_group(0):
            if self._signal_group(signal.SIGTERM) and not wait_task.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    async with asyncio.timeout(self.settings.kill_grace_seconds):
                        await asyncio.shield(wait_task)
            self._signal_group(signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(_REAP_TIMEOUT):
                await asyncio.shield(wait_task)

    async def _cleanup(self, error: BaseException | None) -> None:
        try:
            await self._terminate()
            if self.stderr_task is not None and not self.stderr_task.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    async with asyncio.timeout(1.0):
                        await asyncio.shield(self.stderr_task)
        except BaseException:
            self._signal_group(signal.SIGKILL)
            raise
        finally:
            for task in (self.stdin_task, self.stderr_task, self.wait_task):
                if task is not None and not task.done():
                    task.cancel()
            for task in (self.stdin_task, self.stderr_task):
                if task is not None and task.done() and not task.cancelled():
                    task.exception()  # retrieve, so asyncio does not log it
            if self.proc is not None:
                transport = getattr(self.proc, "_transport", None)
                if transport is not None:
                    with contextlib.suppress(Exception):
                        transport.close()
            if self._prompt_file:
                with contextlib.suppress(OSError):
                    os.unlink(self._prompt_file)
            if self._own_workspace and self.workspace:
                shutil.rmtree(self.workspace, ignore_errors=True)
                self._remove_workspace_state()
            if self.state_root:
                shutil.rmtree(self.state_root, ignore_errors=True)
            self.duration_s = round(time.monotonic() - self.started, 3)
            if error is not None and self.log is not None:
                self._log_end(error)

    def _log_end(self, error: BaseException | None, result: CLIResult | None = None) -> None:
        if self.log is None:
            return
        self.log.write(
            "end",
            exit_code=self.proc.returncode if self.proc is not None else None,
            duration_s=self.duration_s,
            truncated=self.truncated,
            stop_reason=self.stop_reason,
            stdout_bytes=self.stdout_bytes,
            error=None if error is None else f"{type(error).__name__}: {error}",
            usage=None if result is None else result.usage.to_dict(),
            cost_usd=None if result is None else result.cost_usd,
        )
        self.log.close()

    # -- outcome
    def _build_result(self) -> CLIResult:
        spec = self.spec
        raw = self.raw.decode("utf-8", "replace") if spec.output_format == "json" else ""
        parsed = self.parser.finish(raw)
        exit_code = self.proc.returncode if self.proc is not None else None
        kwargs = self._error_kwargs()
        if (self._supervised and exit_code == _SUPERVISOR_CANNOT_START and not parsed.json_events
                and kwargs["stderr_tail"].startswith("cannot start")):
            raise CLINotFoundError(
                f"{spec.name} CLI could not be started: {kwargs['stderr_tail']}",
                candidates=[self.argv[0]], spec_name=spec.name, argv=kwargs["argv"],
            )
        # Output cut at the cap after the terminal event is a complete answer, not a truncated one.
        truncated = self.truncated and not parsed.terminal_seen
        warnings = [self.redact(_summarize(m, 300)) for m in parsed.error_events]
        if spec.output_format != "text" and parsed.plain_text and parsed.json_events:
            warnings.append("non-JSON output: " + self.redact(_summarize(parsed.plain_text, 300)))

        if parsed.is_error:
            message = parsed.error_message or "; ".join(parsed.error_events) or "no error message"
            status = f"upstream status {parsed.error_status}, " if parsed.error_status else ""
            raise CLIExitError(
                f"{spec.name} CLI reported an error: {self.redact(_summarize(message))} "
                f"({status}exit code {exit_code}){self._stderr_part()}",
                is_error_result=True, upstream_status=parsed.error_status, **kwargs,
            )

        def exit_error() -> CLIExitError:
            details = parsed.error_events and "; ".join(parsed.error_events) or parsed.plain_text
            out = f"; output: {self.redact(_summarize(details))}" if details else ""
            return CLIExitError(
                f"{spec.name} CLI exited with code {exit_code}{self._stderr_part()}{out}", **kwargs
            )

        def cut_error() -> CLIOutputError:
            return CLIOutputError(
                f"{spec.name} CLI output exceeded max_output_bytes ({self.settings.max_output_bytes}) "
                f"before any answer text{self._stderr_part()}", **kwargs,
            )

        text: str
        if spec.output_format == "text":
            if truncated:
                if not parsed.text:
                    raise cut_error()
                text = parsed.text
            elif exit_code != 0:
                raise exit_error()
            elif not parsed.text:
                raise CLIOutputError(f"{spec.name} CLI exited 0 without output{self._stderr_part()}", **kwargs)
            else:
                text = parsed.text
        elif parsed.terminal_seen:
            text = parsed.text or ""
        elif truncated:
            # Only text the CLI's own events carried is an answer; bytes that never formed an event
            # (50 MB without a newline) or non-JSON noise are not.
            if not parsed.text:
                raise cut_error()
            text = parsed.text
        elif exit_code == 0:
            if parsed.text is not None:
                text = parsed.text
            elif parsed.json_events == 0 and parsed.plain_text:
                text = parsed.plain_text  # not JSON after all: the plain text is the answer
            elif parsed.json_events == 0:
                raise CLIOutputError(f"{spec.name} CLI exited 0 without output{self._stderr_part()}", **kwargs)
            else:
                raise CLIOutputError(
                    f"{spec.name} CLI exited 0 but none of its {parsed.json_events} JSON events "
                    f"carried an answer (no terminal event){self._stderr_part()}",
                    **kwargs,
                )
        else:
            raise exit_error()

        return CLIResult(
            text=text,
            usage=parsed.usage,
            usage_reported=parsed.usage_reported,
            cost_usd=parsed.cost_usd,
            session_id=parsed.session_id,
            duration_s=self.duration_s,
            exit_code=exit_code,
            truncated=truncated,
            stderr_tail=kwargs["stderr_tail"],
            argv=kwargs["argv"],
            spec_name=spec.name,
            model=self.model,
            cwd=self.workspace,
            stop_reason=self.stop_reason,
            warnings=warnings,
        )

    async def events(self) -> AsyncIterator[CLIEvent]:
        self.started = time.monotonic()
        self.deadline = self.started + self.total_timeout
        try:
            self._prepare()
            await self._spawn()
            async with contextlib.aclosing(self._pump()) as deltas:
                async for delta in deltas:
                    yield TextDelta(delta)
            await self._await_exit()
        except BaseException as exc:
            await self._cleanup(exc)
            raise
        await self._cleanup(None)
        try:
            result = self._build_result()
        except CLIAgentError as exc:
            self._log_end(exc)
            raise
        self._log_end(None, result)
        if self.streaming:
            streamed = self.parser.streamed_text
            if result.text.startswith(streamed) and len(result.text) > len(streamed):
                yield TextDelta(result.text[len(streamed):])
        yield result


# --- public API ----------------------------------------------------------------------------------
async def run_cli_agent(
    spec: CLISpec | str,
    model: str | None,
    messages: Sequence[Any] | str,
    settings: CLISettings | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> CLIResult:
    """Run the CLI once on ``messages`` (OpenAI-style list, or a ready prompt string) and return
    its answer. ``timeout`` (the request's) lowers ``settings.timeout_seconds``.

    Raises a :class:`~composite_llm.cli_agents.errors.CLIAgentError` subclass on failure.
    """
    run = _Run(spec, model, messages, settings, timeout, streaming=False)
    async with contextlib.aclosing(run.events()) as events:
        async for event in events:
            if isinstance(event, CLIResult):
                return event
    raise CLIAgentError("internal error: the CLI run ended without a result")  # pragma: no cover


async def stream_cli_agent(
    spec: CLISpec | str,
    model: str | None,
    messages: Sequence[Any] | str,
    settings: CLISettings | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> AsyncIterator[CLIEvent]:
    """Like :func:`run_cli_agent`, with the spec's streaming flags, yielding :class:`TextDelta`
    events as the CLI produces them and then exactly one :class:`CLIResult` (whose ``text`` is
    authoritative). Errors are raised from the iteration. Close it when you stop early
    (``async with contextlib.aclosing(stream_cli_agent(...)) as events``): that kills the CLI.
    """
    run = _Run(spec, model, messages, settings, timeout, streaming=True)
    async with contextlib.aclosing(run.events()) as events:
        async for event in events:
            yield event
