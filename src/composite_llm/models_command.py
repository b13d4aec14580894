"""`composite-llm models`: the offline local models, which are installed here and how to get the rest.

Registered in composite_llm/cli.py. The inventory (`composite_llm.local.inventory`) is imported in `run`:
the `composite_llm.local` package imports litellm, which `composite-llm --help` must not pay for.
"""

from __future__ import annotations

import argparse
import os
import sys

NAME = "models"
HELP = "list the offline local models: installed, installable, and the command to install them"
DESCRIPTION = (HELP + ". The same table as `python -m composite_llm.local`; --json for scripts.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # the package imports litellm: no download
    try:
        from .local.inventory import print_inventory
    except ImportError as exc:  # pragma: no cover - the local package is part of the distribution
        print(f"composite-llm models: local models unavailable: {exc}", file=sys.stderr)
        return 1
    print_inventory(as_json=args.json)
    return 0

