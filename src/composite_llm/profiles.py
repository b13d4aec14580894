"""Profiles: named topologies in YAML files, folders, Python dicts or the proxy's general_settings.

One schema everywhere (a profile document):

    providers:                      # shared connection bundles, referenced by nodes
      cerebras: {litellm_params: {api_key: os.environ/CEREBRAS_API_KEY}}
    profiles:
      moa_light:
        strategy: moa
        description: ...
        topology: {aggregator: {...}, proposers: [...], settings: {...}}

Documents are validated when loaded, every problem reported at once with the file, the profile and the
field path. Files are parsed once and re-read only when they change. Sources are searched in order:
`register_composite_provider(profiles=...)`, `$COMPOSITE_LLM_PROFILES`, the proxy config's
`general_settings.composite_llm` block, then `./profiles/`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError

from . import router_members
from .errors import CompositeConfigError
from .schema import NodeConfig, ProviderBundle, StrictModel
from .strategies import get_strategy, strategy_names

logger = logging.getLogger("composite_llm")

PROFILES_ENV = "COMPOSITE_LLM_PROFILES"
DEFAULT_PROFILE_DIR = "profiles"
YAML_SUFFIXES = (".yaml", ".yml")
ProfileSource = Union[str, os.PathLike, dict]
# A composite sends the whole conversation to every member: the default cap per request (about 1M tokens
# of text, past every model's context; 0 disables it).
DEFAULT_MAX_INPUT_BYTES = 4 * 1024 * 1024
# Error bodies stay readable: a document with a thousand broken nodes lists the first problems only.
MAX_LISTED_PROBLEMS = 20
MAX_ERROR_CHARS = 4000


class UnknownProfileError(CompositeConfigError):
    """No source defines the profile. Keeps the pieces so the proxy can word it for its clients."""

    def __init__(self, name: str, known: list[str], searched: str) -> None:
        self.name, self.known, self.searched = name, known, searched
        super().__init__(f"unknown profile {name!r}; known profiles: {', '.join(known) or 'none'} "
                         f"(searched: {searched})")

    def for_proxy_client(self, callable_names: Optional[list[str]]) -> str:
        """The message for a proxy client: only model names it could call, no server paths."""
        if callable_names is None:
            return f"unknown profile {self.name!r} (the proxy's composite configuration does not define it)"
        return (f"unknown profile {self.name!r}; composite models served here: "
                f"{', '.join(callable_names) or 'none'}")


class ProfileFileError(CompositeConfigError):
    """A profile document that failed to load. `declared` holds the profile names it defines when its YAML
    could be read (so only lookups of those names are affected), None when even that is unknown."""

    def __init__(self, message: str, declared: Optional[frozenset[str]] = None) -> None:
        super().__init__(message)
        self.declared = declared

    def may_define(self, name: str) -> bool:
        return self.declared is None or name in self.declared


def _summary(exc: BaseException) -> str:
    """The first problem of a load error, on one line (for trace notes and log lines)."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    return " ".join(lines[:2])[:300] or type(exc).__name__


def _capped(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 40] + f"\n  ... ({len(message):,} characters, cut)"


class ProfileSpec(StrictModel):
    strategy: str = Field(min_length=1)
    description: Optional[str] = None
    topology: dict[str, Any] = Field(default_factory=dict)


class TraceLogConfig(StrictModel):
    """JSONL log of every composite request (one line per request, secrets redacted)."""

    enabled: bool = True
    path: str = "composite_traces.jsonl"


class SeedObservability(StrictModel):
    """composite_llm_research's `observability: {enabled, log_file}` block, read as a trace log setting."""

    enabled: bool = False
    log_file: Optional[str] = None


class DocumentSettings(StrictModel):
    """Top-level keys of a profile document besides providers/profiles."""

    profiles_path: Optional[Union[str, list[str]]] = None
    allow_request_overrides: bool = False
    trace_log: Optional[TraceLogConfig] = None
    observability: Optional[SeedObservability] = None
    # composite_llm_research mapped strategy names to classes; strategies are registered in code here, so the block
    # is accepted for compatibility and checked to name known strategies only.
    strategy_registry: Optional[dict[str, str]] = None
    # Cap on the conversation size of one composite request, in bytes of JSON (None: the default,
    # DEFAULT_MAX_INPUT_BYTES; 0: no cap).
    max_input_bytes: Optional[int] = Field(default=None, ge=0)


