"""Shared pieces of the benchmark suite: the fake backend, timing helpers, the machine header, tables.

The fake backend is `composite_llm.testing.FakeOpenAIServer` (a real aiohttp OpenAI-compatible server),
extended here with *per-request* latencies: a model listed in the spec's `tail` block gets a latency drawn
from a seeded lognormal with rare heavy stragglers. The draw is a pure function of (seed, model, the
request's last user message), so the client can compute exactly what the server will do (for reference
values such as "the k-th fastest member's p99") and every configuration of a benchmark sees the same
member latencies for the same request (paired comparisons).

By default the backend runs in a separate process (`python benchmarks/common.py serve --spec JSON`), so
the CPU time a benchmark measures with `time.process_time()` is the client's alone and the server does
not compete for the client's GIL. `mode="thread"` runs it in this process (used by the smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from composite_llm.testing import FakeOpenAIServer, ModelBehavior, RecordedRequest, stop_process_group  # noqa: E402

API_KEY = "sk-bench-fake-upstream-key"
PROVIDER = "fake"
# Every fake model is priced (as real models are): the costs are non-zero, and LiteLLM takes its cheap
# "cost known" path on the composite's outer call (a zero cost triggers its slower zero-cost diagnostics).
PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}


# --------------------------------------------------------------------------- heavy-tailed latencies
@dataclasses.dataclass(frozen=True)
class TailSpec:
    """Per-request latency of the listed models: lognormal(median, sigma), and with probability
    `straggler_p` a straggler taking uniform(straggler_s) seconds instead."""

    models: tuple[str, ...]
    seed: int = 7
    median_s: float = 0.15
    sigma: float = 0.35
    straggler_p: float = 0.05
    straggler_s: tuple[float, float] = (2.0, 5.0)

    def latency(self, model: str, key: str) -> float:
        rng = random.Random(f"{self.seed}|{model}|{key}")
        body = rng.lognormvariate(math.log(self.median_s), self.sigma)
        if rng.random() < self.straggler_p:
            return rng.uniform(*self.straggler_s)
        return body

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TailSpec":
        data = dict(data)
        data["models"] = tuple(data["models"])
        data["straggler_s"] = tuple(data["straggler_s"])
        return cls(**data)


class BenchServer(FakeOpenAIServer):
    """FakeOpenAIServer plus per-request heavy-tailed latency for the models of a TailSpec.

    The tail latency is slept before the scripted behaviour runs (those models have latency_s 0), keyed
    by the request's last user message. Recording of request bodies is capped so a long run stays lean.
    """

    def __init__(self, spec: dict[str, Any], **kwargs: Any) -> None:
        default = ModelBehavior(**spec.get("default", {}))
        super().__init__(default=default, **kwargs)
        for name, fields in (spec.get("models") or {}).items():
            self.set_model(name, **fields)
        tail = spec.get("tail")
        self.tail = TailSpec.from_dict(tail) if tail else None
        self.max_recorded = int(spec.get("max_recorded", 2000))

    async def _answer(self, request: Any, record: RecordedRequest) -> Any:  # type: ignore[override]
        with self._lock:
            if len(self._requests) > self.max_recorded:
                del self._requests[: len(self._requests) // 2]
        if self.tail is not None and record.model in self.tail.models:
            await asyncio.sleep(self.tail.latency(record.model, record.last_user_text))
        return await super()._answer(request, record)


def _serve_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/common.py serve")
    parser.add_argument("--spec", required=True, help="JSON backend spec")
    args = parser.parse_args(argv)
    server = BenchServer(json.loads(args.spec)).start()
    print(f"READY {server.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()


class Backend:
    """The fake backend, in a child process (default) or in a thread of this process."""

    def __init__(self, spec: dict[str, Any], mode: str = "process") -> None:
        if mode not in ("process", "thread"):
            raise ValueError("mode must be 'process' or 'thread'")
        self.spec, self.mode = spec, mode
        self.process: subprocess.Popen | None = None
        self.server: BenchServer | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "Backend":
        if self.mode == "thread":
            self.server = BenchServer(self.spec).start()
            self.port = self.server.port
            return self
        argv = [sys.executable, str(Path(__file__).resolve()), "serve", "--spec", json.dumps(self.spec)]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(ROOT))
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            err = self.process.stderr.read() if self.process.stderr else ""
            raise RuntimeError(f"fake backend did not start: {line!r} {err[-2000:]}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> "Backend":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------- composite setup
def node(model: str, **extra: Any) -> dict[str, Any]:
    """A topology node on the fake backend's provider bundle."""
    return {"model": f"openai/{model}", "provider": PROVIDER, "params": dict(PRICE), **extra}


def profile_document(base_url: str, profiles: dict[str, Any]) -> dict[str, Any]:
    return {"providers": {PROVIDER: {"litellm_params": {"api_base": base_url, "api_key": API_KEY}}},
            "profiles": profiles}


def moa_profile(proposers: Sequence[str], aggregator: str = "agg", **settings: Any) -> dict[str, Any]:
    return {"strategy": "moa", "topology": {"aggregator": node(aggregator), "proposers": [node(p) for p in proposers],
                                            "settings": {"retries": 0, **settings}}}


def council_profile(members: Sequence[str], chairman: str = "chair", **settings: Any) -> dict[str, Any]:
    return {"strategy": "council", "topology": {"chairman": node(chairman), "council": [node(m) for m in members],
                                                "settings": {"retries": 0, **settings}}}


def register_profiles(base_url: str, profiles: dict[str, Any]) -> None:
    import litellm

    from composite_llm import register_composite_provider

    litellm.suppress_debug_info = True
    register_composite_provider(profiles=profile_document(base_url, profiles))


