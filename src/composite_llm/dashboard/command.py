"""`composite-llm dashboard`: serve the dashboard for a trace log and/or eval results.

Registered in composite_llm/cli.py; standard library only, so the `[dashboard]` extra adds nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

NAME = "dashboard"
HELP = "web dashboard over the trace log and eval results (127.0.0.1)"
DESCRIPTION = """\
A local web page over the composite trace log and eval results: overview (requests, tokens, cost,
latency p50/p95, error rate by model, profile and member), a request explorer (stages, each member's
answer preview, council rankings, a timing waterfall) and eval comparison charts.

  composite-llm dashboard --trace-log composite_traces.jsonl --eval-results eval-results --port 8501

The trace log is written when $COMPOSITE_LLM_TRACE_LOG is set or a profile document has
`trace_log: {path: ...}`; eval results are `composite-llm eval --out` folders (or their results.jsonl).
Files are re-read when they change. Binds 127.0.0.1; no network access, no CDN."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace-log", default=os.environ.get("COMPOSITE_LLM_TRACE_LOG"),
                        help="trace log JSONL (default: $COMPOSITE_LLM_TRACE_LOG)")
    parser.add_argument("--eval-results", help="an eval --out folder or its results.jsonl")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; anything but loopback exposes your prompts' previews")
    parser.add_argument("--port", type=int, default=8501, help="port (0 picks a free one)")
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request")


def run(args: argparse.Namespace) -> int:
    from .server import LOOPBACK, create_server

    if not args.trace_log and not args.eval_results:
        print("composite-llm dashboard: pass --trace-log FILE and/or --eval-results DIR", file=sys.stderr)
        return 2
    if args.host not in LOOPBACK:
        print(f"composite-llm dashboard: warning: binding {args.host}; the page shows request previews and has "
              "no authentication", file=sys.stderr)
    try:
        server = create_server(args.trace_log, args.eval_results, host=args.host, port=args.port,
                               quiet=not args.verbose)
    except OSError as exc:
        print(f"composite-llm dashboard: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(f"composite-llm dashboard on {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0