@dataclass
class LoadedProfile:
    """A validated profile ready to run."""

    name: str
    strategy: Any
    topology: BaseModel
    origin: str
    providers: dict[str, ProviderBundle]
    description: Optional[str] = None
    # Set when the profile comes from the last good version of a file that has since become invalid.
    stale: Optional[str] = None


@dataclass
class LoadedSource:
    origin: str
    providers: dict[str, ProviderBundle] = field(default_factory=dict)
    profiles: dict[str, LoadedProfile] = field(default_factory=dict)
    settings: DocumentSettings = field(default_factory=DocumentSettings)
    # Files of a folder that failed to load: the folder's other files still serve their profiles.
    broken: list[ProfileFileError] = field(default_factory=list)


def _stale_copy(source: LoadedSource, warning: str) -> LoadedSource:
    """The last good version of a source, every profile marked with why it is stale."""
    profiles = {name: dataclasses.replace(profile, stale=warning) for name, profile in source.profiles.items()}
    return dataclasses.replace(source, profiles=profiles)


# --------------------------------------------------------------------------- validation
def _loc(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def _pydantic_problems(exc: ValidationError, prefix: str) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = _loc([p for p in error["loc"] if p not in ("function-after", "function-before")])
        path = f"{prefix}.{loc}" if loc != "(root)" else prefix
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (not allowed here)"
        problems.append(f"{path}: {message}")
    return problems


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


def parse_document(data: Any, origin: str, *, base_dir: Optional[Path] = None) -> LoadedSource:
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
        problems += _pydantic_problems(exc, "(top level)")
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
            problems += _pydantic_problems(exc, f"providers.{name}")

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
            problems += _pydantic_problems(exc, prefix)
            continue
        try:
            strategy = get_strategy(spec.strategy)
        except CompositeConfigError as exc:
            problems.append(f"{prefix}: strategy: {exc}")
            continue
        try:
            topology = strategy.topology_model.model_validate(spec.topology)
        except ValidationError as exc:
            problems += _pydantic_problems(exc, f"{prefix}: topology")
            continue
        for node in iter_nodes(topology):
            if node.provider and node.provider not in source.providers:
                known = ", ".join(sorted(source.providers)) or "none defined"
                problems.append(f"{prefix}: node {node.label!r} uses unknown provider {node.provider!r} "
                                f"(known: {known})")
        problems += router_members.check_profile(name, iter_nodes(topology))
        source.profiles[name] = LoadedProfile(name=name, strategy=strategy, topology=topology, origin=origin,
                                              providers=source.providers, description=spec.description)
    problems += _over_budget(source)
    if problems:
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more problem(s)" if more > 0 else ""
        raise ProfileFileError(_capped(f"invalid composite profiles in {origin}:\n  - " + "\n  - ".join(shown) + tail),
                               declared=frozenset(str(name) for name in data["profiles"])
                               if isinstance(data.get("profiles"), dict) else None)
    return source


def _over_budget(source: "LoadedSource") -> list[str]:
    """Profiles whose sub-calls per request exceed their `settings.max_sub_calls`, nested profiles of the same
    document counted in (others are counted when a request uses them)."""
    from .budget import check_budget, nested_resolver

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


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileFileError(f"cannot read profile file {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileFileError(_capped(f"invalid YAML in profile file {path}{where}: {problem}")) from None


def _merge(target: LoadedSource, other: LoadedSource) -> None:
    """Merge a file of a folder into the folder's source; the same name twice is an error."""
    for name, bundle in other.providers.items():
        if name in target.providers and target.providers[name] != bundle:
            raise CompositeConfigError(f"provider bundle {name!r} is defined differently in {target.origin} "
                                       f"and {other.origin}")
        target.providers[name] = bundle
    for name, profile in other.profiles.items():
        if name in target.profiles:
            raise CompositeConfigError(f"profile {name!r} is defined twice: in {target.profiles[name].origin} "
                                       f"and {profile.origin}")
        target.profiles[name] = profile
    target.broken.extend(other.broken)
    if other.settings.max_input_bytes is not None and target.settings.max_input_bytes is None:
        target.settings.max_input_bytes = other.settings.max_input_bytes
    if other.settings.trace_log and not target.settings.trace_log:
        target.settings.trace_log = other.settings.trace_log


# --------------------------------------------------------------------------- loading with a cache
@dataclass
class _CacheEntry:
    key: tuple[int, int]
    source: Optional[LoadedSource] = None         # what this version serves (maybe the last good, stale)
    error: Optional[ProfileFileError] = None      # this version's load error, when nothing good came before
    last_good: Optional[LoadedSource] = None


class _FileCache:
    """Parsed documents keyed by path, re-parsed only when mtime or size changes.

    Failures are cached like successes (an invalid file costs one parse per version, not one per request),
    and a file that becomes invalid keeps serving its last good version, marked stale, until it is fixed:
    an editor's truncate-then-write or a typo in a hot edit must not turn every request into a 400."""

    def __init__(self) -> None:
        self._entries: dict[Path, _CacheEntry] = {}
        self._lock = threading.Lock()

    def load(self, path: Path) -> LoadedSource:
        try:
            stat = path.stat()
        except OSError as exc:
            raise ProfileFileError(f"profile file {path} not found ({exc.strerror})") from None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._entries.get(path)
        if cached is None or cached.key != key:
            cached = self._parse(path, key, cached.last_good if cached else None)
            with self._lock:
                self._entries[path] = cached
        if cached.source is None:
            assert cached.error is not None
            raise cached.error
        return cached.source

    @staticmethod
    def _parse(path: Path, key: tuple[int, int], last_good: Optional[LoadedSource]) -> _CacheEntry:
        try:
            data = _read_yaml(path)
            if data is None and last_good is not None and last_good.profiles:
                raise ProfileFileError(f"profile file {path} is empty (being rewritten?)")
            source = parse_document(data, str(path), base_dir=path.parent)
            return _CacheEntry(key, source=source, last_good=source)
        except ProfileFileError as exc:
            if last_good is None:
                return _CacheEntry(key, error=exc)
            warning = (f"profile file {path} became invalid at {time.strftime('%H:%M:%S')}; serving its last good "
                       f"version until it is fixed ({_summary(exc)})")
            logger.warning("composite_llm: %s\n%s", warning, exc)
            return _CacheEntry(key, source=_stale_copy(last_good, warning), error=exc, last_good=last_good)


_files = _FileCache()


def forget_cached_documents() -> None:
    """Drop parsed documents so they are validated again (the router's model groups changed)."""
    with _files._lock:
        _files._entries.clear()
    REGISTRY.forget_cache()


def _load_path(path: Path, *, label: Optional[str] = None) -> LoadedSource:
    """A file, or every *.yaml/*.yml of a folder merged (sorted, so errors are reproducible)."""
    if path.is_dir():
        merged = LoadedSource(origin=label or str(path))
        for child in sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file()):
            try:
                part = _files.load(child)
            except ProfileFileError as exc:
                merged.broken.append(exc)  # the folder's other files keep serving their profiles
                continue
            _merge(merged, part)
        return merged
    if not path.exists():
        raise CompositeConfigError(f"profile path {path} does not exist" + (f" (from {label})" if label else ""))
    return _files.load(path)


def load_profiles(source: ProfileSource) -> LoadedSource:
    """Load and validate profiles from a YAML file, a folder of them, or a dict document."""
    if isinstance(source, dict):
        return parse_document(source, "<profiles dict>")
    if not isinstance(source, (str, os.PathLike)):
        raise CompositeConfigError(f"profiles must be a YAML file or folder path or a dict document, got "
                                   f"{type(source).__name__}")
    return _load_path(Path(source).expanduser())


def _proxy_block() -> tuple[Any, Optional[Path]]:
    """The proxy's `general_settings.composite_llm` block, if running inside the LiteLLM proxy.

    Read at request time and only when the proxy module is already imported (importing it costs ~5 s).
    A config file that does not parse gives its ProfileFileError in place of the block.
    The block is taken from the config file itself when it can be read: LiteLLM resolves `os.environ/`
    references in general_settings at startup and turns a missing variable into None, which would lose
    the clear "variable X is not set" error; our own resolution happens at call time instead.
    """
    proxy = sys.modules.get("litellm.proxy.proxy_server")
    if proxy is None:
        return None, None
    config_path = getattr(proxy, "user_config_file_path", None)
    base_dir = Path(config_path).parent if config_path else None
    if config_path and Path(config_path).is_file():
        try:
            raw = _raw_config_block(Path(config_path))
        except ProfileFileError as exc:  # the config file does not parse (cached per version): the caller decides
            return exc, base_dir
        if raw is not None:
            return raw, base_dir
    settings = getattr(proxy, "general_settings", None) or {}
    # LiteLLM 1.108 binds a SettingsStore (a Mapping, not a dict) to general_settings.
    block = settings.get("composite_llm") if isinstance(settings, Mapping) else None
    return block, base_dir


_raw_configs: dict[Path, tuple[tuple[int, int], Any]] = {}


def _raw_config_block(path: Path) -> Any:
    """`general_settings.composite_llm` as written in the proxy config file (cached by mtime/size, a YAML
    error too)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _raw_configs.get(path)
    if cached is None or cached[0] != key:
        try:
            data = _read_yaml(path)
            general = data.get("general_settings") if isinstance(data, dict) else None
            block: Any = general.get("composite_llm") if isinstance(general, dict) else None
        except ProfileFileError as exc:
            block = exc
        _raw_configs[path] = cached = (key, block)
    if isinstance(cached[1], ProfileFileError):
        raise cached[1]
    return cached[1]


def load_proxy_block(block: Any, base_dir: Optional[Path] = None) -> LoadedSource:
    """The proxy block: inline providers/profiles plus any files named by `profiles_path`."""
    origin = "proxy config general_settings.composite_llm"
    source = parse_document(block, origin)
    paths = source.settings.profiles_path
    for raw in ([paths] if isinstance(paths, str) else (paths or [])):
        path = Path(os.path.expandvars(raw)).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            part = _load_path(path, label=f"{origin}.profiles_path")
        except ProfileFileError as exc:
            source.broken.append(exc)  # the block's other files and inline profiles keep working
            continue
        _merge(source, part)
    return source


class ProfileRegistry:
    """Finds profiles across all sources, in precedence order, with caching."""

    def __init__(self) -> None:
        self._explicit: Optional[ProfileSource] = None
        self._explicit_dict: Optional[LoadedSource] = None
        self._proxy_cache: Optional[tuple[Any, Union[LoadedSource, ProfileFileError]]] = None
        self._proxy_last_good: dict[Optional[Path], LoadedSource] = {}  # per proxy config location
        self._lock = threading.Lock()

    def set_explicit(self, source: Optional[ProfileSource]) -> None:
        """Use `source` first (validated now, so a bad file fails at registration)."""
        loaded = load_profiles(source) if source is not None else None
        with self._lock:
            self._explicit = source
            self._explicit_dict = loaded if isinstance(source, dict) else None

    def sources(self) -> list[Union[LoadedSource, CompositeConfigError]]:
        """Every source in precedence order; one that fails to load is kept as its error, so a broken
        low-precedence source (say ./profiles/) does not break profiles found before it."""
        loaders: list[Any] = []
        if self._explicit is not None:
            explicit = self._explicit
            loaders.append(lambda: self._explicit_dict or load_profiles(explicit))
        env = os.environ.get(PROFILES_ENV)
        for part in (env.split(os.pathsep) if env else []):
            if part.strip():
                loaders.append(lambda part=part: _load_path(Path(part.strip()).expanduser(), label=f"${PROFILES_ENV}"))
        block, base_dir = _proxy_block()
        if isinstance(block, ProfileFileError):
            loaders.append(lambda: self._proxy_fallback(block, base_dir))
        elif block is not None:
            loaders.append(lambda: self._proxy_source(block, base_dir))
        local = Path.cwd() / DEFAULT_PROFILE_DIR
        if local.is_dir():
            loaders.append(lambda: _load_path(local))
        found: list[Union[LoadedSource, CompositeConfigError]] = []
        for load in loaders:
            try:
                found.append(load())
            except CompositeConfigError as exc:
                found.append(exc)
        return found

    def forget_cache(self) -> None:
        with self._lock:
            self._proxy_cache = None
            if isinstance(self._explicit, dict):
                self._explicit_dict = load_profiles(self._explicit)

    def _proxy_source(self, block: Any, base_dir: Optional[Path]) -> LoadedSource:
        cached = self._proxy_cache
        if cached is not None and cached[0] == block:
            if isinstance(cached[1], ProfileFileError):
                return self._proxy_fallback(cached[1], base_dir)  # the same invalid block: not validated again
            if not cached[1].settings.profiles_path:
                return cached[1]
        try:
            source = load_proxy_block(block, base_dir)
        except CompositeConfigError as exc:
            error = exc if isinstance(exc, ProfileFileError) else ProfileFileError(_capped(str(exc)))
            if isinstance(block, dict) and isinstance(block.get("profiles"), dict) and error.declared is None:
                error.declared = frozenset(str(name) for name in block["profiles"])
            self._proxy_cache = (_snapshot(block), error)
            return self._proxy_fallback(error, base_dir)
        self._proxy_cache = (_snapshot(block), source)
        self._proxy_last_good[base_dir] = source
        return source

    def _proxy_fallback(self, error: ProfileFileError, base_dir: Optional[Path]) -> LoadedSource:
        """The last good proxy block of this config, marked stale, or the error when there never was one."""
        last_good = self._proxy_last_good.get(base_dir)
        if last_good is None:
            raise error
        warning = (f"the proxy's composite_llm block became invalid; serving its last good version until it is "
                   f"fixed ({_summary(error)})")
        logger.warning("composite_llm: %s", warning)
        return _stale_copy(last_good, warning)

    def snapshot(self) -> "ProfileSnapshot":
        """All sources as of now: one scan per request, however many lookups it makes."""
        return ProfileSnapshot(self.sources())

    def get(self, name: str) -> LoadedProfile:
        return self.snapshot().get(name)

    def names(self) -> list[str]:
        return self.snapshot().names()


@dataclass
class ProfileSnapshot:
    """The sources as of one request (valid ones and load errors, in precedence order)."""

    entries: list[Union[LoadedSource, CompositeConfigError]]

    @property
    def sources(self) -> list[LoadedSource]:
        return [e for e in self.entries if isinstance(e, LoadedSource)]

    def get(self, name: str) -> LoadedProfile:
        broken: list[CompositeConfigError] = []
        for entry in self.entries:
            if isinstance(entry, CompositeConfigError):
                # it might define `name`: an error, not a silent fallthrough (unless we know it does not)
                if not isinstance(entry, ProfileFileError) or entry.may_define(name):
                    broken.append(entry)
                continue
            if name in entry.profiles:
                if broken:
                    break
                return entry.profiles[name]
            broken.extend(e for e in entry.broken if e.may_define(name))
        if broken:
            raise CompositeConfigError(_capped("\n".join(str(e) for e in broken)))
        where = ", ".join(s.origin for s in self.sources) or (
            f"no profile sources (pass profiles= to register_composite_provider, set ${PROFILES_ENV}, "
            f"or create ./{DEFAULT_PROFILE_DIR}/)"
        )
        raise UnknownProfileError(name, self.names(), where)

    def names(self) -> list[str]:
        return sorted({n for s in self.sources for n in s.profiles})

    @property
    def settings(self) -> DocumentSettings:
        """Document-level settings; the highest-precedence source that sets one wins."""
        merged = DocumentSettings()
        for source in reversed(self.sources):
            for key in ("trace_log", "observability"):
                if getattr(source.settings, key) is not None:
                    setattr(merged, key, getattr(source.settings, key))
            if source.settings.allow_request_overrides:
                merged.allow_request_overrides = True
            if source.settings.max_input_bytes is not None:
                merged.max_input_bytes = source.settings.max_input_bytes
        if merged.max_input_bytes is None:
            merged.max_input_bytes = DEFAULT_MAX_INPUT_BYTES
        return merged


def _snapshot(block: Any) -> Any:
    """A deep copy for change detection (the proxy may mutate its settings dict in place)."""
    import copy

    return copy.deepcopy(block)


REGISTRY = ProfileRegistry()
