"""The dashboard: API numbers from a fixture trace log, and the page rendered by a real headless Chromium.

Chromium is Debian's `chromium` package, installed by `make chromium` (a prerequisite of `make test`). The
tests only look for it: without it the browser tests skip, saying so; they never change the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from composite_llm.dashboard import data
from composite_llm.dashboard.server import create_server

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
TRACE_LOG = FIXTURES / "traces.jsonl"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
BROWSER_TIMEOUT_S = 90

# The fixture's numbers, worked out by hand (8 requests; one line cut short by a crash is skipped):
# non-failed latencies 2, 3, 6, 8, 1, 4, 5 -> p50 4.00 s, p95 7.40 s (linear interpolation)
EXPECTED_TOTALS = {
    "requests": 8, "errors": 1, "error_rate": 0.125, "degraded": 1, "prompt_tokens": 1680, "completion_tokens": 780,
    "total_tokens": 2460, "cost": 0.0164, "latency_p50_s": 4.0, "latency_p95_s": 7.4,
}


def _eval_rows() -> list[dict]:
    rows = []
    for i in range(4):
        rows.append({"model": "local/qwen2.5-coder-1.5b", "kind": "model", "task_id": f"arith-00{i + 1}",
                     "task_set": "arithmetic", "expected": str(i), "extracted": str(i) if i < 3 else "9",
                     "correct": i < 3, "latency_s": 2.0 + i, "prompt_tokens": 40, "completion_tokens": 10,
                     "cost": 0.0, "error": None})
        rows.append({"model": "composite/profile/self_moa_local", "kind": "composite", "task_id": f"arith-00{i + 1}",
                     "task_set": "arithmetic", "expected": str(i), "extracted": str(i), "correct": True,
                     "latency_s": 20.0 + i, "prompt_tokens": 300, "completion_tokens": 20, "cost": 0.0,
                     "error": None, "composite": {"request_id": "req-moa-1" if i == 0 else f"x{i}"}})
    return rows


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    with open(folder / "results.jsonl", "w", encoding="utf-8") as handle:
        for row in _eval_rows():
            handle.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture(scope="module")
def dashboard(eval_dir):
    server = create_server(str(TRACE_LOG), str(eval_dir), host="127.0.0.1", port=0)
    server.start_background()
    yield server
    server.stop()


def _get(server, path: str):
    with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=10) as response:
        return response.status, response.headers, response.read()


def _json(server, path: str):
    status, _, body = _get(server, path)
    assert status == 200
    return json.loads(body)


# --------------------------------------------------------------------------- API
def test_overview_numbers(dashboard):
    overview = _json(dashboard, "/api/overview")
    totals = overview["totals"]
    for key, value in EXPECTED_TOTALS.items():
        assert totals[key] == pytest.approx(value), key
    by_model = {row["key"]: row for row in overview["by_model"]}
    moa = by_model["composite/profile/moa_light"]
    assert (moa["requests"], moa["errors"], moa["degraded"]) == (3, 1, 1)
    assert moa["error_rate"] == pytest.approx(0.3333) and moa["latency_p50_s"] == 2.5
    assert moa["latency_p95_s"] == pytest.approx(2.95)
    council = by_model["composite/profile/council_fast"]
    assert (council["requests"], council["total_tokens"], council["cost"]) == (2, 1350, pytest.approx(0.009))
    by_profile = {row["key"]: row for row in overview["by_profile"]}
    assert by_profile["(inline)"]["requests"] == 1 and by_profile["moa_light"]["requests"] == 3
    members = {row["key"]: row for row in overview["by_member"]}
    assert members["openai/p3"]["calls"] == 2 and members["openai/p3"]["failed"] == 1
    assert members["openai/p1"]["failed"] == 1 and members["openai/m1"]["calls"] == 4
    assert overview["first_ts"] == 1767225600.0 and overview["last_ts"] == 1767225600.0 + 7 * 60


def test_health_counts_skipped_lines(dashboard):
    health = _json(dashboard, "/api/health")
    assert health["requests"] == 8 and health["trace_log_skipped_lines"] == 1
    assert health["eval_rows"] == 8 and health["eval_results"].endswith("results.jsonl")


def test_request_list_filters(dashboard):
    listing = _json(dashboard, "/api/requests")
    assert listing["total"] == 8 and listing["requests"][0]["request_id"] == "req-debate-1"  # newest first
    assert _json(dashboard, "/api/requests?status=error")["requests"][0]["request_id"] == "req-moa-3"
    assert _json(dashboard, "/api/requests?status=degraded")["total"] == 1
    assert _json(dashboard, "/api/requests?profile=%28inline%29")["requests"][0]["request_id"] == "req-sc-1"
    assert _json(dashboard, "/api/requests?q=Mercury")["total"] == 1
    page = _json(dashboard, "/api/requests?limit=3&offset=6")
    assert [r["request_id"] for r in page["requests"]] == ["req-moa-2", "req-moa-1"]
    assert "composite/profile/council_fast" in listing["models"]


def test_request_detail(dashboard):
    detail = _json(dashboard, "/api/requests/req-council-1")
    assert [s["stage"] for s in detail["stages"]] == ["stage 1 answers", "stage 2 reviews", "stage 3 chairman"]
    assert [len(s["calls"]) for s in detail["stages"]] == [3, 3, 1]
    assert detail["details"]["council"]["aggregate"][0]["member"] == "openai/m2"
    assert detail["status"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as missing:
        _get(dashboard, "/api/requests/nope")
    assert missing.value.code == 404


def test_eval_api(dashboard):
    document = _json(dashboard, "/api/eval")
    models = {m["model"]: m for m in document["models"]}
    assert models["local/qwen2.5-coder-1.5b"]["correct"] == 3 and models["local/qwen2.5-coder-1.5b"]["n"] == 4
    assert models["composite/profile/self_moa_local"]["accuracy"] == 1.0
    assert models["local/qwen2.5-coder-1.5b"]["latency_mean_s"] == 3.5
    assert len(document["items"]) == 8


def test_page_is_self_contained(dashboard):
    status, headers, body = _get(dashboard, "/")
    html = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    rest = html.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace is a name, not a fetch
    assert "http://" not in rest and "https://" not in rest and "<script src" not in rest and "<link" not in rest
    assert ".innerHTML" not in html  # model output is only ever inserted as text


def test_jsonl_file_follows_appends(tmp_path):
    path = tmp_path / "live.jsonl"
    path.write_text(json.dumps({"request_id": "a", "ts": 1}) + "\n")
    source = data.JsonlFile(path)
    assert [r["request_id"] for r in source.rows()] == ["a"]
    with open(path, "a") as handle:
        handle.write(json.dumps({"request_id": "b", "ts": 2}) + "\n" + '{"request_id": "c"')  # c not finished
    assert [r["request_id"] for r in source.rows()] == ["a", "b"]
    with open(path, "a") as handle:
        handle.write(', "ts": 3}\n')
    assert [r["request_id"] for r in source.rows()] == ["a", "b", "c"]
    path.write_text(json.dumps({"request_id": "z"}) + "\n")  # rewritten (shorter): read from the start
    assert [r["request_id"] for r in source.rows()] == ["z"]


# --------------------------------------------------------------------------- real browser
def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in CHROMIUM_PATHS if os.path.exists(p)), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The installed Chromium, else skip (installing it is `make chromium`'s job, not a test's)."""
    found = _find_chromium()
    if not found:
        pytest.skip("chromium is not installed: run `make chromium` (Debian's chromium package; `make test` "
                    "runs it) to enable the dashboard's browser tests")
    return found


