"""Where profiles come from, in precedence order, and the proxy's `general_settings.composite_llm` block.

Sources are searched in order: `register_composite_provider(profiles=...)`, `$COMPOSITE_LLM_PROFILES`, the
proxy config's block, then `./profiles/`. A request takes one `ProfileSnapshot` (one scan of the sources) and
makes all its lookups in it. A source that fails to load is kept as its error, so a broken low-precedence
source does not break profiles found before it, and a broken source that may define the wanted name is an
error, never a silent fallthrough.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CompositeConfigError
from .documents import (DEFAULT_MAX_INPUT_BYTES, DocumentSettings, LoadedProfile, LoadedSource, ProfileFileError,
                        UnknownProfileError, capped, first_problem, stale_copy)
from .files import FILES, ProfileSource, load_path, load_profiles, merge_into, read_yaml
from .validation import parse_document

logger = logging.getLogger("composite_llm")

PROFILES_ENV = "COMPOSITE_LLM_PROFILES"
DEFAULT_PROFILE_DIR = "profiles"


def _proxy_block() -> tuple[Any, Path | None]:
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
            data = read_yaml(path)
            general = data.get("general_settings") if isinstance(data, dict) else None
            block: Any = general.get("composite_llm") if isinstance(general, dict) else None
        except ProfileFileError as exc:
            block = exc
        _raw_configs[path] = cached = (key, block)
    if isinstance(cached[1], ProfileFileError):
        raise cached[1]
    return cached[1]


def load_proxy_block(block: Any, base_dir: Path | None = None) -> LoadedSource:
    """The proxy block: inline providers/profiles plus any files named by `profiles_path`."""
    origin = "proxy config general_settings.composite_llm"
    source = parse_document(block, origin)
    paths = source.settings.profiles_path
    for raw in ([paths] if isinstance(paths, str) else (paths or [])):
        path = Path(os.path.expandvars(raw)).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            part = load_path(path, label=f"{origin}.profiles_path")
        except ProfileFileError as exc:
            source.broken.append(exc)  # the block's other files and inline profiles keep working
            continue
        merge_into(source, part)
    return source


class ProfileRegistry:
    """Finds profiles across all sources, in precedence order, with caching."""

    def __init__(self) -> None:
        self._explicit: ProfileSource | None = None
        self._explicit_dict: LoadedSource | None = None
        self._proxy_cache: tuple[Any, LoadedSource | ProfileFileError] | None = None
        self._proxy_last_good: dict[Path | None, LoadedSource] = {}  # per proxy config location
        self._lock = threading.Lock()

    def set_explicit(self, source: ProfileSource | None) -> None:
        """Use `source` first (validated now, so a bad file fails at registration)."""
        loaded = load_profiles(source) if source is not None else None
        with self._lock:
            self._explicit = source
            self._explicit_dict = loaded if isinstance(source, dict) else None

    def sources(self) -> list[LoadedSource | CompositeConfigError]:
        """Every source in precedence order; one that fails to load is kept as its error, so a broken
        low-precedence source (say ./profiles/) does not break profiles found before it."""
        loaders: list[Any] = []
        if self._explicit is not None:
            explicit = self._explicit
            loaders.append(lambda: self._explicit_dict or load_profiles(explicit))
        env = os.environ.get(PROFILES_ENV)
        for part in (env.split(os.pathsep) if env else []):
            if part.strip():
                loaders.append(lambda part=part: load_path(Path(part.strip()).expanduser(), label=f"${PROFILES_ENV}"))
        block, base_dir = _proxy_block()
        if isinstance(block, ProfileFileError):
            loaders.append(lambda: self._proxy_fallback(block, base_dir))
        elif block is not None:
            loaders.append(lambda: self._proxy_source(block, base_dir))
        local = Path.cwd() / DEFAULT_PROFILE_DIR
        if local.is_dir():
            loaders.append(lambda: load_path(local))
        found: list[LoadedSource | CompositeConfigError] = []
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

    def _proxy_source(self, block: Any, base_dir: Path | None) -> LoadedSource:
        cached = self._proxy_cache
        if cached is not None and cached[0] == block:
            if isinstance(cached[1], ProfileFileError):
                return self._proxy_fallback(cached[1], base_dir)  # the same invalid block: not validated again
            if not cached[1].settings.profiles_path:
                return cached[1]
        try:
            source = load_proxy_block(block, base_dir)
        except CompositeConfigError as exc:
            error = exc if isinstance(exc, ProfileFileError) else ProfileFileError(capped(str(exc)))
            if isinstance(block, dict) and isinstance(block.get("profiles"), dict) and error.declared is None:
                error.declared = frozenset(str(name) for name in block["profiles"])
            self._proxy_cache = (_snapshot(block), error)
            return self._proxy_fallback(error, base_dir)
        self._proxy_cache = (_snapshot(block), source)
        self._proxy_last_good[base_dir] = source
        return source

    def _proxy_fallback(self, error: ProfileFileError, base_dir: Path | None) -> LoadedSource:
        """The last good proxy block of this config, marked stale, or the error when there never was one."""
        last_good = self._proxy_last_good.get(base_dir)
        if last_good is None:
            raise error
        warning = (f"the proxy's composite_llm block became invalid; serving its last good version until it is "
                   f"fixed ({first_problem(error)})")
        logger.warning("composite_llm: %s", warning)
        return stale_copy(last_good, warning)

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

    entries: list[LoadedSource | CompositeConfigError]

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
            raise CompositeConfigError(capped("\n".join(str(e) for e in broken)))
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


def forget_cached_documents() -> None:
    """Drop parsed documents so they are validated again (the router's model groups changed)."""
    FILES.clear()
    REGISTRY.forget_cache()
