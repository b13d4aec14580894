"""One place that turns composite failures into LiteLLM's own exception types.

LiteLLM wraps any foreign exception raised inside a custom handler as APIConnectionError, which hides
the status code from proxy clients. Raising LiteLLM's types keeps 400 / 429 / 503 meaningful end to end.
`CompositeConfigError` is the library-level error for profile problems found outside a request
(loading, registration); at request time it becomes a BadRequestError with the same message.

Client retries: OpenAI-compatible SDKs (openai, LangChain, ...) retry 408/429/5xx twice by default, and
a composite error already cost a whole fan-out with per-sub-call retries inside it. Every error leaving
the provider carries `x-should-retry: false` (the openai SDKs obey it; the LiteLLM proxy copies an
exception's `headers` onto the HTTP error response). The one exception is a 429 from a request in which
no sub-call succeeded: nothing was paid, and the client may retry after `Retry-After`.
"""

from __future__ import annotations

import math

import litellm

PROVIDER = "composite"
SHOULD_RETRY_HEADER = "x-should-retry"


class CompositeConfigError(ValueError):
    """A profile, provider bundle or model string is invalid. The message names where and what."""


def bad_request(message: str, model: str = "") -> litellm.BadRequestError:
    return litellm.BadRequestError(message=message, model=model, llm_provider=PROVIDER)


def refused_upstream(message: str, model: str = "") -> litellm.BadRequestError:
    """A 400 because every member's upstream refused the request (not a configuration error: a composite
    nesting this one records it as a failed member and goes on with its others)."""
    exc = bad_request(message, model)
    exc.composite_refused_upstream = True  # type: ignore[attr-defined]
    return exc


def is_refused_upstream(exc: BaseException) -> bool:
    return bool(getattr(exc, "composite_refused_upstream", False))


def rate_limited(message: str, model: str = "", *, client_may_retry: bool = False,
                 retry_after: float | None = None) -> litellm.RateLimitError:
    """A 429. `client_may_retry`: nothing was paid in this request, so a client retry (after `retry_after`
    seconds, the longest Retry-After the upstreams asked for) costs nothing but rate-limited attempts."""
    exc = litellm.RateLimitError(message=message, llm_provider=PROVIDER, model=model)
    if client_may_retry:
        headers = {SHOULD_RETRY_HEADER: "true"}
        if retry_after is not None and retry_after > 0:
            headers["retry-after"] = str(math.ceil(retry_after))
        exc.headers = headers
    return exc


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


def for_client(exc: BaseException) -> BaseException:
    """Mark an error leaving the provider as not to be retried by the client (unless it already says
    otherwise, see `rate_limited`). Errors without a status code are left alone: LiteLLM wraps them anew."""
    if status_code_of(exc) is None:
        return exc
    headers = dict(getattr(exc, "headers", None) or {})
    headers.setdefault(SHOULD_RETRY_HEADER, "false")
    try:
        exc.headers = headers  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - an exception type with a read-only `headers`
        pass
    return exc
