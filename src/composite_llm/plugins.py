"""How the packages around the core plug in: strategies, LiteLLM providers, anything that registers.

The core (provider, service, engine, strategies, profiles) imports none of its satellites. A satellite, or a
third-party package, exposes one function that registers what it brings through the public entry points
(`composite_llm.register_strategy`, `composite_llm.registration.register_provider`):

- the built-in satellites are named here by dotted path only (`BUILTIN_PLUGINS`): the coding-agent CLIs
  register the `composer-cli` strategy, the local llama.cpp models register the `local` provider;
- another package declares the entry point group `composite_llm.plugins` in its metadata, e.g. in its
  pyproject.toml: `[project.entry-points."composite_llm.plugins"] mine = "my_pkg.plugin:register"`.

`load_plugins()` runs each once per process from the strategy registry when a name is not registered yet
(and again on every `composite_llm.register()`; registrations are idempotent) (the proxy may load the provider from its config without `register()`).
A plugin that fails to load is logged with its name and the error and kept out; the others still load, and
`plugin_errors()` says what failed.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from importlib.metadata import entry_points

__all__ = ["BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "load_plugins", "plugin_errors"]

log = logging.getLogger("composite_llm.plugins")

ENTRY_POINT_GROUP = "composite_llm.plugins"
BUILTIN_PLUGINS = (
    ("cli_agents", "composite_llm.cli_agents.plugin:register"),
    ("local", "composite_llm.local.plugin:register"),
)

_lock = threading.RLock()  # re-entrant: a plugin may look a strategy up while it registers
_loaded: dict[str, str] = {}   # name -> "module:attr" of every plugin that ran
_errors: dict[str, str] = {}   # name -> why it did not load
_loading = False
_scanned = False  # the entry points were read once: a lookup miss (a typo in a request) does not re-read them


def _resolve(target: str) -> Callable[[], object]:
    module_name, _, attr = target.partition(":")
    function = getattr(importlib.import_module(module_name), attr)
    if not callable(function):
        raise TypeError(f"{target} is not callable")
    return function


def _discovered() -> list[tuple[str, str, Callable[[], Callable[[], object]]]]:
    """(name, target, loader) of the built-in plugins, then of the installed packages' entry points."""
    found = [(name, target, (lambda t=target: _resolve(t))) for name, target in BUILTIN_PLUGINS]
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.append((point.name, point.value, point.load))
    return found


def load_plugins(*, rerun: bool = False) -> dict[str, str]:
    """Find and run the plugins, once per process; later calls return at once. With `rerun` the entry
    points are read again and every plugin runs again (`composite_llm.register()` puts everything in place
    again, e.g. after a test reset LiteLLM's provider map). Returns name -> target of those that ran."""
    global _loading, _scanned
    with _lock:
        if _loading or (_scanned and not rerun):  # re-entered from a plugin's registration, or nothing new
            return dict(_loaded)
        _loading = True
        try:
            for name, target, loader in _discovered():
                if name in _errors or (name in _loaded and not rerun):
                    continue
                try:
                    loader()()
                except Exception as exc:  # noqa: BLE001 - one broken plugin must not take the others down
                    _errors[name] = f"{type(exc).__name__}: {exc}"
                    log.warning("composite_llm plugin %r (%s) did not load: %s", name, target, _errors[name])
                    continue
                _loaded[name] = target
            _scanned = True
        finally:
            _loading = False
        return dict(_loaded)


def plugin_errors() -> dict[str, str]:
    """name -> error of each plugin that failed to load in this process."""
    with _lock:
        return dict(_errors)
