"""Every third-party package the library imports is declared in pyproject.toml (a dependency or an extra).

A package that arrives only as somebody else's dependency can disappear with their next release; and a
user reading pyproject must see what `composite_llm.testing` (public) or the proxy hook needs. Imports
guarded by `except ImportError` (optional helpers such as tqdm) are exempt.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "composite_llm"


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {_normal(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a `try:` body whose handlers catch ImportError (or ModuleNotFoundError)."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            caught = {getattr(h.type, "id", None) for h in parent.handlers}
            caught |= {getattr(e, "id", None) for h in parent.handlers if isinstance(h.type, ast.Tuple)
                       for e in h.type.elts}
            if caught & {"ImportError", "ModuleNotFoundError", "Exception"}:
                return True
        child, parent = parent, parents.get(parent)
    return False


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module name -> the files that import it unguarded."""
    found: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "composite_llm" or _guarded(node, parents):
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    declared = _declared()
    distributions = packages_distributions()
    imports = third_party_imports()
    assert {"litellm", "aiohttp", "pydantic", "yaml"} <= set(imports)  # the scan sees real imports
    undeclared = {}
    for module, files in imports.items():
        names = {_normal(d) for d in distributions.get(module, [module])}
        if not names & declared:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_aiohttp_is_a_runtime_dependency_in_litellms_range():
    """The public testing helper works on a plain install: aiohttp is a dependency, not an extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "aiohttp>=3.14.2,<4.0" in project["dependencies"]
