"""TESTING.md must match the suite: every test it names exists, every reliability test is in it, and each
row's Observed column agrees with the test's xfail marker (BUG rows point at strict-xfail tests only)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "TESTING.md"
RELIABILITY_FILES = ("tests/test_faults.py", "tests/test_bad_input.py", "tests/test_security.py")
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)(\[[^`]*\])?`")
CELL_SPLIT = re.compile(r"(?<!\\)\|")


@dataclass
class Row:
    row_id: str
    observed: str
    refs: list[tuple[str, str, str]]  # (file, function, "[param-id]" or "")

    @property
    def is_bug(self) -> bool:
        return "**BUG**" in self.observed


def _rows() -> list[Row]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|") or "`tests/" not in line:
            continue
        cells = [c.strip() for c in CELL_SPLIT.split(line.strip().strip("|"))]
        rows.append(Row(row_id=cells[0], observed=cells[-2], refs=REFERENCE.findall(cells[-1])))
    return rows


def _functions(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")}


@pytest.fixture(scope="module")
def collected(request) -> dict[str, pytest.Item]:
    return {item.nodeid: item for item in request.session.items}


def _filtered(request) -> bool:
    """With -k/-m some tests are deselected: fall back to checking the source for those."""
    option = request.config.option
    return bool(getattr(option, "keyword", "") or getattr(option, "markexpr", ""))


def _matches(collected: dict[str, pytest.Item], file: str, function: str, params: str) -> list[pytest.Item]:
    base = f"{file}::{function}"
    if params:
        return [collected[base + params]] if base + params in collected else []
    return [item for nodeid, item in collected.items() if nodeid == base or nodeid.startswith(base + "[")]


def _checkable(collected: dict[str, pytest.Item], file: str, request) -> bool:
    """Whether a reference into `file` that matches no collected test is an error: the session collected the
    file and deselected nothing. (Otherwise the reference is checked against the source instead.)"""
    return not _filtered(request) and any(nodeid.startswith(file + "::") for nodeid in collected)


def _strict_xfail(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("xfail")
    return marker is not None and marker.kwargs.get("strict", False) is True


def test_table_rows_are_well_formed():
    rows = _rows()
    assert len(rows) > 50
    ids = [row.row_id for row in rows]
    assert len(ids) == len(set(ids)), "duplicate row IDs"
    for row in rows:
        assert row.refs, f"row {row.row_id} names no test"
        assert row.observed.startswith(("ok", "**BUG**", "**LIMITATION**")), f"row {row.row_id}: {row.observed}"


def test_every_referenced_test_exists(collected, request):
    missing = []
    for row in _rows():
        for file, function, params in row.refs:
            if not (REPO / file).exists():
                missing.append(f"{row.row_id}: {file} does not exist")
            elif _matches(collected, file, function, params):
                continue
            elif _checkable(collected, file, request):
                missing.append(f"{row.row_id}: {file}::{function}{params} is not a collected test")
            elif function not in _functions(file):
                missing.append(f"{row.row_id}: {file} has no {function}")
    assert not missing, "\n".join(missing)


def test_every_reliability_test_is_in_the_table():
    named = {(file, function) for row in _rows() for file, function, _ in row.refs}
    absent = [f"{file}::{function}" for file in RELIABILITY_FILES for function in sorted(_functions(file))
              if (file, function) not in named]
    assert not absent, "tests missing from TESTING.md:\n" + "\n".join(absent)


def test_observed_column_agrees_with_xfail_markers(collected, request):
    problems = []
    bug_items: set[str] = set()
    for row in _rows():
        for file, function, params in row.refs:
            items = _matches(collected, file, function, params)
            if not items:
                continue  # not collected in this session: test_every_referenced_test_exists reports it
            if row.is_bug:
                bug_items.update(item.nodeid for item in items)
                problems += [f"{row.row_id} says BUG but {item.nodeid} is not a strict xfail"
                             for item in items if not _strict_xfail(item)]
            elif all(_strict_xfail(item) for item in items):
                problems.append(f"{row.row_id} says {row.observed.split()[0]} but {file}::{function}{params} "
                                "is an xfail")
            elif params and any(_strict_xfail(item) for item in items):
                problems.append(f"{row.row_id} says {row.observed.split()[0]} but {items[0].nodeid} is an xfail")
    for nodeid, item in collected.items():
        if nodeid.split("::")[0] in RELIABILITY_FILES and _strict_xfail(item) and nodeid not in bug_items:
            problems.append(f"{nodeid} is a strict xfail but no BUG row names it")
    assert not problems, "\n".join(problems)


def test_no_xfail_marker_is_defined_and_left_unused():
    """A named `pytest.mark.xfail(...)` nobody applies is a bug note whose bug was fixed: it misleads (the
    BUG list says none is open) and the check above cannot see it. Every such name must be used."""
    unused = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        markers = {target.id for node in tree.body if isinstance(node, ast.Assign)
                   and isinstance(node.value, ast.Call) and "xfail" in ast.unparse(node.value.func)
                   for target in node.targets if isinstance(target, ast.Name)}
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
        unused += [f"{path.relative_to(REPO)}: {name}" for name in sorted(markers - used)]
    assert not unused, f"xfail markers defined but never applied: {unused}"
