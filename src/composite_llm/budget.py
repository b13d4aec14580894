"""How many leaf sub-calls a topology makes, counted before any call runs.

A request whose topology needs more than `settings.max_sub_calls` upstream calls (1,000 proposers, three
levels of eight-way nesting) is refused with a 400 before it costs anything. The count is an upper bound
on the ordinary path: every member, review, round and judge call, plus one final call; fallbacks and
retries are not counted (they run only on failures, and retries are capped per sub-call). Each strategy
counts its own topology (`count_sub_calls(topology, node)`, an optional member of the Strategy protocol);
one without it counts one call per model of `member_models`. Nested
composites count with their own sub-calls: profiles are looked up, inline ones built from their params;
one that cannot be resolved counts as one call, and the engine's run-time count still stops it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import CompositeConfigError
from .schema import DEFAULT_MAX_SUB_CALLS, NodeConfig
from .strategies.base import Strategy, Topology

# A composite node resolved to what it runs, or None when that is not knowable before the call.
Resolver = Callable[[NodeConfig], tuple[Strategy[Any], Topology] | None]

def max_sub_calls_of(topology: Any) -> int:
    settings = getattr(topology, "settings", None)
    return int(getattr(settings, "max_sub_calls", None) or DEFAULT_MAX_SUB_CALLS)


def count_sub_calls(strategy: Strategy[Any], topology: Topology, resolve: Resolver, *, depth: int = 0) -> int:
    """Leaf sub-calls of one run of `topology` (see the module docstring). `resolve` turns a composite node
    into its (strategy, topology), or None when that is not knowable before the call."""
    def node(n: NodeConfig) -> int:
        if not n.is_composite or depth >= 8:
            return 1
        nested = resolve(n)
        return 1 if nested is None else count_sub_calls(*nested, resolve, depth=depth + 1)

    counter = getattr(strategy, "count_sub_calls", None)  # optional member of the Strategy protocol
    if counter is None:  # a strategy that does not say: one call per model it names, nested ones counted
        return max(1, sum(node(NodeConfig(model=model)) for model in strategy.member_models(topology)))
    return int(counter(topology, node))


def nested_resolver(snapshot: Callable[[], Any]) -> Resolver:
    """Resolve `composite/profile/<name>` through a profile snapshot (`snapshot()`), and inline composites
    (`composite/<strategy>/<model>` with topology keys in the node's params) by building their topology."""
    from .model_string import parse_model_string
    from .strategies import get_strategy

    taken: list[Any] = []

    def resolve(node: NodeConfig) -> tuple[Strategy[Any], Topology] | None:
        try:
            target = parse_model_string(node.model)
            if target.profile is not None:
                if not taken:
                    taken.append(snapshot())  # one scan of the profile sources, and only when needed
                profile = taken[0].get(target.profile)
                return profile.strategy, profile.topology
            strategy = get_strategy(target.strategy or "")
            inline = {k: v for k, v in node.params.items() if k in strategy.inline_keys}
            data = strategy.topology_from_inline(target.final_model or "", inline)
            return strategy, strategy.topology_model.model_validate(data)
        except (CompositeConfigError, ValueError, TypeError, AttributeError):
            return None  # the nested request reports its own problem when it runs

    return resolve


def check_budget(strategy: Strategy[Any], topology: Topology, where: str, resolve: Resolver) -> None:
    """Refuse a topology whose sub-calls exceed its `settings.max_sub_calls` (CompositeConfigError -> 400)."""
    limit = max_sub_calls_of(topology)
    needed = count_sub_calls(strategy, topology, resolve)
    if needed > limit:
        raise CompositeConfigError(
            f"{where}: this topology makes {needed} sub-calls per request (nested composites included), more "
            f"than settings.max_sub_calls={limit}; make it smaller or raise max_sub_calls")
