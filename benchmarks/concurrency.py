"""Concurrency sweep: a composite versus the same calls hand-written, with 1..200 requests in flight.

Shape (checked exactly as the issue states it): MoA with 3 proposers + 1 aggregator, every fake member
answering after 200 ms. *Hand-written* is `litellm.acompletion` x3 with `asyncio.gather`, then x1, which is
what a user would write without composite-llm. Both run in the same process, one after the other, with the
order reversed in the second block (ABC CBA) so slow drift of a shared machine hits both alike.

Each level is a closed loop: C workers, each sending its next request as soon as the previous one
finished. Measured: wall time, throughput, p50/p99 latency and CPU seconds per request of this process
(the fake backend runs in a separate process, so its CPU is not counted).

The engine caps leaf sub-calls in flight per event loop (COMPOSITE_LLM_MAX_CONCURRENCY, default 256): at
100 requests x 3 proposers that cap binds. The composite is measured with the default cap and with it
raised (`composite_llm.engine.set_max_concurrency(10_000)`); hand-written code has no such cap.

    python benchmarks/concurrency.py [--quick] [--levels 1,10,40,100,200]
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

if not __package__:  # run as a file: the repository root makes the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common as C  # noqa: E402

import litellm  # noqa: E402

from composite_llm import engine  # noqa: E402

LEVELS = (1, 10, 40, 100, 200)
PROPOSERS = ("p1", "p2", "p3")
TARGET_LEVEL = 40
TARGET = 1.10
RAISED_LIMIT = 10_000
AGG_SYSTEM = ("Several assistants have answered the most recent user message. Their responses are below.\n"
              "Write one answer of your own that is better than any of them.\n\n{responses}")


def _blocks(texts: Sequence[str]) -> str:
    return "\n\n".join(f"### Response {chr(65 + i)}\n{t}" for i, t in enumerate(texts))


def make_variants(base_url: str) -> dict[str, tuple[Callable[[str], Awaitable[Any]], int | None]]:
    """name -> (one request, engine concurrency limit to set before running it or None)."""
    kw = C.leaf_kwargs(base_url)

    async def hand(question: str) -> Any:
        answers = await asyncio.gather(*[litellm.acompletion(model=f"openai/{p}", messages=C.user(question), **kw)
                                         for p in PROPOSERS])
        system = AGG_SYSTEM.format(responses=_blocks([a.choices[0].message.content or "" for a in answers]))
        return await litellm.acompletion(model="openai/agg", messages=[{"role": "system", "content": system},
                                                                       *C.user(question)], **kw)

    async def composite(question: str) -> Any:
        return await litellm.acompletion(model="composite/profile/bench_moa", messages=C.user(question))

    default_limit = engine._DEFAULT_MAX_CONCURRENCY
    return {
        "hand-written": (hand, None),
        f"composite (cap {default_limit})": (composite, default_limit),
        f"composite (cap {RAISED_LIMIT})": (composite, RAISED_LIMIT),
    }


async def closed_loop(fn: Callable[[str], Awaitable[Any]], in_flight: int, rounds: int, tag: str) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []

    async def worker(index: int) -> None:
        for r in range(rounds):
            t0 = time.perf_counter()
            try:
                await fn(f"{tag} worker {index} round {r}")
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            latencies.append(time.perf_counter() - t0)

    with C.Stopwatch() as sw:
        await asyncio.gather(*[worker(i) for i in range(in_flight)])
    return {"latencies": latencies, "wall": sw.wall, "cpu": sw.cpu, "requests": in_flight * rounds, "errors": errors}


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged = {"latencies": [], "wall": 0.0, "cpu": 0.0, "requests": 0, "errors": []}
    for run in runs:
        merged["latencies"] += run["latencies"]
        merged["errors"] += run["errors"]
        for key in ("wall", "cpu", "requests"):
            merged[key] += run[key]
    return merged


def run_concurrency(*, levels: Sequence[int] = LEVELS, min_requests: int = 20, min_rounds: int = 2, blocks: int = 4,
                    stage_s: float = 0.2, backend_mode: str = "process",
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Returns {"rows": [...], "settings": {...}}; one row per (level, variant) with summaries in seconds."""
    rows: list[dict[str, Any]] = []
    with C.Backend({"default": {"latency_s": stage_s}}, mode=backend_mode) as backend:
        C.register_profiles(backend.base_url, {"bench_moa": C.moa_profile(PROPOSERS, "agg")})
        variants = make_variants(backend.base_url)

        async def main() -> None:
            await C.warm_up(backend.base_url)
            for name, (fn, limit) in variants.items():  # warm every path before measuring
                if limit is not None:
                    engine.set_max_concurrency(limit)
                await closed_loop(fn, 4, 1, f"warm {name}")
            for level in levels:
                rounds = max(min_rounds, math.ceil(min_requests / level))
                order = list(variants)
                per_variant: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
                for block in range(blocks):
                    for name in (order if block % 2 == 0 else list(reversed(order))):
                        fn, limit = variants[name]
                        if limit is not None:
                            engine.set_max_concurrency(limit)
                        log(f"concurrency: {level} in flight, {name}, block {block + 1}/{blocks}")
                        per_variant[name].append(await closed_loop(fn, level, rounds, f"L{level} b{block} {name}"))
                hand = _merge(per_variant[order[0]])
                for name in order:
                    run = _merge(per_variant[name])
                    row = _row(level, name, run, hand, stage_s)
                    row["block_wall_ratios"] = [mine["wall"] / theirs["wall"]
                                                for mine, theirs in zip(per_variant[name], per_variant[order[0]])]
                    rows.append(row)
            engine.set_max_concurrency(engine._DEFAULT_MAX_CONCURRENCY)
            await C.shutdown_litellm()

        asyncio.run(main())
    return {"rows": rows, "settings": {"stage_s": stage_s, "blocks": blocks, "min_requests": min_requests,
                                       "min_rounds": min_rounds, "backend": backend_mode,
                                       "default_cap": engine._DEFAULT_MAX_CONCURRENCY, "raised_cap": RAISED_LIMIT}}