def leaf_kwargs(base_url: str) -> dict[str, Any]:
    """What a hand-written fan-out passes to litellm for one fake model."""
    return {"api_base": base_url, "api_key": API_KEY, **PRICE}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def warm_up(base_url: str, model: str = "openai/warmup") -> None:
    """LiteLLM imports its HTTP stack lazily on the first call: pay that before measuring."""
    import litellm

    for _ in range(2):
        await litellm.acompletion(model=model, messages=user("warm up"), **leaf_kwargs(base_url))


def composite_trace(response: Any) -> dict[str, Any]:
    """The structured trace of a non-streamed composite response."""
    message = response.choices[0].message
    fields = getattr(message, "provider_specific_fields", None) or {}
    return fields.get("composite") or {}


# --------------------------------------------------------------------------- statistics
def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    data = sorted(values)
    if not data:
        return float("nan")
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "mean": (sum(values) / len(values)) if values else float("nan"),
            "min": min(values) if values else float("nan"), "p50": percentile(values, 50),
            "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values) if values else float("nan")}


class Stopwatch:
    """Wall (perf_counter) and CPU (process_time) deltas of a block."""

    def __enter__(self) -> "Stopwatch":
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def ms(seconds: float) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.0f}"


def ratio(a: float, b: float) -> str:
    return "n/a" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.3f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


# --------------------------------------------------------------------------- machine header
def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, str]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores (nproc)": str(os.cpu_count()),
        "cpu": cpu_model(),
        "load average (1/5/15 min) at start": load_average(),
        "python": platform.python_version(),
        "litellm": _version("litellm"),
        "composite-llm": _version("composite-llm"),
        "llama-cpp-python": _version("llama_cpp_python"),
        "git": git_revision(),
    }


def machine_lines(info: dict[str, str] | None = None) -> list[str]:
    info = info or machine_info()
    return [f"- {key}: {value}" for key, value in info.items()]


# --------------------------------------------------------------------------- markdown
def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, markdown: str, data: Any = None) -> Path:
    """Write one benchmark's section to benchmarks/results/<name>.md (run_all assembles RESULTS.md) and,
    given `data`, the raw result next to it as <name>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    if data is not None:
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def section_header(title: str, started_load: str, extra: Sequence[str] = ()) -> list[str]:
    """Heading plus the run conditions every section repeats (load changes during a long run)."""
    return [f"## {title}", "",
            f"_Run {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} cores "
            f"({cpu_model()}); load average at start {started_load}, at end {load_average()}._", "", *extra]


def standard_args(description: str, argv: Sequence[str] | None = None,
                  extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, numbers not meaningful")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results/")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the real LiteLLM proxy
def litellm_cli() -> str | None:
    import shutil

    for candidate in (ROOT / ".venv" / "bin" / "litellm", Path(sys.executable).parent / "litellm"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("litellm")


class ProxyProcess:
    """`litellm --config <tmp>/config.yaml` in its own session; stopped (its group only) on exit."""

    def __init__(self, config: dict[str, Any], workdir: Path, start_timeout_s: float = 120.0) -> None:
        import secrets

        self.config, self.workdir, self.start_timeout_s = config, workdir, start_timeout_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.master_key = "sk-bench-" + secrets.token_urlsafe(16)
        self.process: subprocess.Popen | None = None
        self.log = workdir / "proxy.log"
        self.boot_s = float("nan")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}

    def start(self) -> "ProxyProcess":
        import httpx
        import yaml

        cli = litellm_cli()
        if cli is None:
            raise RuntimeError("the `litellm` command is missing (pip install 'litellm[proxy]')")
        (self.workdir / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k not in ("COMPOSITE_LLM_PROFILES", "COMPOSITE_LLM_TRACE_LOG")}
        env.update(LITELLM_MASTER_KEY=self.master_key, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1",
                   LITELLM_LOG="ERROR")
        argv = [cli, "--config", str(self.workdir / "config.yaml"), "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        started = time.monotonic()
        while time.monotonic() - started < self.start_timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health/liveliness", timeout=2).status_code == 200:
                    self.boot_s = time.monotonic() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"proxy not ready within {self.start_timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        stop_process_group(self.process, grace_s=15)  # the group of the process we started, nothing else

    def __enter__(self) -> "ProxyProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def proxy_config(base_url: str, profiles: dict[str, Any], plain_models: Sequence[str]) -> dict[str, Any]:
    """A proxy config serving each profile as a composite deployment (num_retries 0) and each plain fake
    model as an ordinary deployment (for the hand-written-through-the-proxy baseline)."""
    model_list = [{"model_name": name, "litellm_params": {"model": f"composite/profile/{name}", "num_retries": 0}}
                  for name in profiles]
    model_list += [{"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": base_url,
                                                           "api_key": API_KEY, "num_retries": 0, **PRICE}}
                   for name in plain_models]
    return {
        "model_list": model_list,
        "litellm_settings": {"custom_provider_map": [
            {"provider": "composite", "custom_handler": "composite_llm.litellm_provider.COMPOSITE_PROVIDER"}]},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY",
                             "composite_llm": profile_document(base_url, profiles)},
    }


async def shutdown_litellm() -> None:
    """Stop LiteLLM's logging worker before the loop closes (avoids 'Task was destroyed' noise)."""
    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.stop(), 5)
    except Exception:  # noqa: BLE001 - best effort, version dependent
        pass


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        _serve_main(sys.argv[2:])
    else:
        print("usage: python benchmarks/common.py serve --spec JSON", file=sys.stderr)
        sys.exit(2)
