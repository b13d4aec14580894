"""`LocalProvider`: the LiteLLM face of the local runtime (`local/<name>` model strings).

Why a CustomLLM in process rather than a llama.cpp server: nothing to start, no port, and the
composite engine calls `local/...` exactly like any other LiteLLM model (same usage accounting,
same errors). The handler only translates: LiteLLM arguments in, `ModelResponse` or
`GenericStreamingChunk`s out, our errors to LiteLLM's exception types (so the proxy maps them to
the right HTTP status and the engine can tell bad requests from transient failures).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import aclosing, closing, contextmanager
from typing import Any, NoReturn

import httpx
import litellm
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import Choices, GenericStreamingChunk, Message, ModelResponse

from composite_llm.local.catalog import get_model
from composite_llm.local.errors import (
    LocalContextOverflow,
    LocalModelError,
    LocalModelNotInstalled,
    LocalRuntimeMissing,
    UnknownLocalModel,
)
from composite_llm.local.params import UnsupportedLocalParam, generation_kwargs, sample_count
from composite_llm.local.runtime import (
    Generation,
    LocalRuntime,
    LocalTimeout,
    StreamEvent,
    default_runtime,
    raise_for_runtime,
)
from composite_llm.timeouts import timeout_seconds

PROVIDER = "local"


def _raise_litellm(exc: Exception, name: str) -> NoReturn:
    """Re-raise one of our errors as the LiteLLM exception a caller (or the proxy) expects."""
    model = f"{PROVIDER}/{name}"
    message = str(exc)
    if isinstance(exc, LocalContextOverflow):
        raise litellm.ContextWindowExceededError(message=message, model=model, llm_provider=PROVIDER) from exc
    if isinstance(exc, (UnknownLocalModel, UnsupportedLocalParam)):
        raise litellm.BadRequestError(message=message, model=model, llm_provider=PROVIDER) from exc
    if isinstance(exc, (LocalModelNotInstalled, LocalRuntimeMissing)):
        raise litellm.NotFoundError(message=message, model=model, llm_provider=PROVIDER) from exc
    if isinstance(exc, LocalTimeout):
        raise litellm.Timeout(message=message, model=model, llm_provider=PROVIDER) from exc
    raise litellm.InternalServerError(message=message, model=model, llm_provider=PROVIDER) from exc


@contextmanager
def _litellm_errors(name: str) -> Iterator[None]:
    """Our errors raised inside the block leave as LiteLLM's exception types (`_raise_litellm`)."""
    try:
        yield
    except LocalModelError as exc:
        _raise_litellm(exc, name)


def _chunk(event: StreamEvent) -> GenericStreamingChunk:
    finished = event.finish_reason is not None
    return GenericStreamingChunk(
        text=event.text,
        is_finished=finished,
        finish_reason=event.finish_reason or "",
        usage=event.usage.openai_counts() if event.usage is not None else None,  # type: ignore[typeddict-item]
        index=0,
        tool_use=None,
        provider_specific_fields=None,
    )


