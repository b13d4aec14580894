"""Throughput of composites whose members are Router model groups, through one proxy (1 and 2 workers) and
through two proxy instances sharing one Redis, against a plain deployment on the same fleet.

The fleet runs `litellm_proxy.router.example.yaml` (the operator example of PROXY_USAGE.md, with the rpm
limits lifted so only CPU limits throughput) plus one plain deployment `plain`. Every model of the fake
backend (a separate process) answers after 200 ms, so a `moa_groups` request (3 proposers, then the judge)
has a 400 ms critical path and a `plain` request 200 ms. A closed loop keeps N requests in flight, spread
round-robin over the instances, for a fixed time; the proxies' CPU (every process of each instance's
process group, from /proc) and memory are read before and after.

    python benchmarks/scaleout.py [--quick] [--seconds 15] [--in-flight 24] [--no-rpm | --rpm-only] [--no-write]

Needs `redis-server` (`make redis-server`). Writes benchmarks/results/scaleout.md (+ .json).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

if not __package__:  # run as a file: the repository root makes the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common as C  # noqa: E402

from composite_llm.testing import stop_process_group  # noqa: E402

LATENCY_S = 0.2
MODELS = ("fast-a", "fast-b", "smart", "judge", "plain")
CONFIG = C.ROOT / "litellm_proxy.router.example.yaml"
BLOCKS = 3  # each row is measured in this many blocks, alternating with the other rows
VARIANTS = (("one proxy, 1 worker", 1, 1), ("one proxy, 2 workers", 1, 2), ("two proxies + Redis, 1 worker each", 2, 1))


# --------------------------------------------------------------------------- processes
class Redis:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: run `make redis-server`")
        self.port = C.free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process_group(self.process, grace_s=15)


class Instance:
    """One `litellm` proxy (its own process group) from the router example config."""

    def __init__(self, config_path: Path, workdir: Path, env: dict[str, str], workers: int) -> None:
        self.port = C.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        argv = [C.litellm_cli() or "litellm", "--config", str(config_path), "--host", "127.0.0.1",
                "--port", str(self.port)]
        if workers > 1:
            # uvicorn kills a worker that is not healthy within 5 s; a proxy worker boots in 10-40 s here
            argv += ["--num_workers", str(workers), "--timeout_worker_healthcheck", "180"]
        self.log = workdir / f"proxy-{self.port}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.workers = workers

    def wait_ready(self, timeout: float = 240.0) -> float:
        import httpx

        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited: {self.log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/health/liveliness", timeout=2).status_code == 200:
                    if len(_group_pids(self.process.pid)) >= self.workers:
                        return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"proxy not ready within {timeout:.0f} s")

    def stop(self) -> None:
        stop_process_group(self.process, grace_s=15)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # field 5 of /proc/<pid>/stat: process group
                pids.append(int(entry.name))
    return pids


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in the group (the proxy and its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def group_rss_mb(pgid: int) -> float:
    total = 0
    for pid in _group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# --------------------------------------------------------------------------- load
async def closed_loop(instances: Sequence[Instance], key: str, model: str, in_flight: int,
                      seconds: float) -> dict[str, Any]:
    """`in_flight` clients, each sending its next request when the last one is answered, round-robin over
    the instances, for `seconds`. Returns completed requests, errors and latencies."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=in_flight * 2, max_keepalive_connections=in_flight * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def worker(index: int) -> None:
            sent = index
            while time.monotonic() < stop_at:
                instance = instances[sent % len(instances)]
                sent += 1
                started = time.monotonic()
                try:
                    response = await client.post(f"{instance.base_url}/v1/chat/completions", headers=headers, json={
                        "model": model, "messages": C.user(f"request {index}-{sent}: what is 2+2?")})
                    if response.status_code == 200:
                        latencies.append(time.monotonic() - started)
                    else:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)

        began = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(in_flight)))
        wall = time.monotonic() - began
    return {"completed": len(latencies), "errors": errors, "wall_s": wall, "latencies": latencies}


def measure_block(instances: Sequence[Instance], key: str, model: str, in_flight: int, seconds: float) -> dict[str, Any]:
    """One closed-loop block with the proxies' CPU (every process of their groups) around it."""
    cpu_before = sum(group_cpu_s(i.process.pid) for i in instances)
    block = asyncio.run(closed_loop(instances, key, model, in_flight, seconds))
    block["cpu_s"] = sum(group_cpu_s(i.process.pid) for i in instances) - cpu_before
    return block


