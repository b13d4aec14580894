"""What the dashboard API returns, computed from the trace log and the eval results.

The trace log is the JSONL written by `trace_log.py`: one request per line, `Trace.to_dict()` plus `ts`
and, for a failed request, `error`. Files are re-read only when they change (appended lines are parsed
incrementally), so a dashboard left open follows a live proxy. Lines that are not JSON objects (a write
cut short by a crash) are skipped and counted.

Status of a request: `error` when it has an error, else `degraded` when a member failed or was dropped,
else `ok`. Latency percentiles are over requests that did not fail.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from ..eval.report import percentile, report_document

INLINE_PROFILE = "(inline)"


class JsonlFile:
    """A JSONL file kept in memory, re-read when it changes (appends are read incrementally)."""

    def __init__(self, path: str | os.PathLike | None, accept: Callable[[dict[str, Any]], bool] | None = None):
        self.path = Path(path).expanduser() if path else None
        self._accept = accept or (lambda row: True)
        self._rows: list[dict[str, Any]] = []
        self._bad = 0
        self._offset = 0
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    @property
    def bad_lines(self) -> int:
        return self._bad

    def exists(self) -> bool:
        return self.path is not None and self.path.is_file()

    def rows(self) -> list[dict[str, Any]]:
        if self.path is None:
            return []
        with self._lock:
            try:
                stat = self.path.stat()
            except OSError:
                self._rows, self._bad, self._offset, self._identity = [], 0, 0, None
                return []
            identity = (stat.st_dev, stat.st_ino)
            if identity != self._identity or stat.st_size < self._offset:
                self._rows, self._bad, self._offset, self._identity = [], 0, 0, identity
            if stat.st_size > self._offset:
                self._read_from_offset()
            return list(self._rows)

    def _read_from_offset(self) -> None:
        assert self.path is not None
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n")
        if end < 0:
            return  # a partial line: wait for its newline
        for raw in data[: end + 1].splitlines():
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._bad += 1
                continue
            if isinstance(row, dict) and self._accept(row):
                self._rows.append(row)
            else:
                self._bad += 1
        self._offset += end + 1


# --------------------------------------------------------------------------- trace log
def request_status(row: dict[str, Any]) -> str:
    if row.get("error"):
        return "error"
    if row.get("degraded"):
        return "degraded"
    return "ok"


def _usage(row: dict[str, Any]) -> tuple[int, int]:
    usage = row.get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def request_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, tokens, cost and latency of a group of requests."""
    errors = sum(1 for r in rows if request_status(r) == "error")
    degraded = sum(1 for r in rows if request_status(r) == "degraded")
    prompt = sum(_usage(r)[0] for r in rows)
    completion = sum(_usage(r)[1] for r in rows)
    latencies = [float(r["latency_s"]) for r in rows if not r.get("error") and r.get("latency_s") is not None]
    return {
        "requests": len(rows),
        "errors": errors,
        "error_rate": _round(errors / len(rows)) if rows else 0.0,
        "degraded": degraded,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost": _round(sum(float(r.get("cost") or 0.0) for r in rows), 8),
        "cost_complete": all(r.get("cost_complete", True) for r in rows),
        "latency_mean_s": _round(sum(latencies) / len(latencies)) if latencies else None,
        "latency_p50_s": _round(percentile(latencies, 50)),
        "latency_p95_s": _round(percentile(latencies, 95)),
    }


def member_stats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sub-call model: calls, failures, drops, tokens, cost, latency of successful calls."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for call in row.get("sub_calls") or []:
            groups.setdefault(str(call.get("model") or "?"), []).append(call)
    out = []
    for model, calls in groups.items():
        ok = [c for c in calls if c.get("status") == "ok"]
        failed = sum(1 for c in calls if c.get("status") == "failed")
        latencies = [float(c.get("latency_s") or 0.0) for c in ok]
        prompt = sum(int((c.get("usage") or {}).get("prompt_tokens") or 0) for c in calls)
        completion = sum(int((c.get("usage") or {}).get("completion_tokens") or 0) for c in calls)
        out.append({
            "key": model,
            "calls": len(calls),
            "failed": failed,
            "dropped": sum(1 for c in calls if c.get("status") == "dropped"),
            "failure_rate": _round(failed / len(calls)) if calls else 0.0,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost": _round(sum(float(c.get("cost") or 0.0) for c in calls), 8),
            "latency_p50_s": _round(percentile(latencies, 50)),
            "latency_p95_s": _round(percentile(latencies, 95)),
        })
    out.sort(key=lambda item: (-item["calls"], item["key"]))
    return out


