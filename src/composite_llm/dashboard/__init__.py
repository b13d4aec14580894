"""`composite-llm dashboard`: a local web page over the trace log and eval results.

Standard library only (http.server), one self-contained HTML page with inline JavaScript and SVG charts:
no CDN, no network, binds 127.0.0.1. Views: overview (requests, tokens, cost, latency p50/p95, error rate
by model, profile and member), a request explorer (stages, each member's answer preview, the council's
parsed rankings, a timing waterfall) and eval comparison charts.

- `data`: reads the JSONL files (re-read when they change) and computes what the JSON API returns.
- `server`: the HTTP server and its routes.
- `command`: the `composite-llm dashboard` subcommand.
"""

from __future__ import annotations

__all__: list[str] = []
