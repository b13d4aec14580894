"""The strategy registry: name -> strategy object. Names match ignoring '-' versus '_'."""

from __future__ import annotations

from typing import Any

from ..model_string import canonical_strategy_name
from .base import FinalCall, FinalRunner, FinalStep, FinalText, Strategy
from .best_of_n import BestOfNStrategy
from .cascade import CascadeStrategy
from .composer_cli import ComposerCLIStrategy
from .council import CouncilStrategy
from .debate import DebateStrategy
from .fusion import FusionStrategy
from .moa import MoAStrategy
from .self_consistency import SelfConsistencyStrategy

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
register_strategy(SelfConsistencyStrategy())
register_strategy(BestOfNStrategy())
register_strategy(DebateStrategy())
register_strategy(ComposerCLIStrategy())
register_strategy(FusionStrategy())
register_strategy(CascadeStrategy())

__all__ = ["FinalCall", "FinalRunner", "FinalStep", "FinalText", "Strategy", "get_strategy", "register_strategy",
           "strategy_names"]
