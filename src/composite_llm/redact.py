"""Secret redaction for everything a user or operator may read: traces, logs, error messages,
CLI stderr tails and argv, I/O logs.

Two nets: exact values we know are secret (api keys from provider bundles and request parameters, the
values of environment variables whose names look secret) and patterns that look like credentials
wherever they come from (``sk-...``, ``Bearer ...``, ``api_key=...``, JWTs, Google/GitHub/AWS keys).
Redaction applies to text that is reported, never to an answer.

Known values are replaced only as whole tokens and only when at least `MIN_SECRET_CHARS` long: a short
"key" such as README's `api_key="x"` must not turn `OpenAIException` into `OpenAIE[REDACTED]ception`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "Redactor", "is_secret_name", "redact", "redact_params", "secret_env_values",
           "secret_values_in"]

REDACTED = "[REDACTED]"
# Values shorter than this are never redacted as known secrets (they would match ordinary words); real
# API keys are far longer, and key-shaped tokens are still caught by the patterns below.
MIN_SECRET_CHARS = 8
# A known secret is replaced only where it is a whole token: not preceded or followed by a character
# that could continue a key.
_TOKEN_CHAR = r"A-Za-z0-9_\-"

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
    names: Iterable[str] = (), environ: Mapping[str, str] | None = None, *, min_length: int = MIN_SECRET_CHARS
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
        self._secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._known = (re.compile(f"(?<![{_TOKEN_CHAR}])(?:" + "|".join(map(re.escape, self._secrets))
                                  + f")(?![{_TOKEN_CHAR}])") if self._secrets else None)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._known is not None and any(secret in text for secret in self._secrets):
            text = self._known.sub(REDACTED, text)
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


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secrets, secret-looking environment values and credential patterns removed."""
    if not text:
        return text
    return Redactor({*secrets, *secret_env_values()})(text)


SECRET_PARAM_NAMES = frozenset({"api_key", "aws_secret_access_key", "aws_session_token", "azure_ad_token",
                                "vertex_credentials"})


def secret_values_in(params: Mapping[str, Any]) -> set[str]:
    """The secret-valued entries of a litellm params dict (so they can be scrubbed from errors)."""
    return {str(v) for k, v in params.items() if k in SECRET_PARAM_NAMES and v}


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of litellm params safe to show: secret-named values replaced."""
    return {k: (REDACTED if k in SECRET_PARAM_NAMES and v else v) for k, v in params.items()}
