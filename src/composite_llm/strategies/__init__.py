"""The strategy registry: name -> strategy object. Names match ignoring '-' versus '_'.

A strategy is checked against the `Strategy` protocol when it is registered: a third-party strategy with a
missing or mistyped member fails here, naming what is wrong, instead of at its first request.
"""

from __future__ import annotations

from typing import Any

from ..errors import CompositeConfigError
from ..model_string import canonical_strategy_name
from .base import FinalCall, FinalRunner, FinalStep, FinalText, Strategy, Topology, strategy_problems
from .best_of_n import BestOfNStrategy
from .cascade import CascadeStrategy
from .council import CouncilStrategy
from .debate import DebateStrategy
from .fusion import FusionStrategy
from .moa import MoAStrategy
from .self_consistency import SelfConsistencyStrategy

_REGISTRY: dict[str, Strategy[Any]] = {}


def register_strategy(strategy: Strategy[Any]) -> None:
    """Add (or replace) a strategy under its canonical name.

    Raises TypeError naming every member that is missing or of the wrong kind (see `base.Strategy`)."""
    problems = strategy_problems(strategy)
    if problems:
        label = getattr(strategy, "name", None) or getattr(strategy, "__name__", None) or type(strategy).__name__
        raise TypeError(f"strategy {label!r} does not implement the Strategy protocol: " + "; ".join(problems))
    _REGISTRY[canonical_strategy_name(strategy.name)] = strategy


def get_strategy(name: str) -> Strategy[Any]:
    """The strategy registered under `name`; the error lists the registered ones. A name not registered yet
    loads the plugins first (the CLI agents' `composer-cli` strategy is one: a process that never called
    `composite_llm.register()`, like the proxy loading the provider from its config, still finds it)."""
    strategy = _REGISTRY.get(canonical_strategy_name(name))
    if strategy is None:
        from ..plugins import load_plugins

        load_plugins()
        strategy = _REGISTRY.get(canonical_strategy_name(name))
    if strategy is None:
        raise CompositeConfigError(f"unknown strategy {name!r}; registered strategies: {', '.join(_names())}")
    return strategy


def strategy_names() -> list[str]:
    """Every strategy there is: the built-in ones and the plugins' (loaded first)."""
    from ..plugins import load_plugins

    load_plugins()
    return _names()


def _names() -> list[str]:
    return sorted(s.name for s in _REGISTRY.values())


register_strategy(MoAStrategy())
register_strategy(CouncilStrategy())
register_strategy(SelfConsistencyStrategy())
register_strategy(BestOfNStrategy())
register_strategy(DebateStrategy())
register_strategy(FusionStrategy())
register_strategy(CascadeStrategy())

__all__ = ["FinalCall", "FinalRunner", "FinalStep", "FinalText", "Strategy", "Topology", "get_strategy",
           "register_strategy", "strategy_names", "strategy_problems"]
