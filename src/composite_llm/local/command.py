"""`composite-llm models`: the offline local models, which are installed here and how to get the rest.

Registered in composite_llm/cli.py (`COMMAND_MODULES`); `python -m composite_llm.local` runs the same
command. Only argparse is imported here: the inventory is imported in `run`, so `composite-llm --help`
stays fast.
"""

from __future__ import annotations

import argparse

NAME = "models"
HELP = "list the offline local models: installed, installable, and the command to install them"
DESCRIPTION = (HELP + ". The same table as `python -m composite_llm.local`; --json for scripts.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    from .inventory import print_inventory

    print_inventory(as_json=args.json)
    return 0

