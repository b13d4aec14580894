"""Helpers over OpenAI-style message lists that keep the user's structure intact.

Composite prompts are merged into the conversation without breaking it: one system message at most
(ours is appended to the user's), and list (multimodal) content is kept as a list, never stringified.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# What a composite answer carries besides its content (the trace of the last turn: `reasoning_content`,
# `provider_specific_fields`) and reasoning blocks of any model. Clients commonly append the whole
# assistant message to the history (`messages.append(resp.choices[0].message)`), so these come back on
# the next turn; forwarded, every member would pay for the previous trace and some providers reject the
# keys. They are dropped from assistant messages before any sub-call; content and tool calls stay.
ASSISTANT_TRACE_FIELDS = frozenset({"reasoning_content", "provider_specific_fields", "thinking_blocks"})


#: Content part types whose `text` is the part's text: Chat Completions `text`, Responses API input
#: (`input_text`) and output (`output_text`) parts. A part without a `type` counts as `text`.
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})

#: Non-text part types and the word a note names them by (see `content_text(notes=True)`).
NON_TEXT_PART_KINDS = {
    "image_url": "image",
    "input_image": "image",
    "image": "image",
    "input_audio": "audio",
    "audio": "audio",
    "file": "file",
    "input_file": "file",
    "document": "document",
    "video_url": "video",
}


def content_text(content: Any, *, notes: bool = False) -> str:
    """The text of a message `content`, the one rule every part of composite_llm reads content by.

    - `None` is ""; a string is itself; one part given as a mapping counts as a list of that part.
    - In a list, string parts and text parts (`text`, `input_text`, `output_text`, or a part with a
      `text` and no known non-text type; `{"text": {"value": ...}}` too) give their text, in order,
      joined by newlines.
    - Images, audio, files, refusals and unknown parts carry no text the reader can use: they are left
      out, or, with `notes=True`, named in brackets in their place (`[image omitted]`,
      `[file omitted: a.pdf]`, `[refusal] why`), for readers that should know something was there
      (a CLI agent's prompt). Local models and the fake server's recorded text leave them out.
    - Anything else (a number, an object) is `str(content)`.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        content = [content]
    if not isinstance(content, Iterable):
        return str(content)
    pieces: list[str] = []
    for part in content:
        if isinstance(part, str):
            pieces.append(part)
            continue
        if not isinstance(part, Mapping) and callable(getattr(part, "model_dump", None)):
            part = part.model_dump()
        if not isinstance(part, Mapping):
            if notes:
                pieces.append(f"[{type(part).__name__} part omitted]")
            continue
        text = _part_text(part)
        if text is not None:
            pieces.append(text)
        elif notes:
            pieces.append(_part_note(part))
    return "\n".join(pieces)


def _part_text(part: Mapping[str, Any]) -> str | None:
    """The text of a text part; None for any other part."""
    ptype = str(part.get("type") or "text")
    is_text = ptype in TEXT_PART_TYPES or (
        "text" in part and ptype not in NON_TEXT_PART_KINDS and ptype != "refusal")
    if not is_text:
        return None
    text = part.get("text")
    if isinstance(text, Mapping):  # {"text": {"value": ...}} (Assistants API style)
        text = text.get("value")
    return "" if text is None else str(text)


def _part_note(part: Mapping[str, Any]) -> str:
    """The bracketed note standing for a non-text part."""
    ptype = str(part.get("type") or "")
    if ptype == "refusal":
        return f"[refusal] {part.get('refusal', '')}"
    kind = NON_TEXT_PART_KINDS.get(ptype)
    if kind is None:
        return f"[{ptype} part omitted]"
    file_info = part.get("file")
    filename = file_info.get("filename") if isinstance(file_info, Mapping) else None
    filename = filename or part.get("filename")
    return f"[{kind} omitted: {filename}]" if filename else f"[{kind} omitted]"


def _as_dict(message: Any) -> dict[str, Any]:
    if isinstance(message, dict):
        return message
    if hasattr(message, "model_dump"):
        return message.model_dump(exclude_none=True)
    return dict(message)


def _appended(content: Any, text: str) -> Any:
    """`content` with `text` added as a new paragraph: a text part for list (multimodal) content, which
    stays a list; the system prompt and a node's instruction are merged the same way."""
    if isinstance(content, list):
        return [*content, {"type": "text", "text": text}]
    existing = content_text(content)
    return f"{existing}\n\n{text}" if existing else text


def with_system_prompt(messages: list[Any], prompt: str) -> list[dict[str, Any]]:
    """The conversation with `prompt` added to its system message (created first if there is none).

    Only the first system message is extended; the list and the user's dicts are not mutated.
    """
    result = [_as_dict(m) for m in messages]
    for index, message in enumerate(result):
        if message.get("role") in ("system", "developer"):
            result[index] = {**message, "content": _appended(message.get("content"), prompt)}
            return result
    return [{"role": "system", "content": prompt}, *result]


def with_instruction(messages: list[Any], instruction: str | None) -> list[Any]:
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
        result[index] = {**message, "content": _appended(message.get("content"), instruction)}
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
