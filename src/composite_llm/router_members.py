"""Members that are model groups of a LiteLLM Router: `router/<model_name>`.

A node whose model is `router/gpt-4o` is not sent to a provider directly: its sub-call goes through a
LiteLLM `Router` as `router.acompletion(model="gpt-4o", ...)`, so the group's deployment choice, rpm/tpm
limits, cooldowns, fallbacks and Redis-shared state apply to composite members exactly as they do to the
proxy's own requests. Which Router:

1. the one given to `composite_llm.register(router=litellm.Router(...))` (SDK users);
2. inside the LiteLLM proxy, the proxy's own `litellm.proxy.proxy_server.llm_router` (read from
   `sys.modules` only when already imported: importing the proxy costs seconds).

Spend stays single: sub-calls keep `no-log` (the composite request is logged once with the summed cost).
But in litellm 1.108.7 `no-log` also silences the Router's own bookkeeping, which runs as ordinary logging
callbacks: a failing deployment is never cooled down and the group's tpm/rpm usage never counted. Only
`CustomLogger` callbacks whose class name contains `_PROXY_` run for no-log calls (LiteLLM's rule for its
own proxy bookkeeping), so one `_PROXY_CompositeRouterBookkeeping` callback is registered: it hands the
success/failure events of composite sub-calls (and only those, found by a metadata token) back to the
Router that made them, and logs nothing anywhere.
"""

from __future__ import annotations

import re
import sys
import threading
import uuid
import weakref
from typing import Any, Awaitable, Callable, Iterable, Sequence

from .errors import CompositeConfigError

ROUTER_PREFIX = "router/"
# Metadata keys of a composite router sub-call: which router's bookkeeping it belongs to, and its parent.
CHILD_MARKER = "composite_llm_child"
PARENT_KEY = "composite_llm_parent_request_id"

_explicit_router: Any = None
_lock = threading.Lock()


# --------------------------------------------------------------------------- syntax
def is_router_model(model: str) -> bool:
    return model.startswith(ROUTER_PREFIX)


def group_of(model: str) -> str:
    """`router/gpt-4o` -> `gpt-4o` (the group name may itself contain slashes)."""
    return model[len(ROUTER_PREFIX):]


# --------------------------------------------------------------------------- which router
def set_router(router: Any) -> None:
    """Use `router` for `router/...` members (None forgets it). Profile caches are dropped so documents are
    validated again against the new router's groups."""
    global _explicit_router
    if router is not None and not callable(getattr(router, "acompletion", None)):
        raise CompositeConfigError(f"router must be a litellm.Router, got {type(router).__name__}")
    with _lock:
        _explicit_router = router
    from . import profiles  # noqa: PLC0415 - profiles imports this module

    profiles.forget_cached_documents()


def current_router() -> Any:
    """The explicit router, else the LiteLLM proxy's own (only if the proxy is already imported), else None."""
    if _explicit_router is not None:
        return _explicit_router
    proxy = sys.modules.get("litellm.proxy.proxy_server")
    return getattr(proxy, "llm_router", None) if proxy is not None else None


def _deployments(router: Any) -> list[dict[str, Any]]:
    try:
        return list(router.get_model_list() or [])
    except Exception:  # noqa: BLE001 - a router without a model list has no groups
        return list(getattr(router, "model_list", None) or [])


def known_groups(router: Any) -> list[str]:
    """Every model group (and group alias) the router serves."""
    names = {str(d.get("model_name")) for d in _deployments(router) if d.get("model_name")}
    names |= set((getattr(router, "model_group_alias", None) or {}).keys())
    return sorted(names)


def composite_models_of(router: Any, group: str) -> list[str]:
    """The `composite/...` models among a group's deployments (a group may serve a composite)."""
    models = []
    for deployment in _deployments(router):
        if deployment.get("model_name") == group:
            model = str((deployment.get("litellm_params") or {}).get("model") or "")
            if model.startswith("composite/"):
                models.append(model)
    return models


def _groups_text(groups: Sequence[str]) -> str:
    return ", ".join(groups) or "none"


def unknown_group_problem(router: Any, group: str) -> str | None:
    groups = known_groups(router)
    if group in groups:
        return None
    return f"router model group {group!r} does not exist (the router's groups: {_groups_text(groups)})"


# --------------------------------------------------------------------------- validation
def check_profile(name: str, nodes: Iterable[Any]) -> list[str]:
    """Load-time problems of one profile's `router/...` nodes, when a router is known (else none: the
    groups are checked again when the node runs). A group that serves this very profile is a cycle."""
    router = current_router()
    if router is None:
        return []
    problems = []
    own = f"composite/profile/{name}"
    for node in nodes:
        if not is_router_model(node.model):
            continue
        group = group_of(node.model)
        if not group:
            problems.append(f"profile {name!r}: node {node.label!r}: `router/` needs a model group name")
            continue
        problem = unknown_group_problem(router, group)
        if problem:
            problems.append(f"profile {name!r}: node {node.label!r}: {problem}")
        elif own in composite_models_of(router, group):
            problems.append(f"profile {name!r}: node {node.label!r}: composite cycle: {own} -> {node.model} -> {own}")
    return problems


def check_call(model: str, *, stack: Sequence[str], where: str) -> list[str]:
    """At plan time: the router exists, the group exists, and it does not lead back into the stack.
    Returns the composite models the group serves (the call is then a nested composite)."""
    router = current_router()
    if router is None:
        raise CompositeConfigError(
            f"{where}: {model!r} names a LiteLLM Router model group, but there is no router: inside the LiteLLM "
            "proxy it is the proxy's model_list; in Python pass composite_llm.register(router=litellm.Router(...))"
        )
    group = group_of(model)
    problem = unknown_group_problem(router, group) if group else "`router/` needs a model group name"
    if problem:
        raise CompositeConfigError(f"{where}: {problem}")
    composites = composite_models_of(router, group)
    for inner in composites:
        if inner in stack:
            chain = " -> ".join([*stack, model, inner])
            raise CompositeConfigError(f"composite cycle: {chain}")
    return composites


