"""The CLI versions the test suite drives for real, and where `make cli-agents` installs them.

Versions move fast and flags and event shapes move with them: `composite-llm doctor` compares what
is installed with these, and `make test` installs exactly these from npm into a folder keyed by the
package list (like the llama.cpp wheelhouse), so a new pin never reuses an old install. The
Makefile's ``CLI_PKGS`` must list the same packages (a test checks).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["TESTED_CLI_PACKAGES", "TESTED_VERSIONS", "npm_packages", "cli_cache_dir", "cli_cache_bin"]

#: spec name -> (npm package, version tested). Cursor's `agent` is not on npm (stand-in tests only).
TESTED_CLI_PACKAGES: dict[str, tuple[str, str]] = {
    "claude": ("@anthropic-ai/claude-code", "2.1.197"),
    "codex": ("@openai/codex", "0.171.0"),
    "gemini": ("@google/gemini-cli", "0.61.0"),
}

#: spec name -> version tested.
TESTED_VERSIONS: dict[str, str] = {name: version for name, (_, version) in TESTED_CLI_PACKAGES.items()}


def npm_packages() -> str:
    """``pkg@version`` list in the Makefile's order (the cache folder's key)."""
    return " ".join(f"{pkg}@{version}" for pkg, version in TESTED_CLI_PACKAGES.values())


def cli_cache_dir() -> Path:
    """The folder `make cli-agents` installs into: ``$COMPOSITE_LLM_CACHE`` (default
    ``~/.cache/composite-llm``) ``/cli-agents/<first 16 hex of sha256(package list)>``."""
    root = os.environ.get("COMPOSITE_LLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "composite-llm")
    key = hashlib.sha256(npm_packages().encode()).hexdigest()[:16]
    return Path(root) / "cli-agents" / key


def cli_cache_bin() -> Path | None:
    """``node_modules/.bin`` of a complete install (its ``.installed`` stamp exists), else None."""
    folder = cli_cache_dir()
    return folder / "node_modules" / ".bin" if (folder / ".installed").is_file() else None
