"""From what LiteLLM hands the provider to a validated, ready-to-run composite request.

Inline parameters arrive three ways and are merged in this order (later wins): plain kwargs
(`proposers=[...]`), a nested `optional_params={...}` kwarg (composite_llm_research's form), and `extra_body`. OpenAI
parameters are split into those every sub-call gets (temperature, seed, ...) and those only the final
stage gets (tools, response_format, max_tokens, stop, ...). Anything else is an error that names it.

Under the LiteLLM proxy, parameters found in the client's request body may not change the topology or
redirect sub-calls (api_base/api_key) unless the operator set `allow_request_overrides: true`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .errors import CompositeConfigError
from .messages import validate_messages
from .model_string import ModelTarget, parse_model_string
from .profiles import DEFAULT_MAX_INPUT_BYTES, REGISTRY, DocumentSettings, LoadedProfile, UnknownProfileError
from .schema import ProviderBundle, validation_problems
from .strategies import Strategy, Topology, get_strategy
from .trace import Trace

logger = logging.getLogger("composite_llm")

# Sampling parameters: every sub-call gets them unless its node sets its own.
MEMBER_PARAMS = frozenset({
    "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user",
    "reasoning_effort", "thinking", "top_k", "safety_identifier",
})
# Parameters that shape the answer the client receives: only the final stage gets them.
FINAL_PARAMS = frozenset({
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "max_tokens", "max_completion_tokens",
    "stop", "functions", "function_call", "modalities", "audio", "prediction",
    "web_search_options", "verbosity",
})
# Handled by the provider itself.
# `max_retries`: the LiteLLM Router sends max_retries=0 with every call (so every proxy request carries it);
# sub-call retries are the engine's own (settings.retries).
TRANSPORT_PARAMS = frozenset({"stream", "stream_options", "n", "max_retries"})
# Provider-side hints that change no answer, accepted and not forwarded: members are of many providers,
# most of which refuse them. `prompt_cache_key` is what LiteLLM's Anthropic Messages -> chat conversion adds
# to every request (Claude Code pointed at a composite through the proxy sends it).
DROPPED_HINTS = frozenset({"prompt_cache_key", "prompt_cache_retention"})
# Accepted only when off: a composite answer has no token log-probabilities to return (the final text may
# come from a vote, a CLI agent or a stream of several models), and silently dropping them would lie.
REFUSED_WHEN_SET = ("logprobs", "top_logprobs")
# Standard OpenAI parameters with an obviously invalid value are refused before any sub-call: otherwise
# every member runs, fails with the same 400, and the request costs a whole fan-out (issue 14.6).
_NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0), "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0),
}
_POSITIVE_INTS = ("max_tokens", "max_completion_tokens")
INTERNAL_PARAMS = frozenset({"composite_depth", "composite_stack"})
NESTED_KEYS = ("optional_params", "extra_body")
ROUTING_KEYS = frozenset({"api_base", "api_key", "base_url"})


@dataclass
class CompositeRequest:
    """Everything a strategy run needs, validated."""

    target: ModelTarget
    display_model: str
    strategy: Strategy[Any]
    topology: Topology
    providers: dict[str, ProviderBundle]
    messages: list[dict[str, Any]]
    shared_params: dict[str, Any]
    final_params: dict[str, Any]
    defaults: dict[str, Any]
    timeout: float | None
    depth: int = 0
    stack: tuple[str, ...] = ()
    profile: str | None = None
    document_settings: DocumentSettings = field(default_factory=DocumentSettings)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    notes: list[str] = field(default_factory=list)

    def new_trace(self) -> Trace:
        return Trace(request_id=self.request_id, model=self.display_model, strategy=self.strategy.name,
                     profile=self.profile, notes=list(self.notes))


def _flatten(optional_params: dict[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in optional_params.items() if k not in NESTED_KEYS}
    for key in NESTED_KEYS:
        nested = optional_params.get(key)
        if nested is None:
            continue
        if not isinstance(nested, dict):
            raise CompositeConfigError(f"{key} must be a mapping, got {type(nested).__name__}")
        merged.update(nested)
    return merged


def _client_keys(litellm_params: dict[str, Any]) -> set[str] | None:
    """Keys the proxy client sent in its request body; None when not running behind the proxy."""
    proxy_request = (litellm_params or {}).get("proxy_server_request")
    if not proxy_request:
        return None
    body = proxy_request.get("body") if isinstance(proxy_request, dict) else None
    if not isinstance(body, dict):
        return set()
    keys = set(body)
    # The proxy keeps credentials (api_key, headers) out of its body snapshot and lists their names here.
    keys |= set(proxy_request.get("credential_fields") or ())
    for key in NESTED_KEYS:
        if isinstance(body.get(key), dict):
            keys |= set(body[key])
    return keys


def build_request(
    *,
    model: str,
    messages: Any,
    api_base: str | None,
    api_key: str | None,
    optional_params: dict[str, Any] | None,
    litellm_params: dict[str, Any] | None,
    timeout: float | None,
) -> CompositeRequest:
    """Validate and resolve a composite request (raises CompositeConfigError with a clear message)."""
    target = parse_model_string(model)
    params = _flatten(dict(optional_params or {}))
    depth = params.pop("composite_depth", 0) or 0
    stack = params.pop("composite_stack", None) or []
    if isinstance(depth, bool) or not isinstance(depth, int) or not isinstance(stack, list) \
            or not all(isinstance(name, str) for name in stack):
        raise CompositeConfigError(f"{target.display_name}: composite_depth and composite_stack are set by nested "
                                   "composite calls, not by requests")
    stack = tuple(stack)
    try:
        checked_messages = validate_messages(messages)
    except ValueError as exc:
        raise CompositeConfigError(f"{target.display_name}: {exc}") from None
    if params.get("n") not in (None, 1):
        raise CompositeConfigError(f"{target.display_name}: n={params['n']} is not supported (one answer per request)")
    _check_standard_params(target.display_name, params)

    snapshot = REGISTRY.snapshot()
    client_keys = _client_keys(litellm_params or {})
    if target.profile is not None:
        try:
            profile = snapshot.get(target.profile)
        except UnknownProfileError as exc:
            if client_keys is None:
                raise
            logger.warning("composite_llm: %s", exc)  # the operator's view: every profile and source searched
            raise CompositeConfigError(exc.for_proxy_client(_proxy_callable_names(exc.known))) from None
        strategy, providers = profile.strategy, profile.providers
    else:
        profile = None
        strategy, providers = get_strategy(target.strategy or ""), {}

    inline = {k: params.pop(k) for k in list(params) if k in strategy.inline_keys}
    if inline.get("settings") is not None and not isinstance(inline["settings"], dict):
        raise CompositeConfigError(f"{target.display_name}: settings must be a mapping of setting -> value, got "
                                   f"{type(inline['settings']).__name__}")
    shared = {k: params.pop(k) for k in list(params) if k in MEMBER_PARAMS}
    final = {k: params.pop(k) for k in list(params) if k in FINAL_PARAMS}
    for key in (*TRANSPORT_PARAMS, *DROPPED_HINTS, *REFUSED_WHEN_SET):  # the refused ones are off here
        params.pop(key, None)
    if params:
        accepted = sorted(strategy.inline_keys | MEMBER_PARAMS | FINAL_PARAMS)
        raise CompositeConfigError(
            f"{target.display_name}: unknown parameter(s) {', '.join(sorted(params))} for strategy "
            f"{strategy.name!r}; accepted: {', '.join(accepted)}"
        )

    document_settings = snapshot.settings
    _check_input_size(target.display_name, checked_messages,
                      DEFAULT_MAX_INPUT_BYTES if document_settings.max_input_bytes is None
                      else document_settings.max_input_bytes)
    if client_keys is not None and not document_settings.allow_request_overrides:
        blocked = sorted((set(inline) | ROUTING_KEYS | INTERNAL_PARAMS) & client_keys)
        if blocked:
            raise CompositeConfigError(
                f"{target.display_name}: request parameter(s) {', '.join(blocked)} may not change the topology or "
                "redirect sub-calls through the proxy (set general_settings.composite_llm.allow_request_overrides: "
                "true to allow it)"
            )

    topology = _topology(target, strategy, profile, inline)
    return CompositeRequest(
        target=target,
        display_model=target.display_name,
        strategy=strategy,
        topology=topology,
        providers=providers,
        messages=checked_messages,
        shared_params=shared,
        final_params=final,
        defaults={"api_base": api_base, "api_key": api_key},
        timeout=float(timeout) if timeout else None,
        depth=depth,
        stack=(*stack, target.display_name),
        profile=target.profile,
        document_settings=document_settings,
        notes=[profile.stale] if profile is not None and profile.stale else [],
    )


def _check_standard_params(name: str, params: dict[str, Any]) -> None:
    """Refuse standard OpenAI parameters whose value no upstream accepts, before any sub-call."""
    for key in REFUSED_WHEN_SET:
        if params.get(key) not in (None, False, 0):
            raise CompositeConfigError(
                f"{name}: {key} is not supported by composite models (the answer is built from several "
                "calls, so there are no token log-probabilities to return); leave it unset")
    for key, (low, high) in _NUMBER_RANGES.items():
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise CompositeConfigError(f"{name}: {key}={value!r} is invalid: a number from {low:g} to {high:g}")
    for key in _POSITIVE_INTS:
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CompositeConfigError(f"{name}: {key}={value!r} is invalid: a whole number of at least 1")
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise CompositeConfigError(f"{name}: seed={seed!r} is invalid: a whole number")
    stop = params.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise CompositeConfigError(f"{name}: stop must be a string or a list of strings, got {type(stop).__name__}")


def input_size(messages: list[dict[str, Any]]) -> int:
    """Bytes of the conversation as it would be sent upstream (JSON, UTF-8): what each sub-call carries."""
    return len(json.dumps(messages, ensure_ascii=False, default=str).encode("utf-8"))


def _check_input_size(name: str, messages: list[dict[str, Any]], limit: int | None) -> None:
    """A composite sends the conversation to every member: cap it per request (setting `max_input_bytes`)."""
    if not limit:
        return
    size = input_size(messages)
    if size > limit:
        raise CompositeConfigError(
            f"{name}: the conversation is {size:,} bytes, over this composite's input cap of {limit:,} bytes "
            "(every member would receive all of it); shorten it or raise max_input_bytes in the profile "
            "document / general_settings.composite_llm")


def _proxy_callable_names(profiles: list[str]) -> list[str] | None:
    """The composite model names a proxy client can call: public names of composite deployments (plus
    `composite/profile/<name>` for every profile when a wildcard deployment serves them). None when the
    proxy's router cannot be read."""
    proxy = sys.modules.get("litellm.proxy.proxy_server")
    router = getattr(proxy, "llm_router", None) if proxy is not None else None
    deployments = getattr(router, "model_list", None)
    if not isinstance(deployments, list):
        return None
    names: set[str] = set()
    for deployment in deployments:
        if not isinstance(deployment, dict):
            continue
        model = str((deployment.get("litellm_params") or {}).get("model") or "")
        public = str(deployment.get("model_name") or "")
        if not model.startswith("composite/") or not public:
            continue
        if "*" in public or "*" in model:
            names.update(f"composite/profile/{name}" for name in profiles)
        elif not model.startswith("composite/profile/") or model.removeprefix("composite/profile/") in profiles:
            names.add(public)  # a deployment naming a missing profile is not callable either
    return sorted(names)


def _topology(target: ModelTarget, strategy: Strategy[Any], profile: LoadedProfile | None, inline: dict[str, Any]
              ) -> Topology:
    """The validated topology: the profile's (with inline overrides) or one built from inline params."""
    if profile is not None:
        if not inline:
            return profile.topology
        data = profile.topology.model_dump(exclude_unset=True)
        overrides = dict(inline)
        settings = {**data.get("settings", {}), **(overrides.pop("settings", None) or {})}
        settings_field = strategy.topology_model.model_fields.get("settings")
        settings_fields = getattr(settings_field.annotation, "model_fields", {}) if settings_field else {}
        settings.update({k: overrides.pop(k) for k in list(overrides) if k in settings_fields})
        data.update(overrides)
        data["settings"] = settings
        where = f"profile {profile.name!r} with request overrides"
    else:
        data = strategy.topology_from_inline(target.final_model or "", inline)
        if target.cli_spec:
            data.setdefault("cli", target.cli_spec)
        where = f"{target.display_name} inline parameters"
    try:
        return strategy.topology_model.model_validate(data)
    except ValidationError as exc:
        raise CompositeConfigError(f"invalid topology for {where}:\n  - "
                                   + "\n  - ".join(validation_problems(exc, "topology"))) from None
