"""Optional JSONL log of every composite request: one line per request, secrets redacted.

Enabled by `trace_log: {path: ...}` (or composite_llm_research's `observability: {enabled, log_file}`) in a profile
document or the proxy block, or by `$COMPOSITE_LLM_TRACE_LOG`. Each line is written with one `write` on
an O_APPEND descriptor, so concurrent writers (threads, proxy workers) never interleave lines.
"""

from __future__ import annotations

import json
import logging
import os
import time

from .profiles import DocumentSettings
from .trace import Trace

TRACE_LOG_ENV = "COMPOSITE_LLM_TRACE_LOG"
logger = logging.getLogger("composite_llm")


def trace_log_path(settings: DocumentSettings) -> str | None:
    env = os.environ.get(TRACE_LOG_ENV)
    if env:
        return env
    if settings.trace_log is not None and settings.trace_log.enabled:
        return settings.trace_log.path
    if settings.observability is not None and settings.observability.enabled:
        return settings.observability.log_file or "composite_traces.jsonl"
    return None


def write_trace(trace: Trace, settings: DocumentSettings, *, error: str | None = None) -> None:
    """Append the trace to the configured log; logging problems are reported, never raised."""
    path = trace_log_path(settings)
    if not path:
        return
    record = {"ts": time.time(), **trace.to_dict()}
    if error:
        record["error"] = error
    line = trace.redact(json.dumps(record, ensure_ascii=False, default=str)) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        logger.warning("composite trace log %s not writable: %s", path, exc)
