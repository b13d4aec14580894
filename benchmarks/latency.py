"""Single-request latency of a composite versus its ideal critical path, in every way of calling it.

Every member of the fake backend answers after a fixed 200 ms, so the ideal latency of a composite is the
sum of its stage latencies: MoA (3 proposers in parallel, then the aggregator) 400 ms; Council (3 members,
3 reviews, the chairman) 600 ms. Streaming also reports the time to the first content token (ideal: the
stages before the final one plus the final model's first-byte latency, i.e. the same 400/600 ms here).

In the same run, alternating with the composite request by request, the same calls are made by hand:
`litellm.acompletion` x3 with `asyncio.gather`, then x1 (threads for the sync modes; three parallel plus one
proxy requests to plain deployments for the proxy modes). The hand-written time minus the ideal is what
LiteLLM (or the proxy) costs per call anyway; the composite minus the hand-written time is ours.

    python benchmarks/latency.py [--quick] [--reps 20] [--modes async,proxy] [--no-proxy]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

if not __package__:  # run as a file: the repository root makes the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common as C  # noqa: E402

import litellm  # noqa: E402

MODES = ("sync", "async", "sync-stream", "async-stream", "proxy", "proxy-stream")
STREAM_MODES = {"sync-stream", "async-stream", "proxy-stream"}
PROPOSERS = ("p1", "p2", "p3")
MEMBERS = ("c1", "c2", "c3")
TARGET = 1.05

AGG_SYSTEM = ("Several assistants have answered the most recent user message. Their responses are below.\n"
              "Write one answer of your own that is better than any of them.\n\n{responses}")
REVIEW_SYSTEM = "You are a careful reviewer. Evaluate the responses; end with FINAL RANKING."
CHAIR_SYSTEM = "You chair a council. Answers:\n{responses}\n\nReviews:\n{reviews}"

Timing = tuple[float, float | None]  # (total seconds, seconds to first content token or None)


def _blocks(texts: Sequence[str]) -> str:
    return "\n\n".join(f"### Response {chr(65 + i)}\n{t}" for i, t in enumerate(texts))


def _text(response: Any) -> str:
    return response.choices[0].message.content or ""


# --------------------------------------------------------------------------- async callers
async def _final_async(model: str, messages: list, kw: dict, t0: float, stream: bool) -> Timing:
    if not stream:
        await litellm.acompletion(model=model, messages=messages, **kw)
        return time.perf_counter() - t0, None
    ttft = None
    response = await litellm.acompletion(model=model, messages=messages, stream=True, **kw)
    async for chunk in response:
        if ttft is None and chunk.choices and getattr(chunk.choices[0].delta, "content", None):
            ttft = time.perf_counter() - t0
    return time.perf_counter() - t0, ttft


async def composite_async(model: str, question: str, stream: bool) -> Timing:
    return await _final_async(f"composite/profile/{model}", C.user(question), {}, time.perf_counter(), stream)


async def hand_async(strategy: str, base_url: str, question: str, stream: bool) -> Timing:
    kw = C.leaf_kwargs(base_url)
    t0 = time.perf_counter()
    if strategy == "moa":
        answers = await asyncio.gather(*[litellm.acompletion(model=f"openai/{p}", messages=C.user(question), **kw)
                                         for p in PROPOSERS])
        system = AGG_SYSTEM.format(responses=_blocks([_text(a) for a in answers]))
        return await _final_async("openai/agg", [{"role": "system", "content": system}, *C.user(question)], kw, t0,
                                  stream)
    answers = await asyncio.gather(*[litellm.acompletion(model=f"openai/{m}", messages=C.user(question), **kw)
                                     for m in MEMBERS])
    block = _blocks([_text(a) for a in answers])
    reviews = await asyncio.gather(*[litellm.acompletion(
        model=f"openai/{m}", messages=[{"role": "system", "content": REVIEW_SYSTEM},
                                       {"role": "user", "content": f"{question}\n\n{block}"}], **kw) for m in MEMBERS])
    system = CHAIR_SYSTEM.format(responses=block, reviews="\n\n".join(_text(r) for r in reviews))
    return await _final_async("openai/chair", [{"role": "system", "content": system}, *C.user(question)], kw, t0,
                              stream)


async def leaf_async(base_url: str, question: str) -> Timing:
    t0 = time.perf_counter()
    await litellm.acompletion(model="openai/p1", messages=C.user(question), **C.leaf_kwargs(base_url))
    return time.perf_counter() - t0, None


# --------------------------------------------------------------------------- sync callers
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bench-sync")


def _final_sync(model: str, messages: list, kw: dict, t0: float, stream: bool) -> Timing:
    if not stream:
        litellm.completion(model=model, messages=messages, **kw)
        return time.perf_counter() - t0, None
    ttft = None
    for chunk in litellm.completion(model=model, messages=messages, stream=True, **kw):
        if ttft is None and chunk.choices and getattr(chunk.choices[0].delta, "content", None):
            ttft = time.perf_counter() - t0
    return time.perf_counter() - t0, ttft


def composite_sync(model: str, question: str, stream: bool) -> Timing:
    return _final_sync(f"composite/profile/{model}", C.user(question), {}, time.perf_counter(), stream)


def hand_sync(strategy: str, base_url: str, question: str, stream: bool) -> Timing:
    kw = C.leaf_kwargs(base_url)
    t0 = time.perf_counter()

    def leaf(model: str, messages: list) -> Any:
        return litellm.completion(model=f"openai/{model}", messages=messages, **kw)

    if strategy == "moa":
        answers = list(_POOL.map(lambda p: leaf(p, C.user(question)), PROPOSERS))
        system = AGG_SYSTEM.format(responses=_blocks([_text(a) for a in answers]))
        return _final_sync("openai/agg", [{"role": "system", "content": system}, *C.user(question)], kw, t0, stream)
    answers = list(_POOL.map(lambda m: leaf(m, C.user(question)), MEMBERS))
    block = _blocks([_text(a) for a in answers])
    review_messages = [{"role": "system", "content": REVIEW_SYSTEM}, {"role": "user", "content": f"{question}\n\n{block}"}]
    reviews = list(_POOL.map(lambda m: leaf(m, review_messages), MEMBERS))
    system = CHAIR_SYSTEM.format(responses=block, reviews="\n\n".join(_text(r) for r in reviews))
    return _final_sync("openai/chair", [{"role": "system", "content": system}, *C.user(question)], kw, t0, stream)


def leaf_sync(base_url: str, question: str) -> Timing:
    t0 = time.perf_counter()
    litellm.completion(model="openai/p1", messages=C.user(question), **C.leaf_kwargs(base_url))
    return time.perf_counter() - t0, None


# --------------------------------------------------------------------------- proxy callers
class ProxyClient:
    def __init__(self, proxy: C.ProxyProcess) -> None:
        import httpx

        self.url = f"{proxy.base_url}/v1/chat/completions"
        self.client = httpx.AsyncClient(headers=proxy.headers, timeout=60)

    async def chat(self, body: dict[str, Any], t0: float, stream: bool) -> tuple[Timing, str]:
        if not stream:
            response = await self.client.post(self.url, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"proxy answered {response.status_code}: {response.text[:500]}")
            return (time.perf_counter() - t0, None), response.json()["choices"][0]["message"]["content"] or ""
        ttft, parts = None, []
        async with self.client.stream("POST", self.url, json={**body, "stream": True}) as response:
            if response.status_code != 200:
                raise RuntimeError(f"proxy answered {response.status_code}: {(await response.aread())[:500]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        parts.append(content)
                        if ttft is None:
                            ttft = time.perf_counter() - t0
        return (time.perf_counter() - t0, ttft), "".join(parts)

    async def composite(self, model: str, question: str, stream: bool) -> Timing:
        timing, _ = await self.chat({"model": model, "messages": C.user(question)}, time.perf_counter(), stream)
        return timing

    async def hand(self, strategy: str, question: str, stream: bool) -> Timing:
        t0 = time.perf_counter()

        async def leaf(model: str, messages: list) -> str:
            return (await self.chat({"model": model, "messages": messages}, t0, False))[1]

        if strategy == "moa":
            answers = await asyncio.gather(*[leaf(p, C.user(question)) for p in PROPOSERS])
            system = AGG_SYSTEM.format(responses=_blocks(answers))
            timing, _ = await self.chat({"model": "agg", "messages": [{"role": "system", "content": system},
                                                                      *C.user(question)]}, t0, stream)
            return timing
        answers = await asyncio.gather(*[leaf(m, C.user(question)) for m in MEMBERS])
        block = _blocks(answers)
        review_messages = [{"role": "system", "content": REVIEW_SYSTEM},
                           {"role": "user", "content": f"{question}\n\n{block}"}]
        reviews = await asyncio.gather(*[leaf(m, review_messages) for m in MEMBERS])
        system = CHAIR_SYSTEM.format(responses=block, reviews="\n\n".join(reviews))
        timing, _ = await self.chat({"model": "chair", "messages": [{"role": "system", "content": system},
                                                                    *C.user(question)]}, t0, stream)
        return timing

    async def leaf(self, question: str) -> Timing:
        timing, _ = await self.chat({"model": "p1", "messages": C.user(question)}, time.perf_counter(), False)
        return timing

    async def close(self) -> None:
        await self.client.aclose()


# --------------------------------------------------------------------------- measurement
def _profiles(stage_s: float) -> dict[str, Any]:
    return {"bench_moa": C.moa_profile(PROPOSERS, "agg"), "bench_council": C.council_profile(MEMBERS, "chair")}


def _backend_spec(stage_s: float) -> dict[str, Any]:
    return {"default": {"latency_s": stage_s}}


class _Collector:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.leaf_rows: list[dict[str, Any]] = []


def _row(strategy: str, mode: str, stages: int, stage_s: float, comp: list[Timing], hand: list[Timing]) -> dict:
    stream = mode in STREAM_MODES
    comp_total = [t for t, _ in comp]
    hand_total = [t for t, _ in hand]
    row = {"strategy": strategy, "mode": mode, "ideal_s": stages * stage_s, "reps": len(comp),
           "composite": C.summarize(comp_total), "hand": C.summarize(hand_total)}
    if stream:
        row["ideal_ttft_s"] = stages * stage_s  # earlier stages + the final model's first-byte latency
        row["composite_ttft"] = C.summarize([f for _, f in comp if f is not None])
        row["hand_ttft"] = C.summarize([f for _, f in hand if f is not None])
    row["ratio_ideal"] = row["composite"]["p50"] / row["ideal_s"]
    row["ratio_hand"] = row["composite"]["p50"] / row["hand"]["p50"]
    row["hand_ratio_ideal"] = row["hand"]["p50"] / row["ideal_s"]
    row["met"] = row["ratio_ideal"] <= TARGET
    if stream:
        row["ttft_ratio_ideal"] = row["composite_ttft"]["p50"] / row["ideal_ttft_s"]
        row["ttft_ratio_hand"] = row["composite_ttft"]["p50"] / row["hand_ttft"]["p50"]
        row["ttft_met"] = row["ttft_ratio_ideal"] <= TARGET
    return row


STAGES = {"moa": 2, "council": 3}
PROFILE_OF = {"moa": "bench_moa", "council": "bench_council"}


def _alternate(reps: int, warmup: int, comp: Callable[[str], Any], hand: Callable[[str], Any],
               tag: str) -> tuple[list[Timing], list[Timing]]:
    """Sync alternation: composite and hand-written request by request, the first of each pair alternating."""
    comp_t, hand_t = [], []
    for i in range(warmup + reps):
        question = f"{tag} question {i}"
        pair = [("c", comp), ("h", hand)] if i % 2 == 0 else [("h", hand), ("c", comp)]
        for kind, fn in pair:
            timing = fn(question)
            if i >= warmup:
                (comp_t if kind == "c" else hand_t).append(timing)
    return comp_t, hand_t


async def _alternate_async(reps: int, warmup: int, comp: Callable[[str], Awaitable[Timing]],
                           hand: Callable[[str], Awaitable[Timing]], tag: str) -> tuple[list[Timing], list[Timing]]:
    comp_t, hand_t = [], []
    for i in range(warmup + reps):
        question = f"{tag} question {i}"
        pair = [("c", comp), ("h", hand)] if i % 2 == 0 else [("h", hand), ("c", comp)]
        for kind, fn in pair:
            timing = await fn(question)
            if i >= warmup:
                (comp_t if kind == "c" else hand_t).append(timing)
    return comp_t, hand_t


def run_latency(*, reps: int = 20, warmup: int = 2, modes: Sequence[str] = MODES,
                strategies: Sequence[str] = ("moa", "council"), stage_s: float = 0.2, backend_mode: str = "process",
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every (strategy, mode); returns rows with summaries (seconds) and ratios."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    out = _Collector()
    extra: dict[str, Any] = {"stage_s": stage_s, "reps": reps, "warmup": warmup, "backend": backend_mode}
    with C.Backend(_backend_spec(stage_s), mode=backend_mode) as backend:
        base = backend.base_url
        C.register_profiles(base, _profiles(stage_s))
        # --- sync modes (the composite runs on the provider's background loop)
        for mode in [m for m in modes if m in ("sync", "sync-stream")]:
            stream = mode == "sync-stream"
            leaf_sync(base, "warm up")
            for strategy in strategies:
                log(f"latency: {strategy} {mode}")
                comp, hand = _alternate(reps, warmup, lambda q: composite_sync(PROFILE_OF[strategy], q, stream),
                                        lambda q: hand_sync(strategy, base, q, stream), f"{strategy}-{mode}")
                out.rows.append(_row(strategy, mode, STAGES[strategy], stage_s, comp, hand))
        if "sync" in modes:
            leafs = [leaf_sync(base, f"leaf {i}") for i in range(warmup + reps)][warmup:]
            out.leaf_rows.append({"mode": "sync (litellm.completion)", "ideal_s": stage_s,
                                  "latency": C.summarize([t for t, _ in leafs])})

        async def async_part() -> None:
            await C.warm_up(base)
            for mode in [m for m in modes if m in ("async", "async-stream")]:
                stream = mode == "async-stream"
                for strategy in strategies:
                    log(f"latency: {strategy} {mode}")
                    comp, hand = await _alternate_async(
                        reps, warmup, lambda q: composite_async(PROFILE_OF[strategy], q, stream),
                        lambda q: hand_async(strategy, base, q, stream), f"{strategy}-{mode}")
                    out.rows.append(_row(strategy, mode, STAGES[strategy], stage_s, comp, hand))
            if "async" in modes:
                leafs = [await leaf_async(base, f"leaf {i}") for i in range(warmup + reps)][warmup:]
                out.leaf_rows.append({"mode": "async (litellm.acompletion)", "ideal_s": stage_s,
                                      "latency": C.summarize([t for t, _ in leafs])})
            proxy_modes = [m for m in modes if m in ("proxy", "proxy-stream")]
            if proxy_modes:
                await _proxy_part(base, proxy_modes, strategies, reps, warmup, stage_s, out, extra, log)
            await C.shutdown_litellm()

        asyncio.run(async_part())
    return {"rows": out.rows, "leaf_rows": out.leaf_rows, "settings": extra}


async def _proxy_part(base: str, modes: Sequence[str], strategies: Sequence[str], reps: int, warmup: int,
                      stage_s: float, out: _Collector, extra: dict[str, Any], log: Callable[[str], None]) -> None:
    config = C.proxy_config(base, _profiles(stage_s), [*PROPOSERS, "agg", *MEMBERS, "chair"])
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        log("latency: starting the LiteLLM proxy")
        proxy = await asyncio.to_thread(C.ProxyProcess(config, Path(tmp)).start)
        extra["proxy_boot_s"] = proxy.boot_s
        client = ProxyClient(proxy)
        try:
            for _ in range(3):
                await client.leaf("warm up")
            for mode in modes:
                stream = mode == "proxy-stream"
                for strategy in strategies:
                    log(f"latency: {strategy} {mode}")
                    comp, hand = await _alternate_async(
                        reps, warmup, lambda q: client.composite(PROFILE_OF[strategy], q, stream),
                        lambda q: client.hand(strategy, q, stream), f"{strategy}-{mode}")
                    out.rows.append(_row(strategy, mode, STAGES[strategy], stage_s, comp, hand))
            if "proxy" in modes:
                leafs = [await client.leaf(f"leaf {i}") for i in range(warmup + reps)][warmup:]
                out.leaf_rows.append({"mode": "proxy (one plain deployment)", "ideal_s": stage_s,
                                      "latency": C.summarize([t for t, _ in leafs])})
        finally:
            await client.close()
            proxy.stop()


# --------------------------------------------------------------------------- report
def render(result: dict[str, Any], started_load: str, quick: bool = False) -> str:
    s = result["settings"]
    rows = result["rows"]
    lines = C.section_header("Single-request latency versus the ideal critical path", started_load, [
        f"Every fake member answers after {s['stage_s'] * 1000:.0f} ms (fake backend in a separate process). "
        "Ideal: MoA = proposers + aggregator = "
        f"{2 * s['stage_s'] * 1000:.0f} ms; Council = members + reviews + chairman = {3 * s['stage_s'] * 1000:.0f} ms. "
        f"{s['reps']} measured requests per cell after {s['warmup']} warm-up pairs; composite and hand-written "
        "requests alternate (which goes first alternates too). Times in ms, p50 unless marked.",
        "",
        "*hand-written* = the same calls written by hand in the same mode: `litellm.acompletion` x3 with "
        "`asyncio.gather`, then x1 (threads with `litellm.completion` for sync; 3 parallel + 1 requests to plain "
        "deployments of the same proxy for the proxy modes). *LiteLLM's share* = hand-written - ideal (what any "
        "LiteLLM caller pays); *ours* = composite - hand-written.",
        "",
    ])
    if quick:
        lines += ["**Quick smoke run: sizes too small for the numbers to mean anything.**", ""]
    if "proxy_boot_s" in s:
        lines += [f"Proxy boot: {s['proxy_boot_s']:.1f} s (not part of any figure).", ""]
    table = []
    for r in rows:
        table.append([r["strategy"], r["mode"], C.ms(r["ideal_s"]), C.ms(r["composite"]["p50"]),
                      C.ms(r["composite"]["p90"]), C.ms(r["hand"]["p50"]), f"{r['ratio_ideal']:.3f}",
                      f"{r['hand_ratio_ideal']:.3f}", f"{r['ratio_hand']:.3f}",
                      C.ms(r["hand"]["p50"] - r["ideal_s"]), C.ms(r["composite"]["p50"] - r["hand"]["p50"]),
                      C.verdict(r["met"])])
    lines += ["### End to end", "", C.md_table(
        ["strategy", "mode", "ideal", "composite", "composite p90", "hand-written", "composite/ideal",
         "hand/ideal", "composite/hand", "LiteLLM's share", "ours", "≤1.05× ideal"], table), ""]
    stream_rows = [r for r in rows if r["mode"] in STREAM_MODES]
    if stream_rows:
        table = [[r["strategy"], r["mode"], C.ms(r["ideal_ttft_s"]), C.ms(r["composite_ttft"]["p50"]),
                  C.ms(r["composite_ttft"]["p90"]), C.ms(r["hand_ttft"]["p50"]), f"{r['ttft_ratio_ideal']:.3f}",
                  f"{r['ttft_ratio_hand']:.3f}", C.verdict(r["ttft_met"])] for r in stream_rows]
        lines += ["### Time to first content token (streaming)", "",
                  "Ideal TTFT = the stages before the final one + the final model's first-byte latency. The "
                  "composite streams progress lines as `reasoning_content` before that; only `content` counts here.",
                  "", C.md_table(["strategy", "mode", "ideal TTFT", "composite TTFT", "composite p90",
                                  "hand-written TTFT", "composite/ideal", "composite/hand", "≤1.05× ideal"], table), ""]
    if result["leaf_rows"]:
        table = [[r["mode"], C.ms(r["ideal_s"]), C.ms(r["latency"]["p50"]), C.ms(r["latency"]["p90"]),
                  C.ms(r["latency"]["p50"] - r["ideal_s"])] for r in result["leaf_rows"]]
        lines += ["### Reference: one plain 200 ms call", "",
                  "What a single LiteLLM call (or proxy round trip) costs over the model's own latency; a two-stage "
                  "composite pays it at least twice on its critical path.", "",
                  C.md_table(["how", "ideal", "p50", "p90", "overhead"], table), ""]
    met = sum(1 for r in rows if r["met"]) + sum(1 for r in stream_rows if r["ttft_met"])
    total = len(rows) + len(stream_rows)
    hand_met = sum(1 for r in rows if r["hand_ratio_ideal"] <= TARGET)
    worst_ours = max((r["ratio_hand"] for r in rows), default=float("nan"))
    lines += [f"**Target: single request ≤1.05× the ideal critical path in every mode — "
              f"{'met' if met == total else 'not met'} ({met} of {total} end-to-end and TTFT cells).** "
              f"The hand-written LiteLLM calls themselves stay within 1.05× of ideal in {hand_met} of {len(rows)} "
              f"cells; the composite is at most {worst_ours:.3f}× the hand-written time.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: Any) -> None:
        parser.add_argument("--reps", type=int, default=None)
        parser.add_argument("--modes", default=",".join(MODES))
        parser.add_argument("--no-proxy", action="store_true", help="skip the proxy modes")

    args = C.standard_args(__doc__.splitlines()[0], argv, extra)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.no_proxy:
        modes = [m for m in modes if not m.startswith("proxy")]
    reps = args.reps or (3 if args.quick else 20)
    started = C.load_average()
    result = run_latency(reps=reps, warmup=1 if args.quick else 2, modes=modes,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
    text = render(result, started, quick=args.quick)
    print(text)
    if not args.no_write:
        print(f"written to {C.write_section('latency', text, result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
