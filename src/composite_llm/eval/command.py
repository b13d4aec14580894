"""`composite-llm eval`: run task sets against models and composites, then compare them.

Registered in composite_llm/cli.py (NAME, HELP, DESCRIPTION, add_arguments, run). Only argparse runs at
import; litellm, the profiles and matplotlib are imported inside `run`, so `composite-llm --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

NAME = "eval"
HELP = "compare models and composites on task sets (accuracy, latency, tokens, cost)"
DEFAULT_OUT = "eval-results"
PLOT_FILE = "eval_plot.png"

DESCRIPTION = """\
Run task sets against models and composites and compare them: accuracy with a 95% Wilson interval,
mean and p95 latency, tokens and cost per model, written as a table, JSON, CSV and a PNG plot.

  composite-llm eval --tasks arithmetic --limit 10 \\
      --models local/qwen2.5-coder-1.5b,composite/profile/moa_local --baselines

Results are appended to OUT/results.jsonl one line per (model, task): rerun the same command to resume
an interrupted run (done pairs are skipped; failed ones are retried). --baselines adds each member of
every composite alone, then, for the best member (decided on this run's results): Self-MoA of it, and
it with the strategies' reasoning instruction, as one call (cot) and as self-consistency (cot-sc).
The report pairs every model item by item with the best single model: wins, losses and the exact
McNemar (two-sided sign) test on the items where they differ.
Bundled task sets: arithmetic, letters, factual, reasoning, wordproblems (--list-tasks); or pass a JSONL file."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", help="task sets, comma-separated: bundled names or JSONL paths")
    parser.add_argument("--models", help="models to compare, comma-separated LiteLLM model strings "
                                         "(local/..., openai/..., composite/profile/<name>, ...)")
    parser.add_argument("--limit", type=int, help="first N tasks of each set")
    parser.add_argument("--baselines", action="store_true",
                        help="add each composite member alone, then Self-MoA of the best member and the best member "
                             "with the strategies' reasoning instruction (cot, cot-sc)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (results.jsonl, summary.json/csv, "
                                                           "results.csv, report.md, eval_plot.png)")
    parser.add_argument("--concurrency", type=int,
                        help="requests in flight (default: 1 when local models are involved, since they run "
                             "one generation at a time and queueing would count as latency; else 4)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--judge", help="judge model for tasks scored by llm_judge")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="extra parameter for every call (VALUE parsed as JSON when it can be), e.g. "
                             "--param temperature=0 --param api_base=http://127.0.0.1:8000/v1; repeatable")
    parser.add_argument("--profiles", help="profile YAML file or folder (searched before ./profiles/)")
    parser.add_argument("--trace-log", help="also write every composite request's trace to this JSONL file "
                                            "(for `composite-llm dashboard`)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="do not load local models before timing (the first item then includes load time)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--keep-errors", action="store_true",
                        help="on resume, do not retry pairs whose last attempt failed")
    parser.add_argument("--list-tasks", action="store_true", help="list the bundled task sets and exit")


def parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def _list_tasks() -> int:
    from .tasks import bundled_task_sets, load_task_set

    for name in bundled_task_sets():
        tasks = load_task_set(name)
        scorers = sorted({t.scorer for t in tasks})
        print(f"{name:<12} {len(tasks):>3} tasks  scorers: {', '.join(scorers)}")
    return 0