# --------------------------------------------------------------------------- the call
def acompletion_for(model: str, *, request_id: str, depth: int, stack: Sequence[str]
                    ) -> Callable[..., Awaitable[Any]]:
    """The function the engine awaits instead of `litellm.acompletion` for a `router/...` node: the Router's
    `acompletion` with the group as model and the child marker in the metadata. A group serving composites
    gets `composite_depth`/`composite_stack` so nesting depth and cycles are checked as for `composite/`."""
    router = current_router()
    if router is None:  # planned with a router that has gone since: say so instead of a KeyError
        raise CompositeConfigError(f"{model!r}: the LiteLLM Router is no longer registered")
    token = ensure_bookkeeping(router)
    group = group_of(model)
    nested = bool(composite_models_of(router, group))
    import litellm  # noqa: PLC0415 - the engine has imported it already

    async def call(**kwargs: Any) -> Any:
        kwargs["model"] = group
        metadata = dict(kwargs.get("metadata") or {})
        metadata.update({CHILD_MARKER: token, PARENT_KEY: request_id})
        kwargs["metadata"] = metadata
        if not nested:
            return await router.acompletion(**kwargs)
        kwargs["composite_depth"] = depth + 1
        kwargs["composite_stack"] = list(stack)
        try:
            return await router.acompletion(**kwargs)
        except litellm.BadRequestError as exc:
            # A nested composite answers 400 only for a configuration problem (cycle, depth, bad profile):
            # the request is misconfigured, not degraded (as for `composite/` members in the engine).
            reason = re.sub(r"^litellm\.\w+: ", "", str(exc))
            reason = re.sub(r"\s*LiteLLM: model group .*$", "", reason, flags=re.S)
            raise CompositeConfigError(reason) from None

    return call


# --------------------------------------------------------------------------- router bookkeeping under no-log
def ensure_bookkeeping(router: Any) -> str:
    """Register `router` with the (single, process-wide) bookkeeping callback; returns the token its
    sub-calls carry in their metadata. LiteLLM's callback manager keeps one callback per class, so one
    instance serves every router."""
    global _bookkeeper
    with _lock:
        token = _tokens.get(router)
        if token is None:
            token = uuid.uuid4().hex
            _tokens[router] = token
            _routers[token] = weakref.ref(router)
        if _bookkeeper is None:
            import litellm  # noqa: PLC0415 - only needed once a router member runs

            _bookkeeper = _make_bookkeeper()
            litellm.logging_callback_manager.add_litellm_callback(_bookkeeper)
        return token


_tokens: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
_routers: dict[str, "weakref.ref[Any]"] = {}
_bookkeeper: Any = None


def _router_of(kwargs: dict[str, Any]) -> Any:
    """The router whose composite sub-call this event is (None for every other call)."""
    params = kwargs.get("litellm_params") or {}
    metadata = params.get("metadata") or {}
    token = metadata.get(CHILD_MARKER)
    if params.get("no-log") is not True or not isinstance(token, str):
        return None
    ref = _routers.get(token)
    return ref() if ref is not None else None


def _owned_callbacks(router: Any, lists: Iterable[Any]) -> list[Any]:
    """Callbacks of `router` itself found in LiteLLM's global lists: its bound methods and its routing
    strategy's selector (a CustomLogger sharing the router's cache)."""
    found: list[Any] = []
    for callback in (c for group in lists for c in (group or [])):
        owner = getattr(callback, "__self__", None)
        if owner is router or (owner is None and getattr(callback, "router_cache", None) is getattr(router, "cache", 0)):
            if not any(callback is seen or callback == seen for seen in found):
                found.append(callback)
    return found


def _make_bookkeeper() -> Any:
    import litellm  # noqa: PLC0415
    from litellm.integrations.custom_logger import CustomLogger  # noqa: PLC0415

    class _PROXY_CompositeRouterBookkeeping(CustomLogger):  # noqa: N801 - the name is LiteLLM's no-log rule
        """Runs a Router's own success/failure callbacks for composite sub-calls made with `no-log`."""

        async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            owner = _router_of(kwargs)
            if owner is None:
                return
            for callback in _owned_callbacks(owner, (litellm._async_success_callback, litellm.callbacks)):
                await _run(callback, "async_log_success_event", kwargs, response_obj, start_time, end_time)

        async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            owner = _router_of(kwargs)
            if owner is None:
                return
            lists = (litellm._async_failure_callback, litellm.failure_callback, litellm.callbacks)
            for callback in _owned_callbacks(owner, lists):
                await _run(callback, "async_log_failure_event", kwargs, response_obj, start_time, end_time)

    return _PROXY_CompositeRouterBookkeeping()


async def _run(callback: Any, method: str, *args: Any) -> None:
    """Call one router callback the way LiteLLM would; its errors stay inside (as in LiteLLM's loop)."""
    import inspect  # noqa: PLC0415

    try:
        target = getattr(callback, method, None) if not inspect.ismethod(callback) else callback
        if target is None:
            return
        result = target(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: BLE001 - bookkeeping must never fail the member's answer
        import logging  # noqa: PLC0415

        logging.getLogger("composite_llm").debug("router bookkeeping callback failed", exc_info=True)
