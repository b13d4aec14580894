"""The strategy registry: name -> strategy object. Names match ignoring '-' versus '_'."""

from __future__ import annotations

from typing import Any

from ..model_string import canonical_strategy_name
from .base import FinalCall, FinalRunner, FinalStep, FinalText, Strategy
from .council import CouncilStrategy
from .moa import MoAStrategy

_REGISTRY: dict[str, Any] = {}


def register_strategy(strategy: Any) -> None:
    """Add (or replace) a strategy under its canonical name."""
    _REGISTRY[canonical_strategy_name(strategy.name)] = strategy


def get_strategy(name: str) -> Any:
    """The strategy registered under `name`; the error lists the registered ones."""
    strategy = _REGISTRY.get(canonical_strategy_name(name))
    if strategy is None:
        from ..errors import CompositeConfigError

        raise CompositeConfigError(f"unknown strategy {name!r}; registered strategies: {', '.join(strategy_names())}")
    return strategy


def strategy_names() -> list[str]:
    return sorted(s.name for s in _REGISTRY.values())


register_strategy(MoAStrategy())
register_strategy(CouncilStrategy())

__all__ = ["FinalCall", "FinalRunner", "FinalStep", "FinalText", "Strategy", "get_strategy", "register_strategy",
           "strategy_names"]
