"""The one rule for turning a caller's `timeout` into a deadline in seconds.

LiteLLM hands a provider `timeout` as a float (its own resolution turns an `httpx.Timeout` into the
`read` part for every provider but openai/azure/bedrock), but a handler called directly, the proxy's
request body and a CLI runner's caller may give an int, a numeric string, an `httpx.Timeout` (or the
openai SDK's `Timeout`) or None. Every entry point (the composite provider, local models, CLI agents)
reads them through `timeout_seconds`, so one value means the same deadline everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

__all__ = ["timeout_seconds"]

_TIMEOUT_PARTS = ("connect", "read", "write", "pool")


def _is_timeout_object(value: Any) -> bool:
    """An `httpx.Timeout`, or the openai SDK's own `Timeout` class (not an httpx subclass in openai 3)."""
    return isinstance(value, httpx.Timeout) or all(hasattr(value, part) for part in _TIMEOUT_PARTS)


def timeout_seconds(timeout: Any) -> float | None:
    """Seconds the whole call may take, or None for no deadline.

    - None, a bool, zero, a negative or an infinite number: no deadline.
    - int, float, or a string holding a number ("30", "2.5"): that many seconds.
    - `httpx.Timeout` or `openai.Timeout`: its `read` part (how long an answer may take to arrive: the
      part that bounds generation, as LiteLLM reads it too); one without a read limit is no deadline.
    - anything else (text that is not a number, an object): `ValueError`, since a deadline the caller
      asked for must not be dropped silently.
    """
    if _is_timeout_object(timeout):
        timeout = timeout.read
    if timeout is None or isinstance(timeout, bool):
        return None
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f"timeout must be a number of seconds or an httpx.Timeout, got {timeout!r}") from None
    return value if value > 0 and math.isfinite(value) else None
