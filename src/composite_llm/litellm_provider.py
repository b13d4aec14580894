"""The LiteLLM adapter: `composite/...` models as a custom provider.

Thin on purpose: each entry point builds a CompositeRequest and hands it to the async core in
`service.py`. The async methods run on the caller's loop; the sync ones bridge to a background loop so
fan-out stays parallel. Errors leave as LiteLLM exception types so status codes survive to proxy clients.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any, AsyncIterator, Iterator

from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse, ModelResponseStream

from . import errors, router_members, service
from .bridge import iterate_sync, run_sync
from .errors import CompositeConfigError
from .plugins import load_plugins
from .profiles import REGISTRY, ProfileSource
from .registration import register_provider
from .request import CompositeRequest, build_request
from .response import StreamChunker, fill_model_response
from .timeouts import timeout_seconds
from .trace import Trace

PROVIDER_NAME = "composite"
Chunk = ModelResponseStream | GenericStreamingChunk


def _build(model: str, messages: Any, api_base: Any, api_key: Any, optional_params: Any, litellm_params: Any,
           timeout: Any) -> CompositeRequest:
    try:
        return build_request(model=model, messages=messages, api_base=api_base, api_key=api_key,
                             optional_params=optional_params, litellm_params=litellm_params,
                             timeout=timeout_seconds(timeout))
    except CompositeConfigError as exc:
        raise errors.bad_request(str(exc), model) from None


def _config_errors_as_bad_request(exc: BaseException, model: str) -> BaseException:
    return errors.bad_request(str(exc), model) if isinstance(exc, CompositeConfigError) else exc


class CompositeProvider(CustomLLM):
    """LiteLLM custom provider for `composite/...` model strings."""

    # ------------------------------------------------------------------ non-streaming
    async def acompletion(self, model: str, messages: list, api_base: str | None, custom_prompt_dict: dict,
                          model_response: ModelResponse, print_verbose: Any, encoding: Any, api_key: Any,
                          logging_obj: Any, optional_params: dict, acompletion: Any = None,
                          litellm_params: Any = None, logger_fn: Any = None, headers: Any = None,
                          timeout: Any = None, client: Any = None) -> ModelResponse:
        try:
            request = _build(model, messages, api_base, api_key, optional_params, litellm_params, timeout)
            try:
                result = await service.run(request)
            except CompositeConfigError as exc:
                raise _config_errors_as_bad_request(exc, model) from None
        except Exception as exc:  # noqa: BLE001 - re-raised, marked for OpenAI-compatible clients
            raise errors.for_client(exc)
        return fill_model_response(model_response, result, request.display_model)

    def completion(self, model: str, messages: list, api_base: str | None, custom_prompt_dict: dict,
                   model_response: ModelResponse, print_verbose: Any, encoding: Any, api_key: Any,
                   logging_obj: Any, optional_params: dict, acompletion: Any = None, litellm_params: Any = None,
                   logger_fn: Any = None, headers: Any = None, timeout: Any = None, client: Any = None) -> ModelResponse:
        return run_sync(self.acompletion(model, messages, api_base, custom_prompt_dict, model_response,
                                         print_verbose, encoding, api_key, logging_obj, optional_params,
                                         acompletion, litellm_params, logger_fn, headers, timeout, client))

    # ------------------------------------------------------------------ streaming
    async def astreaming(self, model: str, messages: list, api_base: str | None, custom_prompt_dict: dict,
                         model_response: ModelResponse, print_verbose: Any, encoding: Any, api_key: Any,
                         logging_obj: Any, optional_params: dict, acompletion: Any = None,
                         litellm_params: Any = None, logger_fn: Any = None, headers: Any = None,
                         timeout: Any = None, client: Any = None) -> AsyncIterator[Chunk]:
        try:
            request = _build(model, messages, api_base, api_key, optional_params, litellm_params, timeout)
        except Exception as exc:  # noqa: BLE001
            raise errors.for_client(exc)
        chunker = StreamChunker(request.display_model, request.request_id)

        def report_cost(cost: float) -> None:
            # LiteLLM's streaming cost path reads the provider-reported cost (private attribute, pinned litellm
            # version, guarded by a regression test). Kept current as sub-calls land: the proxy bills a client
            # that disconnects mid-stream from it, and the final chunk may never be sent.
            if logging_obj is not None:
                logging_obj._provider_reported_cost = float(cost)

        try:
            async with aclosing(service.stream(request, on_cost=report_cost)) as items:
                async for item in items:
                    if isinstance(item, Trace):
                        report_cost(item.cost)
                        yield chunker.final(item)
                        return
                    chunk = chunker.piece(item)
                    if chunk is not None:
                        yield chunk
                        # A cancellation point per chunk. The proxy (Starlette under anyio) stops a stream whose
                        # client left by cancelling the consumer task, but anyio skips a task whose awaited future
                        # is already done; with upstream chunks always buffered that is every time, and the
                        # stream ran to its end after the client had gone. A bare yield is always cancellable.
                        await asyncio.sleep(0)
        except CompositeConfigError as exc:
            raise errors.for_client(_config_errors_as_bad_request(exc, model)) from None
        except Exception as exc:  # noqa: BLE001
            raise errors.for_client(exc)

    def streaming(self, model: str, messages: list, api_base: str | None, custom_prompt_dict: dict,
                  model_response: ModelResponse, print_verbose: Any, encoding: Any, api_key: Any,
                  logging_obj: Any, optional_params: dict, acompletion: Any = None, litellm_params: Any = None,
                  logger_fn: Any = None, headers: Any = None, timeout: Any = None, client: Any = None) -> Iterator[Chunk]:
        return iterate_sync(self.astreaming(model, messages, api_base, custom_prompt_dict, model_response,
                                            print_verbose, encoding, api_key, logging_obj, optional_params,
                                            acompletion, litellm_params, logger_fn, headers, timeout, client))


COMPOSITE_PROVIDER = CompositeProvider()


def register_composite_provider(profiles: ProfileSource | None = None, router: Any = None) -> CompositeProvider:
    """Make `composite/...` models callable through LiteLLM. Idempotent; keeps other custom providers.

    `profiles`: a YAML file, a folder of them or a dict document, searched before
    `$COMPOSITE_LLM_PROFILES`, the proxy config and `./profiles/`. Validated now: errors raise here.
    `router`: a `litellm.Router`; nodes written `router/<model_name>` then run through it (its deployment
    choice, rpm/tpm limits, cooldowns and fallbacks). Inside the LiteLLM proxy the proxy's own router is
    used without this. Set before `profiles` are validated, so unknown groups are reported here.
    """
    if router is not None:
        router_members.set_router(router)
    if profiles is not None:
        REGISTRY.set_explicit(profiles)
    register_provider(PROVIDER_NAME, COMPOSITE_PROVIDER)
    load_plugins(rerun=True)  # the satellites (CLI agents' strategy, local models' provider) and installed plugins
    return COMPOSITE_PROVIDER