def summarize_row(blocks: list[dict[str, Any]], instances: Sequence[Instance]) -> dict[str, Any]:
    latencies = [x for b in blocks for x in b["latencies"]]
    completed = sum(b["completed"] for b in blocks)
    wall = sum(b["wall_s"] for b in blocks)
    return {"completed": completed, "wall_s": wall, "rps": completed / wall,
            "cpu_ms_per_request": 1000 * sum(b["cpu_s"] for b in blocks) / max(completed, 1),
            "p50_ms": 1000 * C.percentile(latencies, 50), "p99_ms": 1000 * C.percentile(latencies, 99),
            "rss_mb": sum(group_rss_mb(i.process.pid) for i in instances),
            "error_count": sum(len(b["errors"]) for b in blocks)}


def fleet_config(base_url: str) -> dict[str, Any]:
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    for deployment in config["model_list"]:
        deployment["litellm_params"].pop("rpm", None)  # only CPU limits throughput here
    config["model_list"].append({"model_name": "plain", "litellm_params": {
        "model": "openai/plain", "api_base": "os.environ/UPSTREAM_API_BASE", "api_key": "os.environ/UPSTREAM_API_KEY",
        "num_retries": 0, **C.PRICE}})
    return config


def run(seconds: float, in_flight: int, variants: Sequence[tuple[str, int, int]]) -> dict[str, Any]:
    import secrets

    import yaml

    spec = {"default": {"reply": "The answer is 4.", "latency_s": LATENCY_S}, "max_recorded": 200}
    results: dict[str, Any] = {"latency_s": LATENCY_S, "seconds": seconds, "in_flight": in_flight, "rows": []}
    with C.Backend(spec) as backend, tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        work = Path(tmp)
        redis_server = Redis(work)
        try:
            (work / "config.yaml").write_text(yaml.safe_dump(fleet_config(backend.base_url), sort_keys=False))
            key = "sk-bench-" + secrets.token_urlsafe(16)
            env = {k: v for k, v in os.environ.items() if k not in ("COMPOSITE_LLM_PROFILES", "COMPOSITE_LLM_TRACE_LOG")}
            env.update(LITELLM_MASTER_KEY=key, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1",
                       LITELLM_LOG="ERROR", UPSTREAM_API_BASE=backend.base_url, UPSTREAM_API_KEY=C.API_KEY,
                       REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_server.port),
                       PYTHONPATH=os.pathsep.join(p for p in (str(C.ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
            # Every fleet runs at once (idle ones cost next to nothing) and the measurement alternates between
            # them in short blocks, so the drift of a shared machine hits every variant alike.
            fleets = {label: [Instance(work / "config.yaml", work, env, workers) for _ in range(count)]
                      for label, count, workers in variants}
            try:
                boots = {label: max(i.wait_ready() for i in instances) for label, instances in fleets.items()}
                for label, instances in fleets.items():  # warm every worker's clients
                    for model in ("moa_groups", "plain"):
                        asyncio.run(closed_loop(instances, key, model, in_flight, 2.0))
                blocks: dict[tuple[str, str], list[dict[str, Any]]] = {}
                for _ in range(BLOCKS):
                    for label, instances in fleets.items():
                        for model in ("moa_groups", "plain"):
                            blocks.setdefault((label, model), []).append(
                                measure_block(instances, key, model, in_flight, seconds / BLOCKS))
                for label, count, workers in variants:
                    for model in ("moa_groups", "plain"):
                        row = summarize_row(blocks[(label, model)], fleets[label])
                        row.update(variant=label, instances=count, workers=workers, model=model, boot_s=boots[label])
                        results["rows"].append(row)
                        print(f"{label:38s} {model:11s} {row['rps']:6.1f} req/s  cpu {row['cpu_ms_per_request']:6.1f} ms/req"
                              f"  p50 {row['p50_ms']:6.0f} ms  errors {row['error_count']}", file=sys.stderr, flush=True)
            finally:
                for instances in fleets.values():
                    for instance in instances:
                        instance.stop()
        finally:
            redis_server.stop()
    return results


def rpm_fleet(shared: bool, requests: int = 20, pace_s: float = 0.5) -> dict[str, Any]:
    """Two instances of the example config (`smart`: rpm 4), `requests` MoA requests round-robin `pace_s`
    apart; the calls `smart` received per minute window, with the instances sharing Redis or not."""
    import secrets
    from collections import Counter
    from datetime import datetime, timezone

    import httpx
    import yaml

    spec = {"default": {"reply": "The answer is 4.", "latency_s": 0.05}}
    with C.Backend(spec, mode="thread") as backend, tempfile.TemporaryDirectory(prefix="scaleout-rpm-") as tmp:
        work = Path(tmp)
        redis_server = Redis(work) if shared else None
        config = yaml.safe_load(CONFIG.read_text())
        if not shared:
            for key in ("redis_host", "redis_port"):
                config["router_settings"].pop(key)
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        key = "sk-bench-" + secrets.token_urlsafe(16)
        env = {k: v for k, v in os.environ.items() if k not in ("COMPOSITE_LLM_PROFILES", "COMPOSITE_LLM_TRACE_LOG")}
        env.update(LITELLM_MASTER_KEY=key, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1",
                   LITELLM_LOG="ERROR", UPSTREAM_API_BASE=backend.base_url, UPSTREAM_API_KEY=C.API_KEY,
                   REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_server.port if redis_server else 1),
                   PYTHONPATH=os.pathsep.join(p for p in (str(C.ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
        instances = [Instance(work / "config.yaml", work, env, 1) for _ in range(2)]
        try:
            for instance in instances:
                instance.wait_ready()
            degraded = answered = 0
            with httpx.Client(timeout=60) as client:
                from concurrent.futures import ThreadPoolExecutor

                def one(index: int) -> dict[str, Any] | None:
                    instance = instances[index % 2]
                    response = client.post(f"{instance.base_url}/v1/chat/completions",
                                            headers={"Authorization": f"Bearer {key}"},
                                            json={"model": "moa_groups", "messages": C.user(f"q{index}")})
                    return response.json() if response.status_code == 200 else None

                with ThreadPoolExecutor(max_workers=6) as pool:
                    futures = []
                    for index in range(requests):
                        futures.append(pool.submit(one, index))
                        time.sleep(pace_s)
                    for future in futures:
                        data = future.result()
                        if data is not None:
                            answered += 1
                            trace = data["choices"][0]["message"]["provider_specific_fields"]["composite"]
                            degraded += bool(trace["failed_members"])
            assert backend.server is not None
            now_wall, now_mono = time.time(), time.monotonic()
            windows = Counter(datetime.fromtimestamp(now_wall - (now_mono - r.started), tz=timezone.utc).strftime("%H:%M")
                              for r in backend.server.requests_for("smart"))
        finally:
            for instance in instances:
                instance.stop()
            if redis_server is not None:
                redis_server.stop()
    return {"shared": shared, "requests": requests, "answered": answered, "degraded": degraded,
            "smart_calls_per_minute": dict(windows), "limit": 4}


def render(result: dict[str, Any], started_load: str) -> str:
    rows = result["rows"]
    by = {(r["variant"], r["model"]): r for r in rows}
    base = {m: by.get((VARIANTS[0][0], m)) for m in ("moa_groups", "plain")}
    table = []
    for label, count, workers in VARIANTS:
        for model in ("moa_groups", "plain"):
            row = by.get((label, model))
            if row is None:
                continue
            ref = base[model]
            table.append([label, "composite (MoA 3+1, router/ members)" if model == "moa_groups" else "plain deployment",
                          f"{row['rps']:.1f}", C.ratio(row["rps"], ref["rps"]) if ref else "-",
                          f"{row['p50_ms']:.0f}", f"{row['p99_ms']:.0f}", f"{row['cpu_ms_per_request']:.1f}",
                          f"{row['rss_mb']:.0f}", str(row["error_count"])])
    stamps = [f"throughput run {result.get('run_at', '?')}, load average at start {result.get('load_start', '?')}, "
              f"at end {result.get('load_end', '?')}"]
    if result.get("rpm"):
        stamps.append(f"rpm comparison run {result.get('rpm_at', '?')}, load average at end {result.get('rpm_load_end', '?')}")
    lines = [f"## Scale-out: composites through the Router, one proxy vs two instances", "",
             f"_{os.cpu_count()} cores ({C.cpu_model()}); " + "; ".join(stamps) + "._", "",
             f"Members and the plain deployment answer after {result['latency_s'] * 1000:.0f} ms (fake backend in its own "
         f"process); {result['in_flight']} requests in flight, closed loop, {result['seconds']:.0f} s per row after a "
         f"warm-up, in {BLOCKS} blocks alternating with the other rows (all fleets run at once), round-robin over the "
         "instances; config `litellm_proxy.router.example.yaml` without rpm limits, "
         "Redis shared. CPU and memory are every process of the instances' process groups (from /proc). "
         "Command: `python benchmarks/scaleout.py`.", ""]
    try:
        busy = float(str(result.get("load_start", "0")).split("/")[0]) > (os.cpu_count() or 1)
    except ValueError:
        busy = False
    if busy:
        lines += ["**The load average was above the core count: other jobs competed for the CPU, so req/s are what "
                  "the proxies got, not their ceiling, and the ratios between rows are noisy.**", ""]
    lines.append(C.md_table(["fleet", "model", "req/s", "vs 1 worker", "p50 ms", "p99 ms", "proxy CPU ms/req",
                             "proxy RSS MB", "errors"], table))
    comp = [by.get((v[0], "moa_groups")) for v in VARIANTS]
    plain = [by.get((v[0], "plain")) for v in VARIANTS]
    if all(comp) and all(plain):
        lines += ["", "How the cost grows with instances (this machine has "
                  f"{os.cpu_count()} cores, shared by the client, the backend and every proxy process):", ""]
        for (label, _, _), c, p in zip(VARIANTS, comp, plain):
            lines.append(f"- {label}: a composite costs {c['cpu_ms_per_request']:.0f} ms of proxy CPU "
                         f"({c['cpu_ms_per_request'] / max(p['cpu_ms_per_request'], 1e-9):.1f}x a plain request, which "
                         f"makes one upstream call where the composite makes four); {c['rss_mb']:.0f} MB resident.")
    rpm = result.get("rpm") or []
    if rpm:
        lines += ["", "### The rpm limit of a member deployment across two instances", "",
                  "The example config as is (`smart`: `rpm: 4`), two instances (one worker each), 20 `moa_groups` requests 0.5 s apart "
                  "round-robin (each wants one `smart` call); calls counted where they land, at the fake backend.", ""]
        lines.append(C.md_table(["router_settings", "answered", "degraded (smart left out)", "smart calls per minute window",
                                 "limit"], [["Redis shared" if r["shared"] else "no Redis (per instance)", f"{r['answered']}/{r['requests']}",
                                             str(r["degraded"]), ", ".join(f"{k}: {v}" for k, v in sorted(r["smart_calls_per_minute"].items())),
                                             str(r["limit"])] for r in rpm]))
    return "\n".join(lines) + "\n"


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def main(argv: Sequence[str] | None = None) -> int:
    args = C.standard_args(__doc__.splitlines()[0], argv, extra=lambda p: (
        p.add_argument("--seconds", type=float, default=15.0),
        p.add_argument("--in-flight", type=int, default=24),
        p.add_argument("--no-rpm", action="store_true", help="skip the rpm-limit comparison"),
        p.add_argument("--rpm-only", action="store_true", help="only the rpm-limit comparison (keeps the throughput rows of the last run)")))
    started_load = C.load_average()
    seconds = 3.0 if args.quick else args.seconds
    if args.rpm_only:  # keep the throughput rows of the last run, measure the rpm comparison again
        import json

        previous = C.RESULTS_DIR / "scaleout.json"
        result = json.loads(previous.read_text()) if previous.exists() else {"rows": []}
    else:
        result = run(seconds, 6 if args.quick else args.in_flight, VARIANTS)
        result.update(run_at=_now(), load_start=started_load, load_end=C.load_average())
    if not args.no_rpm:
        result["rpm"] = [rpm_fleet(shared) for shared in (True, False)]
        result.update(rpm_at=_now(), rpm_load_end=C.load_average())
    text = render(result, started_load)
    print(text)
    if not args.no_write:
        print(f"written to {C.write_section('scaleout', text, result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
