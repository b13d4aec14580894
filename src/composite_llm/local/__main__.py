"""`python -m composite_llm.local [--json]`: the local-model inventory of this machine."""

from __future__ import annotations

import argparse
import json
import sys

from composite_llm.local.inventory import format_table, inventory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m composite_llm.local", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = inventory()
    if args.json:
        json.dump([row.as_dict() for row in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
