"""`composite-llm doctor`: is each coding-agent CLI ready to serve `composite/cli/<spec>/<model>`?

For every built-in spec: the executable found on PATH (or the `make cli-agents` folder when it is not),
its version against the version tested (:mod:`.versions`), the key variable, the base URL and how it
reaches the CLI, trust and state handling. A user sees the problem here, before the first request
fails with a CLI's own error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .builtin_specs import BUILTIN_SPECS
from .output import strip_ansi
from .spec import CLISpec
from .versions import TESTED_CLI_PACKAGES, TESTED_VERSIONS, cli_cache_bin

__all__ = ["CLIStatus", "diagnose", "diagnose_all", "render", "parse_version"]

_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_VERSION_TIMEOUT_S = 30.0

#: What each built-in does about trust prompts, which would block a headless run.
_TRUST_NOTES = {
    "cursor": "--trust is passed (headless runs block without it)",
    "claude": "print mode (-p) skips the workspace trust dialog",
    "codex": "--skip-git-repo-check is passed (each request runs in a fresh, non-git dir)",
    "gemini": "--skip-trust is passed (each request runs in a fresh dir, which Gemini never trusts: exit 55)",
}


@dataclass
class CLIStatus:
    """The readiness of one CLI. ``problems`` are what stops it from working; ``notes`` are facts."""

    spec: str
    executable: str | None = None
    version: str | None = None
    tested_version: str | None = None
    npm_package: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.executable is not None and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ready": self.ready}


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = _VERSION_RE.search(text)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def _run_version(executable: str, environ: Mapping[str, str]) -> str:
    """``<cli> --version`` with a throwaway HOME and TMPDIR, so asking writes nothing to the real home."""
    with tempfile.TemporaryDirectory(prefix="composite-llm-doctor-") as home:
        env = {"PATH": environ.get("PATH", os.defpath), "HOME": home, "TMPDIR": home, "CODEX_HOME": home,
               "LANG": environ.get("LANG", "C.UTF-8")}
        try:
            out = subprocess.run([executable, "--version"], capture_output=True, text=True, env=env,
                                 stdin=subprocess.DEVNULL, timeout=_VERSION_TIMEOUT_S, start_new_session=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"error: {exc}"
    return strip_ansi(out.stdout.strip() or out.stderr.strip())


def diagnose(spec: CLISpec, environ: Mapping[str, str] | None = None) -> CLIStatus:
    environ = os.environ if environ is None else environ
    package = TESTED_CLI_PACKAGES.get(spec.name)
    status = CLIStatus(spec=spec.name, tested_version=TESTED_VERSIONS.get(spec.name),
                       npm_package=package[0] if package else None)
    path_env = environ.get("PATH", os.defpath)
    for candidate in spec.command:
        found = shutil.which(candidate, path=path_env)
        if found:
            status.executable = found
            break
    install = (f"npm install -g {package[0]}@{package[1]}" if package
               else "see the CLI's documentation (not on npm)")
    if status.executable is None:
        cached = cli_cache_bin()
        where = ""
        if cached is not None and package and any((cached / c).exists() for c in spec.command):
            where = f"; `make cli-agents` installed it in {cached} (put that folder on PATH, or set cli_command)"
        status.problems.append(f"not found on PATH (tried {', '.join(spec.command)}); install: {install}{where}")
        return status

    raw = _run_version(status.executable, environ)
    found_version = parse_version(raw)
    status.version = ".".join(map(str, found_version)) if found_version else (raw[:80] or "unknown")
    if status.tested_version and found_version:
        tested = parse_version(status.tested_version)
        if found_version != tested:
            relation = "newer" if found_version > tested else "older"  # type: ignore[operator]
            status.notes.append(f"version {status.version} is {relation} than the version tested "
                                f"({status.tested_version}): flags and event shapes may differ")
    elif not status.tested_version:
        status.notes.append("no tested version: the spec follows the CLI's documentation")

    keys = [k for k in spec.env_keys if environ.get(k)]
    if keys:
        status.notes.append(f"key: {', '.join(keys)} (state dir per request: nothing is kept in its home)")
    else:
        status.notes.append(f"no key variable set ({', '.join(spec.env_keys)}): the CLI must be logged in "
                            "(its own login in its home dir is used; state_dir auto -> home)")
    if spec.name == "codex" and not environ.get("CODEX_API_KEY") and environ.get("OPENAI_API_KEY") \
            and not any(environ.get(n) for n in spec.base_url_sources):
        status.problems.append("OPENAI_API_KEY is set but Codex's built-in provider sends CODEX_API_KEY: set "
                               "CODEX_API_KEY, or a base URL (OPENAI_BASE_URL / cli_base_url), which gets a "
                               "provider that uses OPENAI_API_KEY")

    base = next((environ[n] for n in spec.base_url_sources if environ.get(n)), None)
    if base:
        how = f"passed as {spec.base_url_env}" if spec.base_url_env else "passed as a `-c` model provider override"
        status.notes.append(f"base URL: {base} ({how})")
    elif spec.base_url_sources or spec.base_url_env:
        names = spec.base_url_sources or [spec.base_url_env]
        status.notes.append(f"base URL: the CLI's default endpoint (set {' or '.join(names)}, or cli_base_url, "
                            "to use a LiteLLM proxy)")
    if spec.name in _TRUST_NOTES:
        status.notes.append(f"trust: {_TRUST_NOTES[spec.name]}")
    if spec.no_session_args:
        status.notes.append(f"sessions: {' '.join(spec.no_session_args)} unless keep_sessions: true")
    telemetry = [f"{k}={v}" for k, v in spec.default_env.items()]
    telemetry += [a for a in spec.args if a.startswith(("analytics.", "check_for_update"))]
    if telemetry:
        status.notes.append("telemetry off: " + ", ".join(telemetry))
    if package and not shutil.which("node", path=path_env):
        status.problems.append("`node` is not on PATH: the npm package needs Node.js >= 20")
    return status


def diagnose_all(environ: Mapping[str, str] | None = None, names: list[str] | None = None) -> list[CLIStatus]:
    specs = [BUILTIN_SPECS[n] for n in (names or list(BUILTIN_SPECS))]
    return [diagnose(spec, environ) for spec in specs]


def render(statuses: list[CLIStatus]) -> str:
    lines = []
    for s in statuses:
        state = "ready" if s.ready else ("missing" if s.executable is None else "problem")
        tested = f" (tested: {s.tested_version})" if s.tested_version else ""
        head = f"{s.spec}: {state}"
        if s.executable:
            head += f" - {s.executable}, version {s.version}{tested}"
        lines.append(head)
        lines += [f"  ! {p}" for p in s.problems]
        lines += [f"  - {n}" for n in s.notes]
    return "\n".join(lines)
