"""Helpers over OpenAI-style message lists that keep the user's structure intact.

Composite prompts are merged into the conversation without breaking it: one system message at most
(ours is appended to the user's), and list (multimodal) content is kept as a list, never stringified.
"""

from __future__ import annotations

from typing import Any, Optional

# What a composite answer carries besides its content (the trace of the last turn: `reasoning_content`,
# `provider_specific_fields`) and reasoning blocks of any model. Clients commonly append the whole
# assistant message to the history (`messages.append(resp.choices[0].message)`), so these come back on
# the next turn; forwarded, every member would pay for the previous trace and some providers reject the
# keys. They are dropped from assistant messages before any sub-call; content and tool calls stay.
ASSISTANT_TRACE_FIELDS = frozenset({"reasoning_content", "provider_specific_fields", "thinking_blocks"})


def content_text(content: Any) -> str:
    """The text parts of a message content, joined; images and other parts are left out."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def _as_dict(message: Any) -> dict[str, Any]:
    if isinstance(message, dict):
        return message
    if hasattr(message, "model_dump"):
        return message.model_dump(exclude_none=True)
    return dict(message)


def with_system_prompt(messages: list[Any], prompt: str) -> list[dict[str, Any]]:
    """The conversation with `prompt` added to its system message (created first if there is none).

    Only the first system message is extended; the list and the user's dicts are not mutated.
    """
    result = [_as_dict(m) for m in messages]
    for index, message in enumerate(result):
        if message.get("role") in ("system", "developer"):
            content = message.get("content")
            if isinstance(content, list):
                merged: Any = list(content) + [{"type": "text", "text": prompt}]
            else:
                existing = content_text(content)
                merged = f"{existing}\n\n{prompt}" if existing else prompt
            result[index] = {**message, "content": merged}
            return result
    return [{"role": "system", "content": prompt}, *result]


def with_instruction(messages: list[Any], instruction: Optional[str]) -> list[Any]:
    """`messages` with `instruction` appended to the last user message as a new paragraph (a text part for
    list content); the list and the user's dicts are not mutated. A node's `instruction` and the eval's
    chain-of-thought baselines both go through this, so a profile and its baseline send the same prompt."""
    if not instruction:
        return messages
    result = list(messages)
    for index in range(len(result) - 1, -1, -1):
        message = _as_dict(result[index])
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            merged: Any = [*content, {"type": "text", "text": instruction}]
        else:
            existing = content_text(content)
            merged = f"{existing}\n\n{instruction}" if existing else instruction
        result[index] = {**message, "content": merged}
        break
    return result


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Reject conversations no strategy can answer, with a message saying what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of chat messages")
    checked = []
    for index, message in enumerate(messages):
        try:
            message = _as_dict(message)
        except (TypeError, ValueError):
            raise ValueError(f"messages[{index}] is not a chat message object") from None
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise ValueError(f"messages[{index}] has unknown role {role!r}")
        if role == "assistant":
            message = without_trace_fields(message)
        checked.append(message)
    if not any(m.get("role") == "user" for m in checked):
        raise ValueError("messages contain no user message: nothing to answer")
    return checked


def without_trace_fields(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message as a model should see it again: no trace fields, no empty (None) extras
    (a `model_dump()` adds `function_call: None`, `audio: None`, ...). `content` is kept even when None
    (an assistant turn that only called tools). The caller's dict is not changed."""
    return {k: v for k, v in message.items()
            if k not in ASSISTANT_TRACE_FIELDS and (v is not None or k == "content")}


def response_labels(count: int) -> list[str]:
    """Anonymous labels for member answers: Response A, B, ..., Z, AA, AB, ..."""
    labels = []
    for index in range(count):
        name, n = "", index
        while True:
            name = chr(ord("A") + n % 26) + name
            n = n // 26 - 1
            if n < 0:
                break
        labels.append(f"Response {name}")
    return labels