def _fail(message: str) -> int:
    print(f"composite-llm eval: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.list_tasks:
        return _list_tasks()
    if not args.tasks or not args.models:
        return _fail("--tasks and --models are required (see --help; --list-tasks shows the bundled sets)")
    from .tasks import TaskError, load_tasks

    try:
        tasks = load_tasks(args.tasks, limit=args.limit)
        params = parse_params(args.param)
    except (TaskError, ValueError) as exc:
        return _fail(str(exc))
    if any(t.scorer == "llm_judge" for t in tasks) and not args.judge:
        return _fail("some tasks use the llm_judge scorer: pass --judge MODEL")

    if args.trace_log:
        os.environ["COMPOSITE_LLM_TRACE_LOG"] = str(Path(args.trace_log).expanduser().resolve())
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import asyncio

    import litellm

    import composite_llm

    from ..errors import CompositeConfigError
    from . import report
    from .baselines import (cot_specs, expand_baselines, parse_models, pick_best, self_moa_candidates,
                            self_moa_spec)
    from .runner import (RESULTS_FILE, RunOptions, done_keys, latest_results, local_models_involved, plan,
                         read_results, run_eval, warm_up)

    litellm.suppress_debug_info = True
    try:
        composite_llm.register(args.profiles)
        requested = parse_models(args.models)
        specs = expand_baselines(requested) if args.baselines else list(requested)
    except (CompositeConfigError, OSError) as exc:
        return _fail(str(exc))

    local = local_models_involved(specs)
    concurrency = args.concurrency or (1 if local else 4)
    options = RunOptions(concurrency=concurrency, timeout=args.timeout, params=params, judge=args.judge,
                         progress=not args.no_progress, retry_errors=not args.keep_errors)
    out = Path(args.out)
    results_path = out / RESULTS_FILE
    task_ids = {t.id for t in tasks}
    started = time.perf_counter()
    print(f"composite-llm eval: {len(tasks)} tasks × {len(specs)} models, concurrency {concurrency}, "
          f"results in {results_path}", file=sys.stderr)

    async def main() -> None:
        pending = plan(specs, tasks, done_keys(read_results(results_path), retry_errors=options.retry_errors))
        if local and pending and not args.no_warmup:
            took = await warm_up(local, timeout=args.timeout)
            print("warm-up (not timed): " + ", ".join(f"{m} {s:.1f}s" for m, s in took.items()), file=sys.stderr)
        await run_eval(specs, tasks, results_path, options)
        if args.baselines:
            candidates = self_moa_candidates(requested)
            best = pick_best(read_results(results_path), candidates, task_ids)
            if best is None:
                print("no member results: Self-MoA baseline skipped", file=sys.stderr)
                return
            listed = {s.label for s in specs}
            extra = [s for s in (self_moa_spec(best), *cot_specs(best)) if s.label not in listed]
            print(f"best member: {best}; running " + ", ".join(s.label for s in extra), file=sys.stderr)
            specs.extend(extra)
            await run_eval(extra, tasks, results_path, options)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished pairs are saved in {results_path}; rerun the same command to resume",
              file=sys.stderr)
        return 130

    labels = [s.label for s in specs]
    rows = [r for r in read_results(results_path) if r["model"] in labels and r["task_id"] in task_ids]
    meta = {"tasks": args.tasks, "limit": args.limit, "task_count": len(tasks), "models": labels,
            "concurrency": concurrency, "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds_this_invocation": round(time.perf_counter() - started, 1)}  # a resumed run: only its part
    paths = report.write_outputs(out, rows, order=labels, meta=meta)
    summaries = report.summarize(rows, order=labels)
    print(report.format_table(summaries))
    paired = report.paired_section(rows, order=labels)
    if paired:
        print(paired, end="")
    if not args.no_plot:
        from .plot import PlotUnavailable, plot_summaries

        try:
            paths["plot"] = plot_summaries(summaries, out / PLOT_FILE, title=f"{args.tasks} ({len(tasks)} tasks)")
        except PlotUnavailable as exc:
            print(f"plot skipped: {exc}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    latest = list(latest_results(rows).values())  # a pair retried successfully no longer counts as failed
    errors = sum(1 for r in latest if r.get("error"))
    if errors:
        print(f"{errors} of {len(latest)} calls failed (counted as wrong); see {paths['results_csv']}; "
              "rerun to retry them", file=sys.stderr)
    return 1 if latest and errors == len(latest) else 0

