"""One record per sub-call, rendered two ways: readable text for `reasoning_content` and a dict.

The trace is what a user reads to understand a composite answer: which member said what, how long it
took, what it cost, who failed and why. Member answers appear only as short previews. Everything the trace
renders (text, dict, progress lines) is redacted like errors are: an upstream that echoes a key inside a
200 answer must not put it in `reasoning_content`, `sub_calls[].preview`, stream progress or the log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .redact import Redactor, secret_env_values
from .usage import UsageTotals

PREVIEW_CHARS = 160


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass
class SubCallRecord:
    """What one sub-call did. `status` is ok, failed, or dropped (cancelled as a straggler)."""

    stage: str
    role: str
    label: str
    model: str
    status: str = "ok"
    started_s: float = 0.0
    latency_s: float = 0.0
    usage: UsageTotals = field(default_factory=UsageTotals)
    cost: float | None = None
    attempts: int = 1
    error: str | None = None
    error_type: str | None = None
    preview: str = ""
    streamed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "stage": self.stage,
            "role": self.role,
            "label": self.label,
            "model": self.model,
            "status": self.status,
            "started_s": round(self.started_s, 4),
            "latency_s": round(self.latency_s, 4),
            "usage": self.usage.to_dict(),
            "cost": self.cost,
            "attempts": self.attempts,
            "error": self.error,
            "error_type": self.error_type,
            "preview": self.preview,
        }
        if self.extra:
            data["extra"] = self.extra
        return data


@dataclass
class Trace:
    """Everything recorded for one composite request."""

    request_id: str
    model: str
    strategy: str
    profile: str | None = None
    started: float = field(default_factory=time.monotonic)
    records: list[SubCallRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    show_previews: bool = True
    finished: float | None = None
    # Known secret values of this request (api keys of its nodes and of the request itself).
    secrets: set[str] = field(default_factory=set)

    def redact(self, text: str) -> str:
        """`text` without this request's secrets, secret-named environment values or key-shaped tokens."""
        return Redactor(self.secrets | secret_env_values())(text)

    # ------------------------------------------------------------------ accounting
    def add(self, record: SubCallRecord) -> None:
        self.records.append(record)
        if record.status == "failed":
            self.failed.append(f"{record.role} {record.label}")
        elif record.status == "dropped":
            self.dropped.append(f"{record.role} {record.label}")

    @property
    def usage(self) -> UsageTotals:
        total = UsageTotals()
        for record in self.records:
            total.add(record.usage)
        return total

    @property
    def cost(self) -> float:
        return float(sum(r.cost or 0.0 for r in self.records))

    @property
    def cost_complete(self) -> bool:
        """False when some successful sub-call had no known price (its cost counts as 0)."""
        return all(r.cost is not None for r in self.records if r.status == "ok")

    @property
    def degraded(self) -> bool:
        return bool(self.failed or self.dropped)

    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return end - self.started

    # ------------------------------------------------------------------ rendering
    def describe(self, record: SubCallRecord) -> str:
        """One line for a sub-call, used both in the final text and as a streamed progress line (redacted)."""
        return self.redact(self._describe(record))

    def _describe(self, record: SubCallRecord) -> str:
        head = f"{record.role} {record.label} ({record.model})" if record.label != record.model else (
            f"{record.role} {record.model}"
        )
        if record.status == "ok":
            cost = f", ${record.cost:.6f}" if record.cost else ""
            retry = f", {record.attempts} attempts" if record.attempts > 1 else ""
            line = (
                f"✓ {head}: {record.latency_s:.2f} s, {record.usage.prompt_tokens}+"
                f"{record.usage.completion_tokens} tok{cost}{retry}"
            )
            if self.show_previews and record.preview:
                line += f"\n    “{record.preview}”"
            return line
        if record.status == "dropped":
            return f"– {head}: dropped after {record.latency_s:.2f} s (straggler cancelled)"
        return f"✗ {head}: failed after {record.latency_s:.2f} s, {record.attempts} attempt(s): {record.error}"

    def render_text(self) -> str:
        usage = self.usage
        lines = [f"composite {self.strategy} · {self.model} · request {self.request_id}"]
        stage = None
        for record in self.records:
            if record.stage != stage:
                stage = record.stage
                lines.append(f"[{stage}]")
            lines.append("  " + self._describe(record).replace("\n", "\n  "))
        for key, value in self.details.items():
            text = value if isinstance(value, str) else None
            if text:
                lines.append(f"[{key}]\n  " + text.replace("\n", "\n  "))
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.degraded:
            parts = []
            if self.failed:
                parts.append("failed: " + ", ".join(self.failed))
            if self.dropped:
                parts.append("dropped: " + ", ".join(self.dropped))
            lines.append("DEGRADED — " + "; ".join(parts))
        ok_calls = sum(1 for r in self.records if r.status == "ok")
        lines.append(
            f"total: {ok_calls}/{len(self.records)} sub-calls ok, {usage.prompt_tokens} prompt + "
            f"{usage.completion_tokens} completion tokens, ${self.cost:.6f}, {self.elapsed():.2f} s"
        )
        return self.redact("\n".join(lines))

    def to_dict(self) -> dict[str, Any]:
        redactor = Redactor(self.secrets | secret_env_values())
        return redactor.obj({
            "request_id": self.request_id,
            "model": self.model,
            "strategy": self.strategy,
            "profile": self.profile,
            "latency_s": round(self.elapsed(), 4),
            "usage": self.usage.to_dict(),
            "cost": self.cost,
            "cost_complete": self.cost_complete,
            "degraded": self.degraded,
            "failed_members": list(self.failed),
            "dropped_members": list(self.dropped),
            "notes": list(self.notes),
            "details": {k: v for k, v in self.details.items() if not isinstance(v, str)},
            "sub_calls": [r.to_dict() for r in self.records],
        })
