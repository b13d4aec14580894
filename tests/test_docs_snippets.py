"""Every fenced code block of README.md, PROXY_USAGE.md and docs/*.md works as written.

The harness (documented in TESTING.md, "Documentation snippets"):

- `python` blocks run in this process, each with `exec` in a fresh namespace (so each block must carry
  its own imports), with the repository root as working directory (so `./profiles/` is found), in a
  worker thread with a time limit;
- the OpenAI-compatible providers the examples use are pointed at `FakeOpenAIServer` through the
  variables LiteLLM itself reads (`OPENAI_API_BASE`, `CEREBRAS_API_BASE`, `GROQ_API_BASE`), with dummy
  keys (`OPENAI_API_KEY`, `CEREBRAS_API_KEY`, `GROQ_API_KEY`, `LITELLM_MASTER_KEY`); every model answers
  "Answer from <model>."; a composite answer that comes back degraded (a member failed, e.g. a provider
  the fake server cannot speak for) fails the block;
- shell blocks run only when marked `<!-- docs-test: run -->`, with `bash -euo pipefail` at the
  repository root, `.venv/bin/` meaning this interpreter's bin folder and `PYTHONPATH` this checkout's
  `src`; unmarked shell blocks are listed as skipped (they install, start servers or run for minutes);
- `yaml` blocks must parse, and a document with `profiles:` must load (`load_profiles`, with any
  `provider:` bundle it names but does not define stubbed); `json` blocks are JSON Lines;
- `<!-- docs-test: skip: reason -->` on the line before a block skips it; the reason is required.

A failure names the block as `file:line`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from composite_llm import load_profiles, router_members
from composite_llm.profiles import REGISTRY

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "PROXY_USAGE.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^\n]*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<verb>run|skip)\b\s*[:—-]?\s*(?P<reason>.*?)\s*-->\s*$")
SHELL = {"bash", "sh", "shell", "console"}
PYTHON_TIME_LIMIT_S = 60
SHELL_TIME_LIMIT_S = 120


@dataclass
class Snippet:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    verb: str | None  # "run", "skip" or None (no marker)
    reason: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def extract(path: Path) -> list[Snippet]:
    """The fenced blocks of a Markdown file, with the marker (if any) on the line before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    snippets, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence = opening.group("fence")
        body, end = [], index + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence[0] * len(fence))
                                        and not lines[end].strip().strip(fence[0])):
            body.append(lines[end])
            end += 1
        previous = next((lines[k] for k in range(index - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(previous)
        snippets.append(Snippet(path, index + 1, opening.group("lang").lower(), "\n".join(body) + "\n",
                                marker.group("verb") if marker else None, marker.group("reason") if marker else ""))
        index = end + 1
    return snippets


SNIPPETS = [s for path in DOCUMENTS if path.exists() for s in extract(path)]


def _selected(kind: set[str]) -> list[Any]:
    return [pytest.param(s, id=s.where) for s in SNIPPETS if s.lang in kind]


def _skip_if_marked(snippet: Snippet) -> None:
    if snippet.verb == "skip":
        assert snippet.reason, f"{snippet.where}: a docs-test skip marker needs a reason"
        pytest.skip(f"{snippet.where}: {snippet.reason}")


@pytest.fixture()
def docs_env(server, monkeypatch):
    """The documented harness: providers pointed at the fake server, dummy keys, the repo as cwd, and
    every non-streamed `litellm.completion`/`acompletion` answer recorded (`server.answers`)."""
    import litellm

    answers: list[Any] = []
    completion, acompletion = litellm.completion, litellm.acompletion

    def recording(*args: Any, **kwargs: Any) -> Any:
        answer = completion(*args, **kwargs)
        answers.append(answer)
        return answer

    async def arecording(*args: Any, **kwargs: Any) -> Any:
        answer = await acompletion(*args, **kwargs)
        answers.append(answer)
        return answer

    monkeypatch.setattr(litellm, "completion", recording)
    monkeypatch.setattr(litellm, "acompletion", arecording)
    server.answers = answers
    key = "sk-docs-" + secrets.token_hex(12)
    for name in ("OPENAI_API_BASE", "OPENAI_BASE_URL", "CEREBRAS_API_BASE", "GROQ_API_BASE"):
        monkeypatch.setenv(name, server.base_url)
    for name in ("OPENAI_API_KEY", "CEREBRAS_API_KEY", "GROQ_API_KEY", "LITELLM_MASTER_KEY"):
        monkeypatch.setenv(name, key)
    monkeypatch.delenv("COMPOSITE_LLM_PROFILES", raising=False)
    monkeypatch.chdir(REPO)
    REGISTRY.set_explicit(None)
    yield server
    REGISTRY.set_explicit(None)
    router_members.set_router(None)  # a block may register a LiteLLM Router (README, "Members through a Router")


def _run_in_thread(code: Any, namespace: dict[str, Any], limit: float) -> BaseException | None:
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            exec(code, namespace)  # noqa: S102 - the documentation's own examples
        except BaseException as exc:  # noqa: BLE001 - reported with the block's location
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        return TimeoutError(f"still running after {limit:.0f} s")
    return outcome.get("error")


@pytest.mark.parametrize("snippet", _selected({"python", "py", "python3"}))
def test_python_snippet_runs(snippet: Snippet, docs_env) -> None:
    _skip_if_marked(snippet)
    # dont_inherit: a block runs as a script would, without this file's `from __future__ import annotations`
    # (under it, a pydantic model defined in a block could not resolve its annotations)
    code = compile(snippet.code, snippet.where, "exec", dont_inherit=True)
    error = _run_in_thread(code, {"__name__": "__docs__"}, PYTHON_TIME_LIMIT_S)
    if error is not None:
        where = "".join(traceback.format_exception(error)[-3:]) if not isinstance(error, TimeoutError) else ""
        pytest.fail(f"{snippet.where} (python) fails as written: {type(error).__name__}: {error}\n{where}",
                    pytrace=False)
    assert docs_env.requests or "litellm" not in snippet.code or "FakeOpenAIServer" in snippet.code, (
        f"{snippet.where}: calls a model but nothing reached the fake server")
    for answer in docs_env.answers:
        if not getattr(answer, "choices", None):  # a stream: its trace is in the last chunk, not checked here
            continue
        fields = getattr(getattr(answer.choices[0], "message", None), "provider_specific_fields", None) or {}
        trace = fields.get("composite") or {}
        assert not trace.get("degraded"), (f"{snippet.where}: {answer.model} answered degraded: failed "
                                           f"{trace.get('failed_members')}, dropped {trace.get('dropped_members')}")


@pytest.mark.parametrize("snippet", _selected(SHELL))
def test_shell_snippet_runs_when_marked(snippet: Snippet) -> None:
    _skip_if_marked(snippet)
    if snippet.verb != "run":
        pytest.skip(f"{snippet.where}: shell block not marked `<!-- docs-test: run -->`")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "LITELLM_MASTER_KEY": "sk-docs-" + secrets.token_hex(12), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    script = snippet.code.replace(".venv/bin/", f"{bin_dir}/")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=SHELL_TIME_LIMIT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (f"{snippet.where} (shell) exited {done.returncode}:\n{done.stdout[-2000:]}\n"
                                  f"{done.stderr[-2000:]}")


def _stub_bundles(document: dict[str, Any]) -> dict[str, Any]:
    """A profile snippet may name a provider bundle defined in another snippet: stub the missing ones."""
    named: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("provider"), str):
                named.add(value["provider"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(document.get("profiles"))
    providers = dict(document.get("providers") or {})
    for name in named - set(providers):
        providers[name] = {"litellm_params": {}}
    return {**document, "providers": providers} if providers else document


@pytest.mark.parametrize("snippet", _selected({"yaml", "yml"}))
def test_yaml_snippet_parses_and_profiles_load(snippet: Snippet) -> None:
    _skip_if_marked(snippet)
    try:
        document = yaml.safe_load(snippet.code)
    except yaml.YAMLError as exc:
        pytest.fail(f"{snippet.where} (yaml) does not parse: {exc}", pytrace=False)
    if isinstance(document, dict) and "profiles" in document and "model_list" not in document:
        try:
            load_profiles(_stub_bundles(document))
        except Exception as exc:  # noqa: BLE001 - reported with the block's location
            pytest.fail(f"{snippet.where} (yaml) profiles do not load: {exc}", pytrace=False)


@pytest.mark.parametrize("snippet", _selected({"json", "jsonl"}))
def test_json_snippet_parses(snippet: Snippet) -> None:
    _skip_if_marked(snippet)
    for offset, line in enumerate(snippet.code.splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as exc:
                pytest.fail(f"{snippet.where} (json) line {offset} is not JSON: {exc}", pytrace=False)


def test_every_block_is_found_and_markers_are_well_formed() -> None:
    """The extractor sees the blocks (a broken fence would hide the rest of a file), and every marker
    sits right before a block and says run or skip with a reason."""
    assert any(s.lang == "python" for s in SNIPPETS if s.path.name == "README.md")
    for path in DOCUMENTS:
        lines = path.read_text(encoding="utf-8").splitlines()
        fences = sum(1 for line in lines if FENCE.match(line))
        assert fences % 2 == 0, f"{path.relative_to(REPO)}: unbalanced code fences"
        for number, line in enumerate(lines, start=1):
            if "docs-test:" not in line:
                continue
            marker = MARKER.match(line)
            assert marker, f"{path.relative_to(REPO)}:{number}: malformed docs-test marker"
            following = next((lines[k] for k in range(number, len(lines)) if lines[k].strip()), "")
            assert FENCE.match(following), f"{path.relative_to(REPO)}:{number}: marker not followed by a code block"
            if marker.group("verb") == "skip":
                assert marker.group("reason"), f"{path.relative_to(REPO)}:{number}: skip marker without a reason"
