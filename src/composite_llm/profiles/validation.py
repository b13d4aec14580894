"""Validating a profile document: every problem at once, each with its profile and field path.

`parse_document` turns a document (a dict, as read from YAML or given in code) into a `LoadedSource`, or
raises one `ProfileFileError` listing the first `MAX_LISTED_PROBLEMS` problems: the document settings, the
provider bundles, each profile's strategy and topology, provider and router references, sub-call budgets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from .. import router_members
from ..errors import CompositeConfigError
from ..schema import NodeConfig, ProviderBundle, validation_problems
from ..strategies import get_strategy
from .documents import (MAX_LISTED_PROBLEMS, DocumentSettings, LoadedProfile, LoadedSource, ProfileFileError,
                        ProfileSpec, capped)


def iter_nodes(value: Any) -> Iterable[NodeConfig]:
    """Every NodeConfig inside a validated topology (at any depth, fallbacks included)."""
    if isinstance(value, NodeConfig):
        yield value
        for fallback in value.fallbacks:
            yield from iter_nodes(fallback)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from iter_nodes(getattr(value, name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_nodes(item)


def parse_document(data: Any, origin: str) -> LoadedSource:
    """Validate one profile document; raise CompositeConfigError listing every problem found."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CompositeConfigError(f"{origin}: expected a mapping with 'providers' and 'profiles', "
                                   f"got {type(data).__name__}")
    problems: list[str] = []
    source = LoadedSource(origin=origin)
    extra = {k: v for k, v in data.items() if k not in ("providers", "profiles")}
    try:
        source.settings = DocumentSettings.model_validate(extra)
    except ValidationError as exc:
        problems += validation_problems(exc, "(top level)")
    for name in (source.settings.strategy_registry or {}):
        try:
            get_strategy(name)
        except CompositeConfigError as exc:
            problems.append(f"strategy_registry.{name}: {exc}")

    providers_raw = data.get("providers") or {}
    if not isinstance(providers_raw, dict):
        problems.append("providers: expected a mapping of bundle name -> {litellm_params: {...}}")
        providers_raw = {}
    for name, raw in providers_raw.items():
        try:
            source.providers[str(name)] = ProviderBundle.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            problems += validation_problems(exc, f"providers.{name}")

    profiles_raw = data.get("profiles") or {}
    if not isinstance(profiles_raw, dict):
        problems.append("profiles: expected a mapping of profile name -> {strategy, topology}")
        profiles_raw = {}
    for name, raw in profiles_raw.items():
        name = str(name)
        prefix = f"profile {name!r}"
        try:
            spec = ProfileSpec.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            problems += validation_problems(exc, prefix)
            continue
        try:
            strategy = get_strategy(spec.strategy)
        except CompositeConfigError as exc:
            problems.append(f"{prefix}: strategy: {exc}")
            continue
        try:
            topology = strategy.topology_model.model_validate(spec.topology)
        except ValidationError as exc:
            problems += validation_problems(exc, f"{prefix}: topology")
            continue
        for node in iter_nodes(topology):
            if node.provider and node.provider not in source.providers:
                known = ", ".join(sorted(source.providers)) or "none defined"
                problems.append(f"{prefix}: node {node.label!r} uses unknown provider {node.provider!r} "
                                f"(known: {known})")
        problems += router_members.check_profile(name, iter_nodes(topology))
        source.profiles[name] = LoadedProfile(name=name, strategy=strategy, topology=topology, origin=origin,
                                              providers=source.providers, description=spec.description)
    problems += over_budget(source)
    if problems:
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more problem(s)" if more > 0 else ""
        raise ProfileFileError(capped(f"invalid composite profiles in {origin}:\n  - " + "\n  - ".join(shown) + tail),
                               declared=frozenset(str(name) for name in data["profiles"])
                               if isinstance(data.get("profiles"), dict) else None)
    return source


def over_budget(source: LoadedSource) -> list[str]:
    """Profiles whose sub-calls per request exceed their `settings.max_sub_calls`, nested profiles of the same
    document counted in (others are counted when a request uses them)."""
    from ..budget import check_budget, nested_resolver

    class _Document:
        @staticmethod
        def get(name: str) -> LoadedProfile:
            if name not in source.profiles:
                raise CompositeConfigError(name)
            return source.profiles[name]

    problems = []
    for name, profile in source.profiles.items():
        try:
            check_budget(profile.strategy, profile.topology, f"profile {name!r}", nested_resolver(_Document))
        except CompositeConfigError as exc:
            problems.append(str(exc))
    return problems
