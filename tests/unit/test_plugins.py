"""composite_llm.plugins: satellites and installed packages plug in through one hook; the core imports none
of them (checked statically here)."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from composite_llm import plugins
from composite_llm.strategies import get_strategy, strategy_names

SRC = Path(__file__).resolve().parents[2] / "src" / "composite_llm"
SATELLITES = ("local", "cli_agents", "eval", "dashboard")


@pytest.fixture()
def fresh_plugins(monkeypatch):
    """Plugin bookkeeping as in a new process (the built-in plugins' registrations are idempotent)."""
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugins, "_errors", {})
    monkeypatch.setattr(plugins, "_scanned", False)


@pytest.fixture()
def installed_package(tmp_path, monkeypatch):
    """A package on sys.path whose metadata declares two `composite_llm.plugins` entry points: one that
    works and one that raises."""
    (tmp_path / "acme_plugin.py").write_text(
        "CALLS = []\n"
        "def register():\n    CALLS.append('registered')\n"
        "def broken():\n    raise RuntimeError('acme is misconfigured')\n")
    dist = tmp_path / "acme_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[composite_llm.plugins]\nacme = acme_plugin:register\nacme_broken = acme_plugin:broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("acme_plugin", None)


def test_an_installed_package_plugs_in_through_its_entry_point(fresh_plugins, installed_package, caplog):
    loaded = plugins.load_plugins()
    assert loaded["acme"] == "acme_plugin:register"
    assert sys.modules["acme_plugin"].CALLS == ["registered"]
    assert set(dict(plugins.BUILTIN_PLUGINS)) <= set(loaded)  # the satellites load the same way
    errors = plugins.plugin_errors()
    assert errors == {"acme_broken": "RuntimeError: acme is misconfigured"}
    assert "acme_broken" in caplog.text and "acme is misconfigured" in caplog.text
    plugins.load_plugins()  # once per process...
    assert sys.modules["acme_plugin"].CALLS == ["registered"]
    plugins.load_plugins(rerun=True)  # ...unless composite_llm.register() asks for everything again
    assert sys.modules["acme_plugin"].CALLS == ["registered", "registered"]
    assert "acme_broken" not in plugins.load_plugins(rerun=True)


def test_the_cli_strategy_is_found_without_register(fresh_plugins, monkeypatch):
    """A process that only loads the provider (the proxy, from its config) still finds `composer-cli`:
    the registry loads the plugins when a name is missing."""
    import composite_llm.strategies as strategies

    monkeypatch.delitem(strategies._REGISTRY, "composer_cli")
    assert get_strategy("composer-cli").name == "composer_cli"
    assert "composer_cli" in strategy_names()
    with pytest.raises(Exception, match="registered strategies: .*composer_cli"):
        get_strategy("no-such-strategy")


def _imports(path: Path) -> set[str]:
    """Absolute names of the composite_llm modules `path` imports (relative imports resolved)."""
    package = ".".join(("composite_llm", *path.relative_to(SRC).parent.parts))
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {n for n in names if n.startswith("composite_llm")}


def test_the_core_imports_no_satellite():
    core = [p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in SATELLITES]
    assert len(core) > 20
    offending = {
        str(path.relative_to(SRC)): sorted(n for n in _imports(path)
                                           if n.split(".")[1:2] and n.split(".")[1] in SATELLITES)
        for path in core
    }
    assert {k: v for k, v in offending.items() if v} == {}
