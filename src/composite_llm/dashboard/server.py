"""The dashboard's HTTP server (standard library): the page and a read-only JSON API.

    GET /                         the single-page app (static/index.html, self-contained)
    GET /api/health               file paths, line counts, skipped lines
    GET /api/overview             totals and groups by model, profile, strategy, member model
    GET /api/requests             ?model=&profile=&status=ok|degraded|error&q=&limit=&offset=
    GET /api/requests/<id>        one request: every sub-call, stages, details (council rankings...)
    GET /api/eval                 eval summaries (accuracy, Wilson CI, latency, tokens, cost) and items

Binds 127.0.0.1 by default. The page escapes everything it shows (text nodes only), and responses
carry a Content-Security-Policy that allows no origin but this one.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from . import data

CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def index_html() -> bytes:
    return (resources.files("composite_llm.dashboard") / "static" / "index.html").read_bytes()


class DashboardData:
    """The files behind one dashboard."""

    def __init__(self, trace_log: str | None = None, eval_results: str | None = None) -> None:
        self.trace_path = Path(trace_log).expanduser() if trace_log else None
        self.traces = data.JsonlFile(self.trace_path, accept=lambda row: "request_id" in row)
        self.eval_path = data.eval_results_file(eval_results)
        self.evals = data.JsonlFile(self.eval_path, accept=data._is_eval_row)

    def health(self) -> dict[str, Any]:
        traces, evals = self.traces.rows(), self.evals.rows()
        return {
            "trace_log": str(self.trace_path) if self.trace_path else None,
            "trace_log_exists": self.traces.exists(),
            "requests": len(traces),
            "trace_log_skipped_lines": self.traces.bad_lines,
            "eval_results": str(self.eval_path) if self.eval_path else None,
            "eval_results_exists": self.evals.exists(),
            "eval_rows": len(evals),
            "eval_skipped_lines": self.evals.bad_lines,
        }

    def eval(self) -> dict[str, Any]:
        summary = self.eval_path.parent / "summary.json" if self.eval_path else None
        return data.eval_document(self.evals.rows(), summary)


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    try:
        return int(query.get(name, [default])[0])
    except (TypeError, ValueError):
        return default


def make_handler(source: DashboardData, *, quiet: bool = True) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "composite-llm-dashboard"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            if not quiet:
                super().log_message(format, *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, payload: Any, status: int = 200) -> None:
            body = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
            self._send(status, body, "application/json; charset=utf-8")

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            path, query = url.path, parse_qs(url.query)
            try:
                if path in ("/", "/index.html"):
                    self._send(200, index_html(), "text/html; charset=utf-8")
                elif path == "/api/health":
                    self._json(source.health())
                elif path == "/api/overview":
                    self._json(data.overview(source.traces.rows()))
                elif path == "/api/requests":
                    first = {k: v[0] for k, v in query.items() if v}
                    self._json(data.list_requests(
                        source.traces.rows(), model=first.get("model", ""), profile=first.get("profile", ""),
                        status=first.get("status", ""), query=first.get("q", ""),
                        limit=_int(query, "limit", 100), offset=_int(query, "offset", 0)))
                elif path.startswith("/api/requests/"):
                    request_id = unquote(path[len("/api/requests/"):])
                    detail = data.request_detail(source.traces.rows(), request_id)
                    if detail is None:
                        self._json({"error": f"no request {request_id!r} in the trace log"}, 404)
                    else:
                        self._json(detail)
                elif path == "/api/eval":
                    self._json(source.eval())
                elif path == "/favicon.ico":
                    self._send(204, b"", "image/x-icon")
                else:
                    self._json({"error": f"not found: {path}"}, 404)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as exc:  # report, keep serving
                self._json({"error": f"{type(exc).__name__}: {exc}"}, int(HTTPStatus.INTERNAL_SERVER_ERROR))

    return Handler


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="composite-llm-dashboard", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def create_server(trace_log: str | None = None, eval_results: str | None = None, *, host: str = "127.0.0.1",
                  port: int = 0, quiet: bool = True) -> DashboardServer:
    """A server on host:port (port 0 picks a free one); call serve_forever() or start_background()."""
    source = DashboardData(trace_log, eval_results)
    return DashboardServer((host, port), make_handler(source, quiet=quiet))
