"""`composite-llm tune`: search composite topologies on task sets within a budget (eval/tune.py).

Registered in composite_llm/cli.py like `eval`; only argparse runs at import.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

NAME = "tune"
HELP = "search composite topologies on your tasks within a budget; print the Pareto frontier; write a profile"
DEFAULT_OUT = "tune-results"

DESCRIPTION = """\
Evaluate a search space of topologies (strategies x members x sample counts x temperatures) on task
sets, in rounds, eliminating candidates another one clearly beats (paired exact McNemar test) at no
higher tokens or latency; print the accuracy-tokens-latency-cost Pareto frontier, each candidate paired
against the best single model; write the chosen topology as a profile YAML.

  composite-llm tune --tasks wordproblems,arithmetic --models local/qwen2.5-coder-0.5b,local/qwen2.5-coder-1.5b \\
      --budget calls=3000 --name tuned_local

Then: composite/profile/tuned_local (put the YAML in ./profiles/ or pass it with --profiles / the
proxy's general_settings.composite_llm). Results are appended to OUT/results.jsonl: rerun the same
command to resume. Budgets: calls=N (sub-calls), dollars=X, minutes=M (summed request time)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .tune import STRATEGIES

    parser.add_argument("--tasks", required=True, help="task sets, comma-separated: bundled names or JSONL paths")
    parser.add_argument("--models", required=True, help="candidate models, comma-separated LiteLLM model strings")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"strategies to search, comma-separated (default: all of {', '.join(STRATEGIES)})")
    parser.add_argument("--samples", default="3", help="sample counts for sampled topologies, e.g. 3,5")
    parser.add_argument("--temperatures", default="0.7", help="sampling temperatures, e.g. 0.5,0.9")
    parser.add_argument("--rounds", type=int, default=1, help="debate revision rounds (default 1)")
    parser.add_argument("--budget", help="calls=N, dollars=X or minutes=M (default: no budget, every task runs)")
    parser.add_argument("--round-size", type=int, default=8, help="tasks per elimination round (default 8)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="eliminate a candidate when another beats it with paired p below this (default 0.05)")
    parser.add_argument("--limit", type=int, help="first N tasks of each set")
    parser.add_argument("--seed", type=int, default=0, help="task order seed (default 0)")
    parser.add_argument("--name", default="tuned", help="name of the profile written (default: tuned)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (results.jsonl, tune.json, report.md, "
                                                           "<name>.yaml)")
    parser.add_argument("--concurrency", type=int, help="requests in flight (default: 1 with local models, else 4)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="extra parameter for every call, e.g. --param api_base=http://127.0.0.1:8000/v1")
    parser.add_argument("--profiles", help="profile YAML file or folder (for composite/profile/... candidates)")
    parser.add_argument("--no-warmup", action="store_true", help="do not load local models before timing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fail(message: str) -> int:
    print(f"composite-llm tune: {message}", file=sys.stderr)
    return 2


def _numbers(text: str, kind: type, what: str) -> list[Any]:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--{what} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise ValueError(f"--{what} is empty")
    return values


def parse_budget(text: str | None) -> Any:
    from .tune import BUDGET_KINDS, Budget

    if not text:
        return None
    kind, sep, value = text.partition("=")
    if not sep or kind.strip() not in BUDGET_KINDS:
        raise ValueError(f"--budget {text!r}: expected calls=N, dollars=X or minutes=M")
    try:
        return Budget(kind.strip(), float(value))
    except ValueError as exc:
        raise ValueError(f"--budget {text!r}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from .command import parse_params
    from .tasks import TaskError, load_tasks
    from .tune import search_space

    try:
        tasks = load_tasks(args.tasks, limit=args.limit)
        params = parse_params(args.param)
        budget = parse_budget(args.budget)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        candidates = search_space(models, strategies=[s.strip().replace("-", "_") for s in args.strategies.split(",")
                                                      if s.strip()],
                                  samples=_numbers(args.samples, int, "samples"),
                                  temperatures=_numbers(args.temperatures, float, "temperatures"), rounds=args.rounds)
    except (TaskError, ValueError) as exc:
        return _fail(str(exc))
    if any(t.scorer == "llm_judge" for t in tasks):
        return _fail("tune needs tasks with an automatic scorer (llm_judge tasks are not supported)")

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import asyncio

    import litellm

    import composite_llm

    from ..errors import CompositeConfigError
    from . import report
    from .runner import RESULTS_FILE, RunOptions, local_models_involved, read_results, run_eval, warm_up
    from .tune import frontier_table, interleave, profile_document, tune

    litellm.suppress_debug_info = True
    try:
        composite_llm.register(args.profiles)
    except (CompositeConfigError, OSError) as exc:
        return _fail(str(exc))
    specs = [c.spec() for c in candidates]
    local = [m for m in models if m.startswith("local/")] or local_models_involved(specs)
    concurrency = args.concurrency or (1 if local else 4)
    options = RunOptions(concurrency=concurrency, timeout=args.timeout, params=params,
                         progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    ordered = interleave(tasks, seed=args.seed)
    started = time.perf_counter()
    print(f"composite-llm tune: {len(candidates)} candidates, {len(tasks)} tasks, rounds of {args.round_size}, "
          f"budget {args.budget or 'none'}; results in {results_path}", file=sys.stderr)

    async def run_round(round_specs: list[Any], chunk: list[Any]) -> None:
        await run_eval(round_specs, chunk, results_path, options)

    async def main() -> Any:
        if local and not args.no_warmup:
            took = await warm_up(local, timeout=args.timeout)
            print("warm-up (not timed): " + ", ".join(f"{m} {s:.1f}s" for m, s in took.items()), file=sys.stderr)
        return await tune(candidates, ordered, run_round=run_round, read_rows=lambda: read_results(results_path),
                          budget=budget, round_size=args.round_size, alpha=args.alpha,
                          log=lambda line: print(line, file=sys.stderr))

    try:
        outcome = asyncio.run(main())
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished pairs are saved in {results_path}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except ValueError as exc:
        return _fail(str(exc))

    rows = [r for r in read_results(results_path) if r["task_id"] in outcome.task_ids]
    labels = [c.label for c in candidates]
    report.write_outputs(out, [r for r in rows if r["model"] in labels], order=labels,
                         meta={"command": "tune", "tasks": args.tasks, "items": outcome.items})
    print(f"\n{outcome.items} items in {outcome.rounds} rounds; {outcome.stop_reason}"
          + (f"; spent {outcome.budget.describe(outcome.spent)}" if outcome.budget else ""))
    for gone in outcome.eliminated:
        print(f"eliminated in round {gone.round}: {gone.label} (by {gone.by}, {gone.wins}-{gone.losses}, "
              f"p={gone.p_value:.3g})")
    print(f"\nPareto frontier (accuracy, tokens, latency, cost) of the {len(outcome.survivors)} survivors on the "
          f"{outcome.items} items they all answered:\n")
    print(frontier_table(outcome))
    document: dict[str, Any] = {
        "tasks": args.tasks, "items": outcome.items, "rounds": outcome.rounds, "stop_reason": outcome.stop_reason,
        "budget": {"kind": outcome.budget.kind, "limit": outcome.budget.limit, "spent": outcome.spent}
        if outcome.budget else None,
        "reference": outcome.reference,
        "eliminated": [vars(e) for e in outcome.eliminated],
        "summaries": [s.as_dict() for s in outcome.summaries],
        "frontier": [s.model for s in outcome.frontier],
        "paired": {label: p.as_dict() for label, p in outcome.paired.items()},
        "chosen": outcome.chosen.model if outcome.chosen else None,
        "seconds_this_invocation": round(time.perf_counter() - started, 1),
    }
    if outcome.chosen is None:
        print("\nno composite is on the frontier: a single model is at least as accurate, cheaper and faster; "
              "no profile written")
    else:
        import yaml

        by_label = {c.label: c for c in candidates}
        chosen = by_label[outcome.chosen.model]
        profile = profile_document(args.name, chosen, outcome.chosen, outcome, args.tasks)
        path = out / f"{args.name}.yaml"
        path.write_text(f"# written by composite-llm tune ({time.strftime('%Y-%m-%d %H:%M')})\n"
                        + yaml.safe_dump(profile, sort_keys=False, allow_unicode=True), encoding="utf-8")
        document["profile"] = str(path)
        result = outcome.paired.get(chosen.label)
        if result is not None and not result.significant:
            print(f"\nnote: {chosen.label} is not significantly better than {outcome.reference} "
                  f"({result.wins} wins, {result.losses} losses, p={result.p_value:.3g})")
        print(f"\nchosen: {chosen.label}\nprofile: {path} -> model composite/profile/{args.name} "
              f"(copy it to ./profiles/ or pass --profiles {path})")
    (out / "tune.json").write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n",
                                   encoding="utf-8")
    return 0
