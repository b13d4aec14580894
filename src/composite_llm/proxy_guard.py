"""A LiteLLM proxy callback that turns malformed chat requests into a short 400 before LiteLLM parses them.

litellm 1.108.7 reads `messages` before any provider runs: `"messages": "hi"` (or `null`, or a list holding
a number) fails inside `litellm.completion` with an AttributeError/TypeError, and the proxy answers with the
whole Python traceback (about 2.3 kB, server paths included). No provider can catch that, so the check runs
as a proxy pre-call hook, which the proxy awaits before routing. Enable it in the proxy config:

    litellm_settings:
      callbacks: ["composite_llm.proxy_guard.REQUEST_GUARD"]

It checks only the shape LiteLLM itself needs to read the request (a list of message objects), for every
model the proxy serves; the content of a valid request is left to the model (and to composite-llm's own
checks for composite models).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})


def message_shape_problem(messages: Any) -> str | None:
    """What is wrong with the shape of `messages`, or None when it is a list of objects."""
    if not isinstance(messages, list):
        return f"messages must be a list of chat message objects, got {type(messages).__name__}"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}] must be a chat message object, got {type(message).__name__}"
    return None


class RequestGuard(CustomLogger):
    """Refuses chat requests whose `messages` is not a list of message objects, with a short 400."""


    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict,
                                  call_type: Any) -> dict | None:
        if str(call_type) in CHAT_CALL_TYPES and isinstance(data, dict) and "messages" in data:
            problem = message_shape_problem(data["messages"])
            if problem is not None:
                raise HTTPException(status_code=400, detail={"error": problem})
        return data


REQUEST_GUARD = RequestGuard()
