"""The `composite/...` model-string grammar.

LiteLLM hands the provider the model with `composite/` already removed, so both forms are accepted:

    profile/<name>                   a named profile (the name may itself contain '/')
    <strategy>/<provider>/<model>    an inline topology; <provider>/<model> is its final-stage model
                                     (the MoA aggregator, the council chairman, ...)
    composer-cli/<model>             Cursor's `agent` CLI running <model>
    cli/<spec>/<model>               any coding-agent CLI described by a spec
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CompositeConfigError

PREFIX = "composite/"


def canonical_strategy_name(name: str) -> str:
    """Strategy names are matched ignoring '-' versus '_' (`composer-cli` == `composer_cli`)."""
    return name.strip().lower().replace("-", "_")


@dataclass(frozen=True)
class ModelTarget:
    """What a model string asks for: a profile by name, or a strategy with its final-stage model."""

    raw: str
    profile: str | None = None
    strategy: str | None = None
    final_model: str | None = None
    cli_spec: str | None = None

    @property
    def display_name(self) -> str:
        return self.raw if self.raw.startswith(PREFIX) else PREFIX + self.raw


def parse_model_string(model: str) -> ModelTarget:
    """Parse a composite model string (with or without the `composite/` prefix)."""
    raw = (model or "").strip()
    body = raw[len(PREFIX):] if raw.startswith(PREFIX) else raw
    head, _, rest = body.partition("/")
    if not head:
        raise CompositeConfigError(
            f"empty composite model string {model!r}: expected composite/profile/<name>, "
            "composite/<strategy>/<provider>/<model> or composite/composer-cli/<model>"
        )
    strategy = canonical_strategy_name(head)
    if strategy == "profile":
        if not rest.strip("/"):
            raise CompositeConfigError(f"{model!r} names no profile: expected composite/profile/<name>")
        return ModelTarget(raw=raw, profile=rest.strip("/"))
    if strategy == "composer_cli":
        if not rest:
            raise CompositeConfigError(f"{model!r} names no model: expected composite/composer-cli/<model>")
        return ModelTarget(raw=raw, strategy="composer_cli", final_model=rest, cli_spec="cursor")
    if strategy == "cli":
        spec, _, cli_model = rest.partition("/")
        if not spec or not cli_model:
            raise CompositeConfigError(f"{model!r}: expected composite/cli/<spec>/<model>")
        return ModelTarget(raw=raw, strategy="composer_cli", final_model=cli_model, cli_spec=spec)
    if not rest or "/" not in rest:
        raise CompositeConfigError(
            f"{model!r}: expected composite/{head}/<provider>/<model> "
            "(the LiteLLM model that runs the final stage, e.g. openai/gpt-4o-mini)"
        )
    return ModelTarget(raw=raw, strategy=strategy, final_model=rest)
