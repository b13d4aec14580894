"""`python -m composite_llm.local [--json]`: the local-model inventory of this machine (`composite-llm models`)."""

from __future__ import annotations

import argparse

from composite_llm.local import command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m composite_llm.local", description=command.DESCRIPTION)
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
