"""composite-llm: several LLM calls that look like one model, as a LiteLLM provider.

    import litellm, composite_llm
    composite_llm.register()
    litellm.completion(model="composite/profile/moa_light", messages=[...])
"""

from __future__ import annotations

from .errors import CompositeConfigError
from .litellm_provider import COMPOSITE_PROVIDER, CompositeProvider, register_composite_provider
from .profiles import load_profiles
from .strategies import register_strategy, strategy_names

__version__ = "0.1.0"

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