class LocalProvider(CustomLLM):
    """LiteLLM custom provider serving the catalog's GGUF models through llama.cpp, in process."""

    def __init__(self, runtime: LocalRuntime | None = None) -> None:
        super().__init__()
        self._runtime = runtime

    @property
    def runtime(self) -> LocalRuntime:
        return self._runtime or default_runtime()

    @staticmethod
    def _check(model: str, optional_params: dict | None = None, stream: bool = False) -> str:
        """Catalog name for `model` (LiteLLM strips `local/`); bad requests fail before queueing."""
        name = model.removeprefix(f"{PROVIDER}/")
        with _litellm_errors(name):
            spec = get_model(name)
            generation_kwargs(optional_params or {})
            if stream and sample_count(optional_params or {}) > 1:
                raise UnsupportedLocalParam(
                    f"n={sample_count(optional_params or {})} with stream=true: local models stream one choice; "
                    "ask without stream for several choices (they are generated together either way)"
                )
            raise_for_runtime()
        return spec.name

    @staticmethod
    def _fill(model_response: ModelResponse, name: str, generation: Generation) -> ModelResponse:
        model_response.choices = [
            Choices(
                index=choice.index,
                finish_reason=choice.finish_reason,
                message=Message(role="assistant", content=choice.text),
            )
            for choice in generation.choices
        ]
        model_response.model = f"{PROVIDER}/{name}"
        model_response.created = int(time.time())
        model_response.usage = generation.usage.to_litellm()  # type: ignore[attr-defined]
        model_response._hidden_params["response_cost"] = 0.0
        return model_response

    @staticmethod
    def _report_zero_cost(logging_obj: Any) -> None:
        """Tell LiteLLM the cost (0) before it asks, so it never counts tokens to price the call.

        LiteLLM prices a stream as soon as it wraps it, by counting the text with the tokenizer it
        picks for the model name; for some names (any `llama-3`/`llama-2` in it) that tokenizer is
        downloaded from the Hugging Face hub: ~24-56 s of DNS retries per streamed call offline.
        A provider-reported cost short-cuts that (a private attribute, read by the pinned litellm;
        `tests/test_local_models.py` guards it with a socket guard).
        """
        if logging_obj is not None and hasattr(logging_obj, "_provider_reported_cost"):
            logging_obj._provider_reported_cost = 0.0

    # LiteLLM calls the four entry points with keyword arguments only (`custom_chat_llm_router` in
    # litellm.main); the ones the provider reads are named, the rest of its call (api_base, api_key,
    # encoding, headers, client, ...) means nothing to an in-process model and lands in `_`.
    def completion(self, model: str, messages: list, *, model_response: ModelResponse,  # type: ignore[override]
                   optional_params: dict, timeout: float | httpx.Timeout | None = None, **_: Any) -> ModelResponse:
        name = self._check(model, optional_params)
        with _litellm_errors(name):
            generation = self.runtime.complete(name, messages, optional_params, timeout_seconds(timeout))
        return self._fill(model_response, name, generation)

    async def acompletion(self, model: str, messages: list, *, model_response: ModelResponse,  # type: ignore[override]
                          optional_params: dict, timeout: float | httpx.Timeout | None = None,
                          **_: Any) -> ModelResponse:
        name = self._check(model, optional_params)
        with _litellm_errors(name):
            generation = await self.runtime.acomplete(name, messages, optional_params, timeout_seconds(timeout))
        return self._fill(model_response, name, generation)

    def streaming(self, model: str, messages: list, *, optional_params: dict,  # type: ignore[override]
                  logging_obj: Any = None, timeout: float | httpx.Timeout | None = None,
                  **_: Any) -> Iterator[GenericStreamingChunk]:
        """Checks run at call time, not at the first chunk; the cost is reported before LiteLLM wraps the
        stream (it prices it right away). Closing the iterator early stops the generation."""
        name = self._check(model, optional_params, stream=True)
        self._report_zero_cost(logging_obj)
        events = self.runtime.stream(name, messages, optional_params, timeout_seconds(timeout))
        return self._sync_chunks(name, events, logging_obj)

    def astreaming(self, model: str, messages: list, *, optional_params: dict,  # type: ignore[override]
                   logging_obj: Any = None, timeout: float | httpx.Timeout | None = None,
                   **_: Any) -> AsyncIterator[GenericStreamingChunk]:
        """A plain method returning an async generator (LiteLLM only iterates it), for the same reasons as
        `streaming`."""
        name = self._check(model, optional_params, stream=True)
        self._report_zero_cost(logging_obj)
        events = self.runtime.astream(name, messages, optional_params, timeout_seconds(timeout))
        return self._async_chunks(name, events, logging_obj)

    # One chunk loop, in its sync and async spelling: the per-event work (`_event_chunk`), the error
    # mapping (`_litellm_errors`) and the closing of the runtime's stream are shared.
    def _sync_chunks(self, name: str, events: Generator[StreamEvent, None, None],
                     logging_obj: Any) -> Iterator[GenericStreamingChunk]:
        with _litellm_errors(name), closing(events):
            for event in events:
                yield self._event_chunk(event, logging_obj)

    async def _async_chunks(self, name: str, events: AsyncGenerator[StreamEvent, None],
                            logging_obj: Any) -> AsyncIterator[GenericStreamingChunk]:
        with _litellm_errors(name):
            async with aclosing(events):
                async for event in events:
                    yield self._event_chunk(event, logging_obj)

    def _event_chunk(self, event: StreamEvent, logging_obj: Any) -> GenericStreamingChunk:
        if event.finish_reason is not None:
            self._report_zero_cost(logging_obj)
        return _chunk(event)