def _grouped(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    out = [{"key": name, **request_stats(group)} for name, group in groups.items()]
    out.sort(key=lambda item: (-item["requests"], item["key"]))
    return out


def overview(rows: list[dict[str, Any]]) -> dict[str, Any]:
    stamps = [float(r["ts"]) for r in rows if isinstance(r.get("ts"), (int, float))]
    return {
        "totals": request_stats(rows),
        "by_model": _grouped(rows, lambda r: str(r.get("model") or "?")),
        "by_profile": _grouped(rows, lambda r: str(r.get("profile") or INLINE_PROFILE)),
        "by_strategy": _grouped(rows, lambda r: str(r.get("strategy") or "?")),
        "by_member": member_stats(rows),
        "first_ts": min(stamps) if stamps else None,
        "last_ts": max(stamps) if stamps else None,
    }


def request_summary(row: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = _usage(row)
    calls = row.get("sub_calls") or []
    return {
        "request_id": row.get("request_id"),
        "ts": row.get("ts"),
        "model": row.get("model"),
        "profile": row.get("profile"),
        "strategy": row.get("strategy"),
        "status": request_status(row),
        "latency_s": row.get("latency_s"),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost": row.get("cost"),
        "sub_calls": len(calls),
        "failed_sub_calls": sum(1 for c in calls if c.get("status") != "ok"),
        "error": (row.get("error") or None) and str(row["error"])[:200],
    }


def _matches(row: dict[str, Any], query: str) -> bool:
    query = query.casefold()
    fields: list[Any] = [row.get("request_id"), row.get("model"), row.get("profile"), row.get("error")]
    for call in row.get("sub_calls") or []:
        fields += [call.get("model"), call.get("label"), call.get("preview"), call.get("error")]
    return any(query in str(f).casefold() for f in fields if f)


def list_requests(rows: list[dict[str, Any]], *, model: str = "", profile: str = "", status: str = "",
                  query: str = "", limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """Newest first, filtered; `total` is the count after filtering."""
    selected = [r for r in rows
                if (not model or r.get("model") == model)
                and (not profile or (r.get("profile") or INLINE_PROFILE) == profile)
                and (not status or request_status(r) == status)
                and (not query or _matches(r, query))]
    selected.sort(key=lambda r: float(r.get("ts") or 0.0), reverse=True)
    limit = max(1, min(int(limit), 1000))
    offset = max(0, int(offset))
    return {
        "total": len(selected),
        "offset": offset,
        "limit": limit,
        "requests": [request_summary(r) for r in selected[offset: offset + limit]],
        "models": sorted({str(r.get("model")) for r in rows if r.get("model")}),
        "profiles": sorted({str(r.get("profile") or INLINE_PROFILE) for r in rows}),
    }


def request_detail(rows: Iterable[dict[str, Any]], request_id: str) -> dict[str, Any] | None:
    """The full logged record (the last one with that id), with stages grouped in order."""
    found = None
    for row in rows:
        if row.get("request_id") == request_id:
            found = row
    if found is None:
        return None
    stages: list[dict[str, Any]] = []
    for index, call in enumerate(found.get("sub_calls") or []):
        if not stages or stages[-1]["stage"] != call.get("stage"):
            stages.append({"stage": call.get("stage"), "calls": []})
        stages[-1]["calls"].append({"index": index, **call})
    return {**found, "status": request_status(found), "stages": stages}


# --------------------------------------------------------------------------- eval results
def _is_eval_row(row: dict[str, Any]) -> bool:
    return "model" in row and "task_id" in row


def eval_results_file(path: str | os.PathLike | None) -> Path | None:
    """A results.jsonl, or a folder holding one (an `eval --out` folder)."""
    if not path:
        return None
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        return candidate / "results.jsonl"
    return candidate


def eval_document(rows: list[dict[str, Any]], summary_path: Path | None = None) -> dict[str, Any]:
    """The eval report (models, task sets) plus per-item outcomes for the grid."""
    from ..eval.runner import latest_results

    order: list[str] | None = None
    meta: dict[str, Any] = {}
    if summary_path is not None and summary_path.is_file():
        try:
            meta = json.loads(summary_path.read_text(encoding="utf-8")).get("meta") or {}
            order = list(meta.get("models") or []) or None
        except (OSError, json.JSONDecodeError, AttributeError):
            meta, order = {}, None
    document = report_document(rows, order=order, meta=meta)
    items = [{
        "model": r.get("model"),
        "task_id": r.get("task_id"),
        "task_set": r.get("task_set"),
        "correct": bool(r.get("correct")),
        "error": bool(r.get("error")),
        "expected": r.get("expected"),
        "extracted": r.get("extracted"),
        "latency_s": r.get("latency_s"),
        "request_id": (r.get("composite") or {}).get("request_id"),
    } for r in latest_results(rows).values()]
    document["items"] = items
    return document
