"""Interpretation of a CLI's stdout according to its spec: pure, no processes involved.

:class:`OutputParser` is fed stdout lines (JSON formats) or chunks (text format) as they arrive
and returns the text deltas to stream; :meth:`OutputParser.finish` assembles the answer, usage,
cost, session id and error information once the run is over.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..usage import UsageTotals
from .spec import MISSING, CLISpec, resolve_number, resolve_path, resolve_text

__all__ = ["OutputParser", "ParsedOutput", "strip_ansi"]

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
_MAX_NOISE_LINES = 2000


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def _as_status(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, (int, float)) and 100 <= int(value) <= 599:
        return int(value)
    return None


def unwrap_api_error(message: str) -> tuple[str, int | None]:
    """A message that embeds an API error body (Codex and Gemini print the raw response, e.g.
    ``[API Error: {"error": {"message": "...", "code": "400"}}]``) -> (its inner message, status)."""
    start, end = message.find("{"), message.rfind("}")
    if start < 0 or end <= start:
        return message, None
    try:
        doc = json.loads(message[start:end + 1])
    except ValueError:
        return message, None
    if not isinstance(doc, dict):
        return message, None
    err = doc.get("error") if isinstance(doc.get("error"), dict) else doc
    inner = err.get("message")
    status = None
    for key in ("code", "status", "status_code"):
        status = _as_status(err.get(key))
        if status is not None:
            break
    if not isinstance(inner, str) or not inner.strip():
        return message, status
    return inner.strip(), status


@dataclass
class ParsedOutput:
    """What the output said, before the runner weighs it against the exit code."""

    #: The answer (None when nothing answer-like was found).
    text: str | None
    terminal_seen: bool
    is_error: bool
    error_message: str | None
    usage: UsageTotals
    usage_reported: bool
    cost_usd: float | None
    session_id: str | None
    #: Number of stdout lines that parsed as JSON objects.
    json_events: int
    #: stdout that was not JSON (the whole output for the text format).
    plain_text: str
    #: Messages of non-terminal error events.
    error_events: list[str] = field(default_factory=list)
    #: HTTP status of the upstream API error behind a failed run, when reported.
    error_status: int | None = None


class OutputParser:
    def __init__(self, spec: CLISpec, *, streaming: bool = False) -> None:
        self.spec = spec
        self.streaming = streaming
        self.terminal: dict[str, Any] | None = None
        self.json_events = 0
        self.session_id: str | None = None
        self._deltas: list[str] = []
        self._messages: list[str] = []
        self._noise: list[str] = []
        self._text_chunks: list[str] = []
        self._error_events: list[str] = []
        self._deltas_since_message = False
        self._streamed: list[str] = []

    # --- feeding -----------------------------------------------------------------------------
    @property
    def terminal_seen(self) -> bool:
        return self.terminal is not None

    @property
    def streamed_text(self) -> str:
        return "".join(self._streamed)

    def _emit(self, text: str) -> list[str]:
        if not text:
            return []
        self._streamed.append(text)
        return [text]

    def feed_chunk(self, text: str) -> list[str]:
        """Text format: a decoded stdout chunk."""
        self._text_chunks.append(text)
        return self._emit(strip_ansi(text)) if self.streaming else []

    def feed_line(self, line: str) -> list[str]:
        """JSON formats: one stdout line (without its newline). Returns deltas to stream."""
        stripped = line.strip()
        if not stripped:
            return []
        event: Any = MISSING
        if stripped.startswith("{"):
            try:
                event = json.loads(stripped)
            except ValueError:
                event = MISSING
        if not isinstance(event, dict):
            if len(self._noise) < _MAX_NOISE_LINES:
                self._noise.append(line)
            return []
        return self.feed_event(event)

    def feed_event(self, event: dict[str, Any]) -> list[str]:
        spec = self.spec
        self.json_events += 1
        if self.session_id is None:
            for path in spec.session_id_paths:
                sid = resolve_path(event, path)
                if isinstance(sid, str) and sid:
                    self.session_id = sid
                    break
        if self.terminal is None and any(m.matches(event) for m in spec.terminal_events):
            self.terminal = event
            return []
        if any(m.matches(event) for m in spec.error_events):
            msg = self._error_message(event)
            if msg:
                self._error_events.append(msg)
            return []
        for rule in spec.delta_events:
            if rule.match.matches(event):
                text = resolve_text(event, rule.path)
                if text:
                    self._deltas.append(text)
                    self._deltas_since_message = True
                    return self._emit(text) if self.streaming else []
                return []
        for rule in spec.message_events:
            if rule.match.matches(event):
                text = resolve_text(event, rule.path)
                if not text:
                    return []
                self._messages.append(text)
                snapshot = self._deltas_since_message
                self._deltas_since_message = False
                if not self.streaming or snapshot:
                    # A message after deltas repeats them (cumulative snapshot): not streamed twice.
                    return []
                sep = "\n\n" if self._streamed and not self.streamed_text.endswith("\n") else ""
                return self._emit(sep + text)
        return []

    # --- results -----------------------------------------------------------------------------
    def _error_message(self, event: dict[str, Any]) -> str | None:
        for path in self.spec.error_message_paths:
            value = resolve_path(event, path)
            if isinstance(value, str) and value.strip():
                return strip_ansi(unwrap_api_error(value.strip())[0])
        return None

    def _error_status(self, event: dict[str, Any]) -> int | None:
        """The upstream status: a status field of the spec, else one embedded in the message."""
        for path in self.spec.error_status_paths:
            status = _as_status(resolve_path(event, path))
            if status is not None:
                return status
        for path in self.spec.error_message_paths:
            value = resolve_path(event, path)
            if isinstance(value, str) and "{" in value:
                status = unwrap_api_error(value)[1]
                if status is not None:
                    return status
        return None

    def _usage(self, event: dict[str, Any] | None) -> tuple[UsageTotals, bool]:
        """The counts the spec's usage paths find in the terminal event (each key sums its paths), and
        whether any was reported. The total is prompt + completion; a reported total only fills in
        the completion count of a CLI that reports a total but no output count."""
        counts: dict[str, int] = {}
        reported = False
        for key in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cache_write_tokens",
                    "total_tokens"):
            values = [resolve_number(event, path) for path in getattr(self.spec.usage, key)] if event else []
            found = [value for value in values if value is not None]
            if found:
                counts[key] = int(sum(found))
                reported = True
        total = counts.pop("total_tokens", None)
        if total is not None and "completion_tokens" not in counts:
            counts["completion_tokens"] = max(0, total - counts.get("prompt_tokens", 0))
        return UsageTotals(**counts), reported

    def assembled_text(self) -> str | None:
        """The answer from the events: result text, else complete messages, else the deltas."""
        spec = self.spec
        if spec.output_format == "text":
            return strip_ansi("".join(self._text_chunks)).strip()
        if self.terminal is not None and spec.result_text_path:
            text = resolve_text(self.terminal, spec.result_text_path)
            if text is not None:
                return text
        if self._messages:
            return self._messages[-1] if spec.message_join == "last" else "\n\n".join(self._messages)
        if self._deltas:
            return "".join(self._deltas)
        return None

    def finish(self, raw_stdout: str = "") -> ParsedOutput:
        spec = self.spec
        # json format: the document may be pretty-printed over several lines.
        if spec.output_format == "json" and self.json_events == 0 and raw_stdout.strip():
            try:
                doc = json.loads(raw_stdout)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                self._noise.clear()
                self.feed_event(doc)
        terminal = self.terminal
        is_error = terminal is not None and any(m.matches(terminal) for m in spec.error_when)
        error_message = self._error_message(terminal) if is_error and terminal is not None else None
        error_status = self._error_status(terminal) if is_error and terminal is not None else None
        usage, reported = self._usage(terminal)
        cost = resolve_number(terminal, spec.cost_usd_path) if terminal is not None and spec.cost_usd_path else None
        if spec.output_format == "text":
            plain = strip_ansi("".join(self._text_chunks)).strip()
        else:
            plain = strip_ansi("\n".join(self._noise)).strip()
        return ParsedOutput(
            text=self.assembled_text(),
            terminal_seen=terminal is not None,
            is_error=is_error,
            error_message=error_message,
            usage=usage,
            usage_reported=reported,
            cost_usd=cost,
            session_id=self.session_id,
            json_events=self.json_events,
            plain_text=plain,
            error_events=list(self._error_events),
            error_status=error_status,
        )
