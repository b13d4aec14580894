"""Task sets: JSONL files with one task per line.

    {"id": "arith-001", "prompt": "What is 17 * 23? Reply with just the final number.",
     "expected": "391", "scorer": "numeric"}

Fields:
    id        unique within the run (results are keyed by (model, id), which is what makes a run resumable)
    prompt    the user message (or `messages`: a full OpenAI message list, for multi-turn tasks)
    expected  the reference answer (a string or a number)
    scorer    exact | contains | regex | numeric | llm_judge (default: exact); see scorers.py
    aliases   contains: other accepted answers (["CO2"] next to "carbon dioxide")
    pattern   regex: the regular expression (default: `expected`)
    tolerance numeric: the largest accepted absolute difference (default: 1e-9)
    case_sensitive  exact / contains / regex: compare with case (default: false)
    system    an optional system message
    meta      anything you like; kept in the results

A task set is named by a bundled name (`arithmetic`, see `bundled_task_sets()`) or a path to a JSONL file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

SCORER_NAMES = ("exact", "contains", "regex", "numeric", "llm_judge")
SCORER_ALIASES = {"llm-judge": "llm_judge", "judge": "llm_judge", "number": "numeric", "includes": "contains"}
#: The bundled task sets' folder, beside this module (package data).
BUNDLED_FOLDER = "task_sets"
_FIELDS = {"id", "prompt", "messages", "expected", "scorer", "aliases", "pattern", "tolerance", "case_sensitive",
           "system", "meta"}


class TaskError(ValueError):
    """A task file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Task:
    id: str
    prompt: str
    expected: str
    scorer: str = "exact"
    task_set: str = ""
    aliases: tuple[str, ...] = ()
    pattern: str | None = None
    tolerance: float | None = None
    case_sensitive: bool = False
    system: str | None = None
    messages_override: tuple[dict[str, Any], ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def messages(self) -> list[dict[str, Any]]:
        if self.messages_override is not None:
            return [dict(m) for m in self.messages_override]
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.prompt})
        return messages

    @property
    def question(self) -> str:
        """The text a judge sees as the question (the last user message)."""
        if self.messages_override is not None:
            for message in reversed(self.messages_override):
                if message.get("role") == "user" and isinstance(message.get("content"), str):
                    return message["content"]
        return self.prompt


def bundled_task_sets() -> list[str]:
    """Names of the task sets shipped with the package."""
    folder = resources.files("composite_llm.eval") / BUNDLED_FOLDER
    return sorted(p.name[: -len(".jsonl")] for p in folder.iterdir() if p.name.endswith(".jsonl"))


def _bundled_text(name: str) -> str | None:
    entry = resources.files("composite_llm.eval") / BUNDLED_FOLDER / f"{name}.jsonl"
    return entry.read_text(encoding="utf-8") if entry.is_file() else None


def parse_task(data: Any, *, task_set: str, where: str) -> Task:
    if not isinstance(data, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise TaskError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})")
    task_id = str(data.get("id") or "").strip()
    if not task_id:
        raise TaskError(f"{where}: missing id")
    messages = data.get("messages")
    prompt = data.get("prompt")
    if messages is None and not isinstance(prompt, str):
        raise TaskError(f"{where} ({task_id}): needs a prompt (string) or messages (list)")
    if messages is not None and (not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages)):
        raise TaskError(f"{where} ({task_id}): messages must be a list of message objects")
    if "expected" not in data or data["expected"] is None:
        raise TaskError(f"{where} ({task_id}): missing expected")
    scorer = str(data.get("scorer") or "exact").strip().lower()
    scorer = SCORER_ALIASES.get(scorer, scorer)
    if scorer not in SCORER_NAMES:
        raise TaskError(f"{where} ({task_id}): unknown scorer {scorer!r} (known: {', '.join(SCORER_NAMES)})")
    expected = data["expected"]
    expected_text = json.dumps(expected) if isinstance(expected, bool) else str(expected)
    aliases = data.get("aliases") or []
    if isinstance(aliases, str) or not isinstance(aliases, list):
        raise TaskError(f"{where} ({task_id}): aliases must be a list of strings")
    pattern = data.get("pattern")
    tolerance = data.get("tolerance")
    case_sensitive = bool(data.get("case_sensitive", False))
    if scorer == "regex":
        try:
            re.compile(pattern or expected_text)
        except re.error as exc:
            raise TaskError(f"{where} ({task_id}): bad regular expression: {exc}") from None
    if scorer == "numeric":
        from .scorers import parse_number

        if parse_number(expected_text) is None:
            raise TaskError(f"{where} ({task_id}): expected {expected_text!r} is not a number (scorer numeric)")
        if tolerance is not None and (not isinstance(tolerance, (int, float)) or tolerance < 0):
            raise TaskError(f"{where} ({task_id}): tolerance must be a number >= 0")
    return Task(
        id=task_id,
        prompt=prompt if isinstance(prompt, str) else "",
        expected=expected_text,
        scorer=scorer,
        task_set=task_set,
        aliases=tuple(str(a) for a in aliases),
        pattern=pattern,
        tolerance=float(tolerance) if tolerance is not None else None,
        case_sensitive=case_sensitive,
        system=data.get("system"),
        messages_override=tuple(messages) if messages is not None else None,
        meta=dict(data.get("meta") or {}),
    )


def parse_tasks(text: str, *, task_set: str, origin: str) -> list[Task]:
    tasks: list[Task] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("//") or stripped.startswith("#"):
            continue
        where = f"{origin}:{number}"
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{where}: not valid JSON: {exc.msg}") from None
        task = parse_task(data, task_set=task_set, where=where)
        if task.id in seen:
            raise TaskError(f"{where}: duplicate task id {task.id!r}")
        seen.add(task.id)
        tasks.append(task)
    if not tasks:
        raise TaskError(f"{origin}: no tasks")
    return tasks


def load_task_set(spec: str) -> list[Task]:
    """One task set: a bundled name or a path to a JSONL file."""
    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.is_file():
        return parse_tasks(path.read_text(encoding="utf-8"), task_set=path.stem, origin=str(path))
    text = _bundled_text(spec) if re.fullmatch(r"[\w.-]+", spec) else None
    if text is None:
        raise TaskError(f"no task set {spec!r}: not a file, and the bundled sets are {', '.join(bundled_task_sets())}")
    return parse_tasks(text, task_set=spec, origin=f"bundled:{spec}")


def load_tasks(specs: str | Sequence[str], *, limit: int | None = None) -> list[Task]:
    """Task sets in order (comma-separated or a list); `limit` keeps the first N tasks of each set.

    Task ids must be unique across the sets (results are keyed by (model, task id)).
    """
    names: Iterable[str] = specs.split(",") if isinstance(specs, str) else specs
    tasks: list[Task] = []
    owner: dict[str, str] = {}
    for name in (n.strip() for n in names):
        if not name:
            continue
        chunk = load_task_set(name)
        if limit is not None:
            chunk = chunk[: max(0, limit)]
        for task in chunk:
            if task.id in owner:
                raise TaskError(f"task id {task.id!r} is in both {owner[task.id]} and {task.task_set}; ids must be "
                                "unique across the sets of one run")
            owner[task.id] = task.task_set
        tasks.extend(chunk)
    if not tasks:
        raise TaskError("no tasks selected")
    return tasks
