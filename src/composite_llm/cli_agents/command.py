"""`composite-llm doctor`: which coding-agent CLIs are installed, their versions against the versions
tested, and what is missing (key, base URL, trust) before the first `composite/cli/...` request.

Registered in composite_llm/cli.py (`COMMAND_MODULES`). The checks live in `doctor.py` beside it.
"""

from __future__ import annotations

import argparse
import json

NAME = "doctor"
HELP = "check the coding-agent CLIs (cursor, claude, codex, gemini): installed, version, key, base URL, trust"
DESCRIPTION = (HELP + ". Exit status 0 when every CLI asked about (default: all) is ready, else 1.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clis", nargs="*", metavar="CLI", help="only these specs (cursor, claude, codex, gemini)")
    parser.add_argument("--json", action="store_true", help="print the statuses as JSON")


def run(args: argparse.Namespace) -> int:
    from .builtin_specs import BUILTIN_SPECS, SPEC_ALIASES
    from .doctor import diagnose_all, render

    names = [SPEC_ALIASES.get(n, n) for n in args.clis]
    unknown = [n for n in names if n not in BUILTIN_SPECS]
    if unknown:
        print(f"composite-llm doctor: unknown CLI spec(s) {', '.join(unknown)}; known: "
              f"{', '.join(sorted(BUILTIN_SPECS))}")
        return 2
    statuses = diagnose_all(names=names or None)
    print(json.dumps([s.as_dict() for s in statuses], indent=2) if args.json else render(statuses))
    return 0 if all(s.ready for s in statuses) else 1
