"""Translate OpenAI-style requests (as LiteLLM hands them over) into llama-cpp-python arguments.

Kept apart from the runtime so it is testable without llama.cpp, and so the rules are in one place:
- message content given as OpenAI content parts is flattened to its text parts (llama.cpp chat
  templates only take strings; images cannot be used by these models anyway);
- only parameters llama.cpp honours are forwarded; `max_tokens` gets a default, because small models
  can otherwise loop until the context is full (minutes on a small CPU);
- `n` (samples of one prompt) is checked here and decoded together by the scheduler (batching.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from composite_llm.local.errors import LocalModelError
from composite_llm.messages import content_text

MAX_TOKENS_ENV = "COMPOSITE_LLM_LOCAL_MAX_TOKENS"
DEFAULT_MAX_TOKENS = 1024

#: OpenAI/LiteLLM names -> llama-cpp-python `create_chat_completion` names (same unless noted).
_FORWARDED = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
    "repetition_penalty": "repeat_penalty",
}


class UnsupportedLocalParam(LocalModelError):
    """A request parameter local models cannot honour (mapped to HTTP 400)."""


def flatten_content(content: Any) -> str:
    """A message's content as one string: `composite_llm.messages.content_text`, non-text parts left out
    (the chat templates take strings, and these models cannot see images)."""
    return content_text(content)


def to_llama_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Messages reduced to `{role, content}` strings; `developer` becomes `system` (templates know it)."""
    converted: list[dict[str, str]] = []
    for message in messages:
        role = str(message.get("role") or "user")
        if role == "developer":
            role = "system"
        converted.append({"role": role, "content": flatten_content(message.get("content"))})
    return converted


def default_max_tokens() -> int:
    raw = os.environ.get(MAX_TOKENS_ENV, "")
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_MAX_TOKENS
    return value if value > 0 else DEFAULT_MAX_TOKENS


def _response_format(value: Any) -> dict[str, Any] | None:
    """OpenAI `response_format` -> llama-cpp's (`json_object` with an optional schema, grammar-enforced)."""
    if not isinstance(value, Mapping):
        return None
    kind = value.get("type")
    if kind == "json_object":
        schema = value.get("schema")
        return {"type": "json_object", **({"schema": schema} if schema else {})}
    if kind == "json_schema":
        spec = value.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return {"type": "json_object", **({"schema": schema} if schema else {})}
    return None


def _stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [s for s in value if isinstance(s, str) and s]


def sample_count(optional_params: Mapping[str, Any]) -> int:
    """`n`: how many samples (choices) of the prompt to generate; a positive integer."""
    n = (optional_params or {}).get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UnsupportedLocalParam(f"n must be a positive integer (samples of the prompt); got n={n!r}")
    return n


def generation_kwargs(optional_params: Mapping[str, Any], model_stop: Iterable[str] = ()) -> dict[str, Any]:
    """Keyword arguments for `Llama.create_chat_completion` (without messages/stream)."""
    params = dict(optional_params or {})
    sample_count(params)
    kwargs: dict[str, Any] = {}
    for source, target in _FORWARDED.items():
        value = params.get(source)
        if value is not None:
            kwargs[target] = value
    max_tokens = params.get("max_tokens", params.get("max_completion_tokens"))
    kwargs["max_tokens"] = int(max_tokens) if max_tokens else default_max_tokens()
    stop = _stop_list(params.get("stop"))
    for extra in model_stop:
        if extra not in stop:
            stop.append(extra)
    if stop:
        kwargs["stop"] = stop
    response_format = _response_format(params.get("response_format"))
    if response_format is not None:
        kwargs["response_format"] = response_format
    return kwargs
