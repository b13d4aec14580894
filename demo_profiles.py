#!/usr/bin/env python3
"""Run every profile that can run here on one task and print the composite_llm_research-style SUMMARY.

    python demo_profiles.py                       # all runnable profiles
    python demo_profiles.py --only self_moa_smollm2,moa_light --task "What is 17*23?"
    python demo_profiles.py --list                # what is runnable, and why the others are not

A profile can run when every `os.environ/NAME` it needs is set, every `local/...` model it uses is
installed, and every CLI agent it uses is on PATH. The others are listed with the reason they were skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from demo import DEFAULT_TASK, cerebras_key, run_one  # noqa: E402


def _env_refs(value: Any) -> set[str]:
    if isinstance(value, str) and value.startswith("os.environ/"):
        return {value[len("os.environ/"):]}
    if isinstance(value, dict):
        return set().union(*(_env_refs(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_env_refs(v) for v in value)) if value else set()
    return set()


def why_not_runnable(profile: Any, ready_local: set[str]) -> str | None:
    """None when the profile can run here, else the reason it cannot."""
    from composite_llm.profiles import iter_nodes

    nodes = list(iter_nodes(profile.topology))
    missing_env = set()
    for node in nodes:
        missing_env |= {name for name in _env_refs(node.params) if not os.environ.get(name)}
        if node.provider:
            bundle = profile.providers[node.provider].litellm_params
            missing_env |= {name for name in _env_refs(bundle) if not os.environ.get(name)}
    if missing_env:
        return "needs " + ", ".join(sorted(missing_env))
    missing_local = sorted({n.model for n in nodes if n.model.startswith("local/") and n.model not in ready_local})
    if missing_local:
        return "local model not installed: " + ", ".join(missing_local) + " (see `composite-llm models`)"
    if profile.strategy.name == "composer_cli":
        spec = profile.topology.resolved_spec()
        if not any(shutil.which(c) for c in spec.command):
            return f"CLI not on PATH: {' or '.join(spec.command)}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=DEFAULT_TASK)
    parser.add_argument("--only", help="comma-separated profile names")
    parser.add_argument("--list", action="store_true", help="list profiles and whether they can run, then exit")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)

    import litellm

    import composite_llm
    from composite_llm.local.inventory import inventory
    from composite_llm.profiles import REGISTRY
    from scripts.demo_summary import summary

    litellm.suppress_debug_info = True
    cerebras_key()  # maps LITELLM_API_KEY to Cerebras, as demo.py does
    composite_llm.register()
    ready_local = {row.model for row in inventory() if row.ready}
    wanted = set(args.only.split(",")) if args.only else None
    runnable, skipped = [], []
    for name in REGISTRY.names():
        if wanted is not None and name not in wanted:
            continue
        reason = why_not_runnable(REGISTRY.get(name), ready_local)
        (skipped if reason else runnable).append((name, reason))
    for name, reason in skipped:
        print(f"  – {name}: skipped ({reason})")
    if args.list:
        for name, _ in runnable:
            print(f"  ✓ {name}: runnable")
        return 0
    if not runnable:
        print("No profile can run here: set the keys above or run `make demo` to install the local models.")
        return 1
    outcomes = [run_one(name, f"composite/profile/{name}", args.task, max_tokens=args.max_tokens, quiet=args.quiet)
                for name, _ in runnable]
    print(summary(args.task, outcomes))
    return 0 if any(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
