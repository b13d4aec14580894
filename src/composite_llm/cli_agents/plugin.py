"""The CLI agents' plugin: the `composer-cli` strategy (`composite/composer-cli/<model>`,
`composite/cli/<spec>/<model>`, `strategy: composer-cli`), registered through the public
`register_strategy` (see composite_llm.plugins)."""

from __future__ import annotations


def register() -> None:
    from ..strategies import register_strategy
    from .strategy import ComposerCLIStrategy

    register_strategy(ComposerCLIStrategy())
