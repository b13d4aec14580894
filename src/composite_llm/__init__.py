"""composite-llm: several LLM calls that look like one model, as a LiteLLM provider.

    import litellm, composite_llm
    composite_llm.register()
    litellm.completion(model="composite/profile/moa_light", messages=[...])
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public names are imported on first use: importing litellm takes seconds, and `composite-llm --help`
# (composite_llm.cli, which imports this package first) must not pay for it.
_LAZY: dict[str, tuple[str, str]] = {
    "COMPOSITE_PROVIDER": ("litellm_provider", "COMPOSITE_PROVIDER"),
    "CompositeProvider": ("litellm_provider", "CompositeProvider"),
    "register_composite_provider": ("litellm_provider", "register_composite_provider"),
    "register": ("litellm_provider", "register_composite_provider"),
    "CompositeConfigError": ("errors", "CompositeConfigError"),
    "load_profiles": ("profiles", "load_profiles"),
    "register_strategy": ("strategies", "register_strategy"),
    "strategy_names": ("strategies", "strategy_names"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .errors import CompositeConfigError
    from .litellm_provider import COMPOSITE_PROVIDER, CompositeProvider, register_composite_provider
    from .profiles import load_profiles
    from .strategies import register_strategy, strategy_names

    register = register_composite_provider

__all__ = [
    "COMPOSITE_PROVIDER",
    "CompositeConfigError",
    "CompositeProvider",
    "__version__",
    "load_profiles",
    "register",
    "register_composite_provider",
    "register_strategy",
    "strategy_names",
]
