"""`python -m composite_llm.local [--json]`: the local-model inventory of this machine."""

from __future__ import annotations

import argparse

from composite_llm.local.inventory import print_inventory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m composite_llm.local", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    print_inventory(as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