def _row(level: int, name: str, run: dict[str, Any], hand: dict[str, Any], stage_s: float) -> dict[str, Any]:
    lat = C.summarize(run["latencies"])
    hand_lat = C.summarize(hand["latencies"])
    ok = max(len(run["latencies"]), 1)
    row = {
        "level": level, "variant": name, "requests": run["requests"], "errors": len(run["errors"]),
        "error_samples": run["errors"][:3], "wall_s": run["wall"], "throughput": len(run["latencies"]) / run["wall"],
        "latency": lat, "cpu_per_request_s": run["cpu"] / ok, "ideal_s": 2 * stage_s,
        "wall_ratio": run["wall"] / hand["wall"], "p50_ratio": lat["p50"] / hand_lat["p50"],
        "p99_ratio": lat["p99"] / hand_lat["p99"],
        "cpu_ratio": (run["cpu"] / ok) / (hand["cpu"] / max(len(hand["latencies"]), 1)),
    }
    row["met"] = row["wall_ratio"] <= TARGET and row["p50_ratio"] <= TARGET
    return row


def render(result: dict[str, Any], started_load: str, quick: bool = False) -> str:
    s = result["settings"]
    lines = C.section_header("Concurrency sweep: composite versus hand-written LiteLLM fan-out", started_load, [
        f"MoA, 3 proposers + aggregator, every fake member {s['stage_s'] * 1000:.0f} ms (ideal latency "
        f"{2 * s['stage_s'] * 1000:.0f} ms). Closed loop: C workers each send their next request when the last one "
        f"returns; at least {s['min_rounds']} rounds and {s['min_requests']} requests per block, {s['blocks']} "
        "blocks with the variant order reversed every other block (the last column shows each block's wall "
        "ratio: their spread is the noise of this machine). Fake backend in a separate process: CPU is this "
        "client process's `time.process_time()` only (all its threads). Ratios are against the hand-written "
        "fan-out at the same level.",
        "",
        f"The engine's leaf-call cap (COMPOSITE_LLM_MAX_CONCURRENCY, default {s['default_cap']}) binds once more "
        f"than {s['default_cap']} sub-calls are in flight, i.e. from about {s['default_cap'] // 3 + 1} requests "
        f"(3 proposers each): the *cap {s['default_cap']}* rows show that throttling as shipped, the *cap "
        f"{s['raised_cap']}* rows the same code with the cap raised.",
        "",
    ])
    if quick:
        lines += ["**Quick smoke run: sizes too small for the numbers to mean anything.**", ""]
    table = []
    for r in result["rows"]:
        is_hand = r["variant"] == "hand-written"
        table.append([r["level"], r["variant"], r["requests"], r["errors"], f"{r['wall_s']:.2f}",
                      f"{r['throughput']:.1f}", C.ms(r["latency"]["p50"]), C.ms(r["latency"]["p99"]),
                      f"{r['cpu_per_request_s'] * 1000:.1f}",
                      "" if is_hand else f"{r['wall_ratio']:.3f}", "" if is_hand else f"{r['p50_ratio']:.3f}",
                      "" if is_hand else f"{r['p99_ratio']:.3f}", "" if is_hand else f"{r['cpu_ratio']:.3f}",
                      "" if is_hand else " ".join(f"{x:.2f}" for x in r.get("block_wall_ratios", []))])
    lines += [C.md_table(["in flight", "variant", "requests", "errors", "wall s", "req/s", "p50 ms", "p99 ms",
                          "CPU ms/req", "wall ×hand", "p50 ×hand", "p99 ×hand", "CPU ×hand",
                          "wall ×hand per block"], table), ""]
    errors = [r for r in result["rows"] if r["errors"]]
    for r in errors:
        lines.append(f"- errors at {r['level']} in flight, {r['variant']}: {r['errors']}, e.g. {r['error_samples'][0]}")
    if errors:
        lines.append("")
    target_rows = [r for r in result["rows"] if r["level"] == TARGET_LEVEL and r["variant"] != "hand-written"]
    if target_rows and TARGET_LEVEL * len(PROPOSERS) <= s["default_cap"]:
        lines += [f"At {TARGET_LEVEL} in flight the cap does not bind ({TARGET_LEVEL * len(PROPOSERS)} proposer calls "
                  f"< {s['default_cap']}): both composite rows run the same code, so their difference is this "
                  "machine's noise.", ""]
    for r in target_rows:
        lines.append(f"**Target: {TARGET_LEVEL} in flight, composite ≤{TARGET:.2f}× hand-written (wall time and p50) — "
                     f"{r['variant']}: wall {r['wall_ratio']:.3f}×, p50 {r['p50_ratio']:.3f}× → "
                     f"{'met' if r['met'] else 'not met'}** (p99 {r['p99_ratio']:.3f}×, CPU/request "
                     f"{r['cpu_ratio']:.3f}×).  ")
    if not target_rows:
        lines.append(f"_Target level {TARGET_LEVEL} not in this run._")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: Any) -> None:
        parser.add_argument("--levels", default=None, help="comma-separated in-flight levels")

    args = C.standard_args(__doc__.splitlines()[0], argv, extra)
    levels = [int(x) for x in args.levels.split(",")] if args.levels else ([1, 10] if args.quick else list(LEVELS))
    started = C.load_average()
    result = run_concurrency(levels=levels, min_requests=2 if args.quick else 20, min_rounds=1 if args.quick else 2,
                             blocks=1 if args.quick else 4, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = render(result, started, quick=args.quick)
    print(text)
    if not args.no_write:
        print(f"written to {C.write_section('concurrency', text, result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
