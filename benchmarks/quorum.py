"""Heavy-tailed members: p50/p99 of a MoA with and without quorum (k of n), grace and deadline.

Five proposers whose latency per request is lognormal (median 150 ms, sigma 0.35) with a 5% chance of a
straggler taking 2-5 s; the aggregator answers in a fixed 200 ms. The draws are seeded and keyed by
(model, request text), so every configuration sees exactly the same member latencies for the same request
(a paired comparison), and the benchmark knows each request's k-th fastest member in advance.

Reference for a quorum of k: the p99 over requests of (k-th fastest member + the aggregator's latency),
computed from the draws; the target is the composite's p99 within 1.2x of it. Dropped members are counted
from each response's trace (`dropped_members`).

    python benchmarks/quorum.py [--quick] [--requests 200] [--in-flight 4]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

if not __package__:  # run as a file: the repository root makes the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common as C  # noqa: E402

import litellm  # noqa: E402

MEMBERS = tuple(f"q{i}" for i in range(1, 6))
AGGREGATOR = "qagg"
AGG_LATENCY_S = 0.2
TARGET = 1.2

# name -> (settings, k used for the reference, description)
CONFIGS: dict[str, tuple[dict[str, Any], int, str]] = {
    "wait_all": ({}, 5, "no quorum: wait for all 5"),
    # grace 0: proceed the moment the 3rd answer is in, which is exactly what the reference measures
    "quorum3": ({"quorum": 3, "grace_s": 0.0}, 3, "quorum 3, no grace"),
    "quorum3_grace": ({"quorum": 3, "grace_s": 0.05}, 3, "quorum 3, grace 50 ms"),
    "quorum3_grace_deadline": ({"quorum": 3, "grace_s": 0.05, "deadline_s": 1.0}, 3,
                               "quorum 3, grace 50 ms, deadline 1 s"),
    "quorum1_deadline": ({"deadline_s": 0.5}, 1, "deadline 500 ms only (quorum 1)"),
    # not composites: the same quorum written by hand with asyncio.wait + litellm.acompletion
    "hand_quorum3": ({"quorum": 3, "grace_s": 0.0}, 3, "hand-written: quorum 3, no grace"),
    "hand_quorum3_grace": ({"quorum": 3, "grace_s": 0.05}, 3, "hand-written: quorum 3, grace 50 ms"),
}
# each composite quorum row is compared with the hand-written row of the same quorum and grace
HAND_OF = {"quorum3": "hand_quorum3", "quorum3_grace": "hand_quorum3_grace",
           "quorum3_grace_deadline": "hand_quorum3_grace"}
HAND_WRITTEN = frozenset(HAND_OF.values())


def tail_spec(seed: int) -> C.TailSpec:
    return C.TailSpec(models=MEMBERS, seed=seed, median_s=0.15, sigma=0.35, straggler_p=0.05, straggler_s=(2.0, 5.0))


def question(index: int) -> str:
    return f"heavy-tail request {index}"


def member_latencies(tail: C.TailSpec, requests: int) -> list[list[float]]:
    return [sorted(tail.latency(m, question(i)) for m in MEMBERS) for i in range(requests)]


async def _one(model: str, index: int) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    response = await litellm.acompletion(model=f"composite/profile/{model}", messages=C.user(question(index)))
    return time.perf_counter() - t0, C.composite_trace(response)


async def hand_quorum(base_url: str, index: int, k: int = 3, grace_s: float = 0.05) -> tuple[float, dict[str, Any]]:
    """What a user would write without composite-llm: k of n with a grace period, stragglers cancelled."""
    kw = C.leaf_kwargs(base_url)
    t0 = time.perf_counter()
    messages = C.user(question(index))
    tasks = [asyncio.ensure_future(litellm.acompletion(model=f"openai/{m}", messages=messages, **kw)) for m in MEMBERS]
    pending: set[asyncio.Future] = set(tasks)
    answered: list[Any] = []
    while pending and len(answered) < k:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        answered += [t.result() for t in done if not t.exception()]
    if pending:
        done, pending = await asyncio.wait(pending, timeout=grace_s)
        answered += [t.result() for t in done if not t.exception()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    responses = "\n\n".join(f"### Response {chr(65 + i)}\n{a.choices[0].message.content}" for i, a in enumerate(answered))
    await litellm.acompletion(model=f"openai/{AGGREGATOR}", messages=[
        {"role": "system", "content": f"Synthesize one answer from these responses.\n\n{responses}"}, *messages], **kw)
    return time.perf_counter() - t0, {"dropped_members": [None] * len(pending), "degraded": bool(pending)}


async def run_config(name: str, indices: Sequence[int], in_flight: int, base_url: str = "") -> dict[str, Any]:
    latencies: dict[int, float] = {}
    dropped: dict[int, int] = {}
    degraded = 0
    errors: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in indices:
        queue.put_nowait(i)

    async def worker() -> None:
        nonlocal degraded
        while not queue.empty():
            index = queue.get_nowait()
            try:
                if name in HAND_WRITTEN:
                    settings, k, _ = CONFIGS[name]
                    seconds, trace = await hand_quorum(base_url, index, k=k, grace_s=settings["grace_s"])
                else:
                    seconds, trace = await _one(name, index)
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            latencies[index] = seconds
            dropped[index] = len(trace.get("dropped_members") or [])
            degraded += bool(trace.get("degraded"))

    with C.Stopwatch() as sw:
        await asyncio.gather(*[worker() for _ in range(in_flight)])
    return {"latencies": latencies, "dropped": dropped, "degraded": degraded, "errors": errors, "wall_s": sw.wall}


def run_quorum(*, requests: int = 200, in_flight: int = 2, seed: int = 7, configs: Sequence[str] = tuple(CONFIGS),
               backend_mode: str = "process", log: Callable[[str], None] = print) -> dict[str, Any]:
    tail = tail_spec(seed)
    spec = {"default": {"latency_s": 0.0}, "models": {AGGREGATOR: {"latency_s": AGG_LATENCY_S}}, "tail": tail.to_dict()}
    draws = member_latencies(tail, requests)
    results: dict[str, Any] = {}
    with C.Backend(spec, mode=backend_mode) as backend:
        C.register_profiles(backend.base_url, {name: C.moa_profile(MEMBERS, AGGREGATOR, **CONFIGS[name][0])
                                               for name in configs if name not in HAND_WRITTEN})

        async def main() -> None:
            await C.warm_up(backend.base_url)
            # Interleaved: the requests are cut into chunks, and every configuration runs each chunk in turn
            # (order reversed every other chunk), so drift in the machine's load hits all alike.
            chunk = max(10, 5 * in_flight)
            chunks = [list(range(start, min(start + chunk, requests))) for start in range(0, requests, chunk)]
            for number, indices in enumerate(chunks):
                log(f"quorum: chunk {number + 1}/{len(chunks)}")
                for name in (configs if number % 2 == 0 else list(reversed(configs))):
                    run = await run_config(name, indices, in_flight, backend.base_url)
                    merged = results.setdefault(name, {"latencies": {}, "dropped": {}, "degraded": 0, "errors": [],
                                                       "wall_s": 0.0})
                    merged["latencies"].update(run["latencies"])
                    merged["dropped"].update(run["dropped"])
                    merged["degraded"] += run["degraded"]
                    merged["errors"] += run["errors"]
                    merged["wall_s"] += run["wall_s"]
            await C.shutdown_litellm()

        asyncio.run(main())
    rows = []
    for name in configs:
        settings, k, description = CONFIGS[name]
        run = results[name]
        lat = list(run["latencies"].values())
        kth = [d[k - 1] + AGG_LATENCY_S for d in draws]
        reference = C.summarize(kth)
        # paired: the composite's time minus this request's own reference
        excess = [run["latencies"][i] - kth[i] for i in run["latencies"]]
        row = {"config": name, "description": description, "k": k, "requests": requests, "ok": len(lat),
               "errors": len(run["errors"]), "error_samples": run["errors"][:3], "latency": C.summarize(lat),
               "reference": reference, "excess": C.summarize(excess),
               "dropped": sum(run["dropped"].values()), "degraded": run["degraded"], "wall_s": run["wall_s"]}
        row["p99_ratio"] = row["latency"]["p99"] / reference["p99"]
        row["p50_ratio"] = row["latency"]["p50"] / reference["p50"]
        row["met"] = row["p99_ratio"] <= TARGET
        rows.append(row)
    singles = [x for i in range(requests) for x in (tail.latency(m, question(i)) for m in MEMBERS)]
    stragglers = sum(1 for x in singles if x >= tail.straggler_s[0])
    return {"rows": rows, "members": {"single": C.summarize(singles), "stragglers": stragglers,
                                      "requests_with_straggler": sum(1 for d in draws if d[-1] >= tail.straggler_s[0])},
            "settings": {"requests": requests, "in_flight": in_flight, "seed": seed, "tail": tail.to_dict(),
                         "agg_latency_s": AGG_LATENCY_S, "backend": backend_mode}}


def render(result: dict[str, Any], started_load: str, quick: bool = False) -> str:
    s = result["settings"]
    t = s["tail"]
    m = result["members"]
    lines = C.section_header("Heavy-tailed members: quorum, grace and deadline", started_load, [
        f"MoA with 5 proposers and a {s['agg_latency_s'] * 1000:.0f} ms aggregator. Each proposer's latency per "
        f"request: lognormal, median {t['median_s'] * 1000:.0f} ms, sigma {t['sigma']}, and with probability "
        f"{t['straggler_p']:.0%} a straggler of {t['straggler_s'][0]:.0f}-{t['straggler_s'][1]:.0f} s (seed {s['seed']}, "
        f"paired: every configuration sees the same draws). {s['requests']} requests per configuration, "
        f"{s['in_flight']} in flight, configurations interleaved in chunks. Member latency over all draws: p50 {C.ms(m['single']['p50'])} ms, p99 "
        f"{C.ms(m['single']['p99'])} ms; {m['stragglers']} straggling calls, {m['requests_with_straggler']} of "
        f"{s['requests']} requests have at least one.",
        "",
        "*Reference* = the k-th fastest member of that request + the aggregator, from the draws (k = 5 when waiting "
        "for all, k = 1 for the deadline-only run, where the ideal is really min(deadline, slowest) + aggregator). "
        "*Excess* = composite minus its own request's reference (paired). Times in ms. With 200 requests the p99 is "
        "the second-worst request, so a single stall of the client's event loop (a garbage collection, a burst of "
        "load from elsewhere) moves it; the excess columns and the hand-written rows show how much of it is ours. "
        "A grace period waits up to its length past the k-th answer by design, so the grace rows can exceed the "
        "reference by up to 50 ms before any overhead; *quorum 3, no grace* is the pure k-of-n mechanism.",
        "",
    ])
    if quick:
        lines += ["**Quick smoke run: sizes too small for the numbers to mean anything.**", ""]
    table = [[r["description"], r["ok"], r["errors"], C.ms(r["latency"]["p50"]), C.ms(r["latency"]["p99"]),
              C.ms(r["latency"]["max"]), C.ms(r["reference"]["p50"]), C.ms(r["reference"]["p99"]),
              f"{r['p99_ratio']:.3f}", C.ms(r["excess"]["p50"]), C.ms(r["excess"]["p99"]), r["dropped"],
              r["degraded"], f"{r['wall_s']:.1f}"] for r in result["rows"]]
    lines += [C.md_table(["configuration", "ok", "errors", "p50", "p99", "max", "reference p50 (k-th + agg)",
                          "reference p99", "p99 / reference p99", "excess p50", "excess p99", "dropped members",
                          "degraded answers", "wall s"], table), ""]
    for r in result["rows"]:
        if r["errors"]:
            lines.append(f"- errors in {r['description']}: {r['errors']}, e.g. {r['error_samples'][0]}")
    by_name = {r["config"]: r for r in result["rows"]}
    base = by_name.get("wait_all")
    for name, hand_name in HAND_OF.items():
        r, hand = by_name.get(name), by_name.get(hand_name)
        if r is None:
            continue
        versus = (f"; p99 {base['latency']['p99'] / r['latency']['p99']:.1f}× lower than waiting for all"
                  if base else "")
        if hand:
            versus += (f"; the hand-written quorum reaches {hand['p99_ratio']:.3f}× of the reference "
                       f"(composite p99 / hand-written p99 = {r['latency']['p99'] / hand['latency']['p99']:.3f})")
        versus += ".  "
        lines.append(f"**Target: with quorum k of n, p99 ≤1.2× (k-th fastest member's p99 + final stage) — "
                     f"{r['description']}: {C.ms(r['latency']['p99'])} ms vs {C.ms(r['reference']['p99'])} ms = "
                     f"{r['p99_ratio']:.3f}× → {'met' if r['met'] else 'not met'}**{versus}")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: Any) -> None:
        parser.add_argument("--requests", type=int, default=None)
        parser.add_argument("--in-flight", type=int, default=2)
        parser.add_argument("--seed", type=int, default=7)

    args = C.standard_args(__doc__.splitlines()[0], argv, extra)
    started = C.load_average()
    result = run_quorum(requests=args.requests or (12 if args.quick else 200), in_flight=args.in_flight,
                        seed=args.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = render(result, started, quick=args.quick)
    print(text)
    if not args.no_write:
        print(f"written to {C.write_section('quorum', text, result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
