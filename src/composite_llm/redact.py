"""Secret redaction for everything a user or operator may read: traces, logs, error messages.

Two nets: exact values we know are secret (api keys from provider bundles, request parameters and
key-like environment variables) and patterns that look like credentials wherever they come from.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

REDACTED = "[REDACTED]"

# Credential shapes seen in provider error texts and CLI output.
_SECRET_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9_\-\.=:/+]{6,}"),
    re.compile(r"(?i)(api[_-]?key|access[_-]?token|secret|password)(\s*[=:]\s*|\"\s*:\s*\")([^\s\"',}]{4,})"),
    re.compile(r"\b(?:csk|gsk|xai|AIza)[-_A-Za-z0-9]{10,}"),
]
_SECRET_ENV_NAME = re.compile(r"(?i)(KEY|TOKEN|SECRET|PASSWORD)")
_MIN_SECRET_LENGTH = 6


def secret_env_values() -> set[str]:
    """Values of environment variables whose names look secret (API keys, tokens)."""
    return {
        value
        for name, value in os.environ.items()
        if _SECRET_ENV_NAME.search(name) and value and len(value) >= _MIN_SECRET_LENGTH
    }


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace known secret values and credential-looking substrings with a marker."""
    if not text:
        return text
    values = {s for s in secrets if isinstance(s, str) and len(s) >= _MIN_SECRET_LENGTH}
    values |= secret_env_values()
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 3:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


SECRET_PARAM_NAMES = frozenset({"api_key", "aws_secret_access_key", "aws_session_token", "azure_ad_token", "vertex_credentials"})


def secret_values_in(params: dict[str, Any]) -> set[str]:
    """The secret-valued entries of a litellm params dict (so they can be scrubbed from errors)."""
    return {str(v) for k, v in params.items() if k in SECRET_PARAM_NAMES and v}


def redact_params(params: dict[str, Any]) -> dict[str, Any]:
    """A copy of litellm params safe to show: secret-named values replaced."""
    return {k: (REDACTED if k in SECRET_PARAM_NAMES and v else v) for k, v in params.items()}
