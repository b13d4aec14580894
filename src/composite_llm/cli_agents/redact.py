"""Secret redaction for everything the runner reports: error messages, stderr tails, argv, I/O logs.

Two layers: exact values (the environment values of the CLI's key variables and of any variable
whose name looks secret) and patterns (``sk-...``, ``Bearer ...``, ``api_key=...``, JWTs, Google
and GitHub keys). Redaction is applied to text that leaves the runner, never to the answer text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "Redactor", "secret_env_values", "is_secret_name"]

REDACTED = "[REDACTED]"

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # OpenAI / Anthropic style keys: sk-..., sk-ant-..., sk-proj-...
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), REDACTED),
    # Authorization headers.
    (re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=\-]{6,}", re.IGNORECASE), r"\1 " + REDACTED),
    # name=value / "name": "value" where the name looks secret (numeric values are left alone so
    # that usage counters such as "input_tokens": 1234 stay readable).
    (
        re.compile(
            r"(?i)\b([A-Za-z0-9_\-]*(?:api[_\-]?key|access[_\-]?key|token|secret|password|passwd|authorization)"
            r"[A-Za-z0-9_\-]*)([\"']?\s*[:=]\s*[\"']?)(?!\d+\b)([^\s\"',;}]{4,})"
        ),
        r"\1\2" + REDACTED,
    ),
    # JSON Web Tokens.
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), REDACTED),
    # Google API keys, GitHub tokens, Cursor-style key_... values, AWS access key ids.
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"), REDACTED),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), REDACTED),
    (re.compile(r"\bkey_[A-Za-z0-9]{16,}"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
]


def is_secret_name(name: str) -> bool:
    """True when an environment variable name looks like it holds a credential."""
    return bool(_SECRET_NAME.search(name))


def secret_env_values(
    names: Iterable[str] = (), environ: Mapping[str, str] | None = None, *, min_length: int = 6
) -> set[str]:
    """Values to redact: the given variables plus every variable whose name looks secret."""
    env = os.environ if environ is None else environ
    wanted = set(names)
    values: set[str] = set()
    for key, value in env.items():
        if (key in wanted or is_secret_name(key)) and value and len(value) >= min_length:
            values.add(value)
    return values


class Redactor:
    """Callable that removes secret values and secret-looking patterns from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another secret is removed whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def obj(self, value: Any) -> Any:
        """Redact every string inside a JSON-like structure (dict keys are kept)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {k: self.obj(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.obj(v) for v in value]
        return value
