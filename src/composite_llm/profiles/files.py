"""Profile files on disk: YAML reading with line numbers, the per-file cache, folders merged.

A file is parsed once per version (mtime and size) and a failure is cached like a success; a file that
becomes invalid keeps serving its last good version, marked stale. A folder serves every *.yaml/*.yml in it,
a broken file of the folder affecting only the profiles it declares.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import CompositeConfigError
from .documents import LoadedSource, ProfileFileError, capped, first_problem, stale_copy
from .validation import parse_document

logger = logging.getLogger("composite_llm")

YAML_SUFFIXES = (".yaml", ".yml")
ProfileSource = str | os.PathLike | dict


def read_yaml(path: Path) -> Any:
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
        raise ProfileFileError(capped(f"invalid YAML in profile file {path}{where}: {problem}")) from None


def merge_into(target: LoadedSource, other: LoadedSource) -> None:
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
    for key in FOLDER_SETTINGS:  # a setting in any file of the folder applies to the folder; two values clash
        value, current = getattr(other.settings, key), getattr(target.settings, key)
        if value is None or value is False:
            continue
        if current is None or current is False:
            setattr(target.settings, key, value)
        elif current != value:
            raise CompositeConfigError(f"{key} is set differently by two files of the folder: {other.origin} and "
                                       f"another file of {target.origin}")


# Document settings a folder's files contribute to the folder (each may sit in any one file).
FOLDER_SETTINGS = ("allow_request_overrides", "trace_log", "observability", "max_input_bytes")


@dataclass
class _CacheEntry:
    key: tuple[int, int]
    source: LoadedSource | None = None         # what this version serves (maybe the last good, stale)
    error: ProfileFileError | None = None      # this version's load error, when nothing good came before
    last_good: LoadedSource | None = None


class _FileCache:
    """Parsed documents keyed by path, re-parsed only when mtime or size changes.

    Failures are cached like successes (an invalid file costs one parse per version, not one per request),
    and a file that becomes invalid keeps serving its last good version, marked stale, until it is fixed:
    an editor's truncate-then-write or a typo in a hot edit must not turn every request into a 400."""

    def __init__(self) -> None:
        self._entries: dict[Path, _CacheEntry] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every parsed document (they are validated again on their next load)."""
        with self._lock:
            self._entries.clear()

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
    def _parse(path: Path, key: tuple[int, int], last_good: LoadedSource | None) -> _CacheEntry:
        try:
            data = read_yaml(path)
            if data is None and last_good is not None and last_good.profiles:
                raise ProfileFileError(f"profile file {path} is empty (being rewritten?)")
            source = parse_document(data, str(path))
            return _CacheEntry(key, source=source, last_good=source)
        except ProfileFileError as exc:
            if last_good is None:
                return _CacheEntry(key, error=exc)
            warning = (f"profile file {path} became invalid at {time.strftime('%H:%M:%S')}; serving its last good "
                       f"version until it is fixed ({first_problem(exc)})")
            logger.warning("composite_llm: %s\n%s", warning, exc)
            return _CacheEntry(key, source=stale_copy(last_good, warning), error=exc, last_good=last_good)


FILES = _FileCache()


def load_path(path: Path, *, label: str | None = None) -> LoadedSource:
    """A file, or every *.yaml/*.yml of a folder merged (sorted, so errors are reproducible)."""
    if path.is_dir():
        merged = LoadedSource(origin=label or str(path))
        for child in sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file()):
            try:
                part = FILES.load(child)
            except ProfileFileError as exc:
                merged.broken.append(exc)  # the folder's other files keep serving their profiles
                continue
            merge_into(merged, part)
        return merged
    if not path.exists():
        raise CompositeConfigError(f"profile path {path} does not exist" + (f" (from {label})" if label else ""))
    return FILES.load(path)


def load_profiles(source: ProfileSource) -> LoadedSource:
    """Load and validate profiles from a YAML file, a folder of them, or a dict document."""
    if isinstance(source, dict):
        return parse_document(source, "<profiles dict>")
    if not isinstance(source, (str, os.PathLike)):
        raise CompositeConfigError(f"profiles must be a YAML file or folder path or a dict document, got "
                                   f"{type(source).__name__}")
    return load_path(Path(source).expanduser())
