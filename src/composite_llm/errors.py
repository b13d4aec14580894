"""One place that turns composite failures into LiteLLM's own exception types.

LiteLLM wraps any foreign exception raised inside a custom handler as APIConnectionError, which hides
the status code from proxy clients. Raising LiteLLM's types keeps 400 / 429 / 503 meaningful end to end.
`CompositeConfigError` is the library-level error for profile problems found outside a request
(loading, registration); at request time it becomes a BadRequestError with the same message.
"""

from __future__ import annotations

import litellm

PROVIDER = "composite"


class CompositeConfigError(ValueError):
    """A profile, provider bundle or model string is invalid. The message names where and what."""


def bad_request(message: str, model: str = "") -> litellm.BadRequestError:
    return litellm.BadRequestError(message=message, model=model, llm_provider=PROVIDER)


def rate_limited(message: str, model: str = "") -> litellm.RateLimitError:
    return litellm.RateLimitError(message=message, llm_provider=PROVIDER, model=model)


def unavailable(message: str, model: str = "") -> litellm.ServiceUnavailableError:
    return litellm.ServiceUnavailableError(message=message, llm_provider=PROVIDER, model=model)


def timed_out(message: str, model: str = "") -> litellm.Timeout:
    return litellm.Timeout(message=message, model=model, llm_provider=PROVIDER)


def status_code_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any (LiteLLM and OpenAI errors do)."""
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Transient failures worth one more attempt of the same sub-call."""
    if isinstance(exc, (litellm.RateLimitError, litellm.APIConnectionError, litellm.InternalServerError,
                        litellm.ServiceUnavailableError)):
        return True
    code = status_code_of(exc)
    return code is not None and (code == 429 or code >= 500)


def upstream_failed(message: str, model: str = "", status_code: int = 502) -> litellm.APIError:
    """A backend (e.g. a CLI agent) ran but failed: a bad-gateway style error."""
    return litellm.APIError(status_code=status_code, message=message, llm_provider=PROVIDER, model=model)