def test_make_test_installs_chromium_first(tmp_path):
    """`make test` depends on `make chromium`, and the target is idempotent: with the browser present it
    only says where it is (the tests find the same one); without it and without apt-get it says what to do."""
    makefile = (REPO / "Makefile").read_text()
    test_rule = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "chromium" in test_rule.split(":", 1)[1].split()
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    bare = subprocess.run([make, "--no-print-directory", "chromium"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.startswith("chromium: missing and apt-get not found; the dashboard's browser tests will skip")
    on_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if on_path is None:
        pytest.skip("chromium is not on PATH; running `make chromium` here would install it")
    done = subprocess.run([make, "--no-print-directory", "chromium"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"chromium: {on_path} (already installed)"


class _TestIds(HTMLParser):
    """Text content of every element with a data-testid (nested ones included), plus all text."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.texts: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}
        self.all_text: list[str] = []
        self.body_attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "body":
            self.body_attrs = attributes
        testid = attributes.get("data-testid")
        if testid:
            self.counts[testid] = self.counts.get(testid, 0) + 1
            self.texts.setdefault(testid, []).append("")
        for _, open_id in self.stack:  # element boundaries separate words (table cells, divs)
            if open_id:
                self.texts[open_id][-1] += " "
        if tag not in self.VOID:
            self.stack.append((tag, testid))

    def handle_startendtag(self, tag, attrs):
        testid = dict(attrs).get("data-testid")
        if testid:
            self.counts[testid] = self.counts.get(testid, 0) + 1

    def handle_endtag(self, tag):
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == tag:
                del self.stack[index:]
                break

    def handle_data(self, text):
        self.all_text.append(text)
        for _, testid in self.stack:
            if testid:
                self.texts[testid][-1] += text

    def text(self, testid: str) -> str:
        return " ".join(" ".join(self.texts.get(testid, [])).split())


def _render(chromium: str, server, fragment: str) -> _TestIds:
    with tempfile.TemporaryDirectory(prefix="composite-llm-chromium-") as profile:
        argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                "--dump-dom", server.url + fragment]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    page = _TestIds()
    page.feed(done.stdout)
    assert page.body_attrs.get("data-ready"), f"the page did not finish rendering {fragment}:\n{done.stdout[-1500:]}"
    assert "load-error" not in page.counts, page.text("load-error")
    return page


def test_browser_overview(chromium, dashboard):
    page = _render(chromium, dashboard, "#/overview")
    assert page.body_attrs["data-ready"] == "/overview"
    assert page.text("value-requests") == "8"
    assert page.text("value-errors") == "1"
    assert page.text("value-error-rate") == "12.5%"
    assert page.text("value-degraded") == "1"
    assert page.text("value-tokens") == "2,460"
    assert page.text("value-cost") == "$0.016400"
    assert page.text("value-p50") == "4.00 s"
    assert page.text("value-p95") == "7.40 s"
    moa_row = page.text("model-row-composite/profile/moa_light")
    assert moa_row == "composite/profile/moa_light 3 1 33.3% 1 340 $0.002200 2.50 s 2.95 s"
    assert "(inline) 1 0 0.0%" in page.text("profile-row-(inline)")
    assert page.text("member-row-openai/p3").startswith("openai/p3 2 1 0 50.0%")
    assert page.counts.get("chart-latency-by-model") == 1 and page.counts.get("chart-errors-by-profile") == 1


def test_browser_request_explorer(chromium, dashboard):
    listing = _render(chromium, dashboard, "#/requests")
    assert listing.text("requests-count") == "Showing 1–8 of 8 requests"
    assert "req-moa-3" in listing.text("request-row-req-moa-3") and "error" in listing.text("request-row-req-moa-3")

    filtered = _render(chromium, dashboard, "#/requests?status=degraded")
    assert filtered.text("requests-count") == "Showing 1–1 of 1 requests"
    assert "request-row-req-moa-2" in filtered.counts

    detail = _render(chromium, dashboard, "#/request/req-council-1")
    assert detail.text("request-id") == "req-council-1"
    assert detail.text("detail-latency") == "6.00 s"
    assert detail.text("detail-tokens") == "400 prompt + 200 completion"
    assert detail.text("detail-cost") == "$0.004000"
    assert detail.counts.get("waterfall") == 1 and detail.counts.get("waterfall-bar") == 7
    assert detail.counts.get("member") == 7
    previews = " ".join(detail.texts["member-preview"])
    assert "Mercury, at about 0.39 AU." in previews and "Venus." in previews
    assert "ranking: Response B > Response A > Response C (parsed by final_ranking)" in detail.text("member-ranking")
    aggregate = detail.text("council-aggregate")
    assert "1 Response B openai/m2 1.33 3" in aggregate and "3 Response C openai/m3 2.67 3" in aggregate
    assert "Response B > Response C > Response A" in detail.text("council-ranking-openai/m2")

    failed = _render(chromium, dashboard, "#/request/req-moa-3")
    assert "layer 1 needs 1 answer(s), got 0" in failed.text("request-error")


def test_browser_eval_view(chromium, dashboard):
    page = _render(chromium, dashboard, "#/eval")
    row = page.text("eval-row-local/qwen2.5-coder-1.5b")
    assert "75.0% (3/4)" in row and "3.50 s" in row
    assert "100.0% (4/4)" in page.text("eval-row-composite/profile/self_moa_local")
    for chart in ("chart-accuracy", "chart-acc-latency", "chart-acc-cost"):
        assert page.counts.get(chart) == 1, chart
    assert "tokens per item" in page.text("chart-acc-cost")  # every cost is $0 here
    assert page.text("eval-items").count("✓") == 7 and page.text("eval-items").count("✗") == 1
