"""How many leaf sub-calls a topology makes, counted before any call runs.

A request whose topology needs more than `settings.max_sub_calls` upstream calls (1,000 proposers, three
levels of eight-way nesting) is refused with a 400 before it costs anything. The count is an upper bound
on the ordinary path: every member, review, round and judge call, plus one final call; fallbacks and
retries are not counted (they run only on failures, and retries are capped per sub-call). Nested
composites count with their own sub-calls: profiles are looked up, inline ones built from their params;
one that cannot be resolved counts as one call, and the engine's run-time count still stops it.
"""

from __future__ import annotations

from typing import Any, Callable

from .errors import CompositeConfigError
from .schema import DEFAULT_MAX_SUB_CALLS, NodeConfig
from .strategies.base import Strategy, Topology

# A composite node resolved to what it runs, or None when that is not knowable before the call.
Resolver = Callable[[NodeConfig], tuple[Strategy[Any], Topology] | None]

# strategy name -> count of one topology, given a counter for a single node
Counter = Callable[[Any, Callable[[NodeConfig], int]], int]


def _moa(t: Any, node: Callable[[NodeConfig], int]) -> int:
    return sum(node(n) for layer in t.all_layers for n in layer) + node(t.aggregator)


def _council(t: Any, node: Callable[[NodeConfig], int]) -> int:
    reviewers = t.reviewers if t.reviewers is not None else t.council
    return sum(node(n) for n in t.council) + sum(node(n) for n in reviewers) + node(t.chairman)


def _debate(t: Any, node: Callable[[NodeConfig], int]) -> int:
    final = node(t.aggregator) if t.aggregator is not None else 0
    return sum(node(n) for n in t.members) * (t.rounds + 1) + final


def _self_consistency(t: Any, node: Callable[[NodeConfig], int]) -> int:
    judge = node(t.judge) if t.judge is not None else 0
    return sum(node(n) for n in t.sample_nodes()) + judge


def _best_of_n(t: Any, node: Callable[[NodeConfig], int]) -> int:
    n = len(t.candidates)
    s = t.settings
    judged = n if s.mode == "pointwise" else (n - 1) * (2 if s.both_orders else 1)
    return sum(node(c) for c in t.candidates) + judged * node(t.judge) if n > 1 else node(t.candidates[0])


COUNTERS: dict[str, Counter] = {
    "moa": _moa,
    "council": _council,
    "debate": _debate,
    "self_consistency": _self_consistency,
    "best_of_n": _best_of_n,
}


def max_sub_calls_of(topology: Any) -> int:
    settings = getattr(topology, "settings", None)
    return int(getattr(settings, "max_sub_calls", None) or DEFAULT_MAX_SUB_CALLS)


def count_sub_calls(strategy: Strategy[Any], topology: Topology, resolve: Resolver, *, depth: int = 0) -> int:
    """Leaf sub-calls of one run of `topology` (see the module docstring). `resolve` turns a composite node
    into its (strategy, topology), or None when that is not knowable before the call."""
    counter = COUNTERS.get(strategy.name)

    def node(n: NodeConfig) -> int:
        if not n.is_composite or depth >= 8:
            return 1
        nested = resolve(n)
        return 1 if nested is None else count_sub_calls(*nested, resolve, depth=depth + 1)

    if counter is None:  # a strategy with no count here (a CLI agent): one call per node it names
        return max(1, len(strategy.member_models(topology)))
    return counter(topology, node)


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
