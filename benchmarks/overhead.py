"""Where a composite request's CPU goes: a decomposition at zero member latency, plus a profile.

Sequential requests against the fake backend (separate process, 0 ms latency), CPU of this process per
request for:

- four plain `litellm.acompletion` calls (3 gathered + 1), as a user would write them;
- the same four with `no-log` (what the engine passes on every sub-call);
- an empty `CustomLLM` called through `litellm.acompletion` (LiteLLM's cost for the outer composite call
  itself, with no work inside);
- the composite through `litellm.acompletion` (what users call);
- the composite through `composite_llm.service.run` directly (no outer LiteLLM call);
- `build_request` alone (request parsing, profile lookup, validation), from the current directory and from
  an empty one (the registry scans `./profiles/` on every request).

Then a cProfile of composite requests, listing the composite-llm functions with the most own time.

    python benchmarks/overhead.py [--quick] [--requests 200]
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

if not __package__:  # run as a file: the repository root makes the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common as C  # noqa: E402

import litellm  # noqa: E402
from litellm.llms.custom_llm import CustomLLM  # noqa: E402
from litellm.types.utils import ModelResponse  # noqa: E402

from composite_llm import service  # noqa: E402
from composite_llm.registration import register_provider  # noqa: E402
from composite_llm.request import build_request  # noqa: E402

PROPOSERS = ("p1", "p2", "p3")
MODEL = "composite/profile/bench_moa"


class _Empty(CustomLLM):
    """Returns a fixed answer at once: LiteLLM's own per-call cost for a custom provider."""

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[override]
        response: ModelResponse = kwargs.get("model_response") or ModelResponse()
        response.choices[0].message.content = "ok"  # type: ignore[union-attr]
        return response


def _register_empty() -> None:
    register_provider("benchempty", _Empty())


def _variants(base_url: str) -> dict[str, Callable[[str], Awaitable[Any]]]:
    kw = C.leaf_kwargs(base_url)

    async def four(question: str, **extra: Any) -> None:
        await asyncio.gather(*[litellm.acompletion(model=f"openai/{p}", messages=C.user(question), **kw, **extra)
                               for p in PROPOSERS])
        await litellm.acompletion(model="openai/agg", messages=C.user(question), **kw, **extra)

    async def four_nolog(question: str) -> None:
        await four(question, **{"no-log": True})

    async def empty_custom(question: str) -> None:
        await litellm.acompletion(model="benchempty/x", messages=C.user(question))

    async def composite(question: str) -> None:
        await litellm.acompletion(model=MODEL, messages=C.user(question))

    async def composite_core(question: str) -> None:
        request = build_request(model=MODEL.removeprefix("composite/"), messages=C.user(question), api_base=None,
                                api_key=None, optional_params={}, litellm_params={}, timeout=None)
        await service.run(request)

    async def build_only(question: str) -> None:
        build_request(model=MODEL.removeprefix("composite/"), messages=C.user(question), api_base=None, api_key=None,
                      optional_params={}, litellm_params={}, timeout=None)

    return {
        "4 x litellm.acompletion (hand-written)": four,
        "4 x litellm.acompletion with no-log": four_nolog,
        "1 x litellm.acompletion of an empty CustomLLM": empty_custom,
        "composite via litellm.acompletion": composite,
        "composite via service.run (no outer LiteLLM call)": composite_core,
        "build_request only (cwd = repo root)": build_only,
    }


async def _measure(fn: Callable[[str], Awaitable[Any]], n: int, tag: str) -> float:
    with C.Stopwatch() as sw:
        for i in range(n):
            await fn(f"{tag} {i}")
    return sw.cpu / n


def run_overhead(*, requests: int = 50, rounds: int = 8, profile_requests: int = 100, backend_mode: str = "process",
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    rows: dict[str, list[float]] = {}
    hot: list[dict[str, Any]] = []
    cached_clients: list[int] = []
    with C.Backend({"default": {"latency_s": 0.0}}, mode=backend_mode) as backend:
        C.register_profiles(backend.base_url, {"bench_moa": C.moa_profile(PROPOSERS, "agg")})
        _register_empty()
        variants = _variants(backend.base_url)
        cwd = os.getcwd()

        async def main() -> None:
            await C.warm_up(backend.base_url)
            for fn in variants.values():
                await _measure(fn, 3, "warm")
            for r in range(rounds):
                names = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in names:
                    log(f"overhead: {name}, round {r + 1}/{rounds}")
                    rows.setdefault(name, []).append(await _measure(variants[name], requests, f"{name} {r}"))
                with tempfile.TemporaryDirectory() as empty:
                    os.chdir(empty)
                    try:
                        rows.setdefault("build_request only (cwd = empty directory)", []).append(
                            await _measure(variants["build_request only (cwd = repo root)"], requests, "build"))
                    finally:
                        os.chdir(cwd)
            log("overhead: profiling")
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(profile_requests):
                await variants["composite via litellm.acompletion"](f"profiled {i}")
            profiler.disable()
            stats = pstats.Stats(profiler)
            total = stats.total_tt  # type: ignore[attr-defined]
            for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
                if "composite_llm" in filename:
                    hot.append({"where": f"{Path(filename).name}:{line} {func}", "calls": nc / profile_requests,
                                "own_ms": tt / profile_requests * 1000, "cum_ms": ct / profile_requests * 1000})
            hot.sort(key=lambda h: -h["own_ms"])
            cached_clients.append(len(getattr(litellm.in_memory_llm_clients_cache, "cache_dict", {}) or {}))
            hot.insert(0, {"where": "(whole profiled request, all code)", "calls": 1.0,
                           "own_ms": total / profile_requests * 1000, "cum_ms": total / profile_requests * 1000})
            await C.shutdown_litellm()

        asyncio.run(main())
    summary = {name: {"median_ms": C.percentile(v, 50) * 1000, "all_ms": [x * 1000 for x in v]}
               for name, v in rows.items()}
    return {"rows": summary, "hot": hot[:16], "cached_clients": cached_clients[0] if cached_clients else None,
            "settings": {"requests": requests, "rounds": rounds, "profile_requests": profile_requests}}


def render(result: dict[str, Any], started_load: str, quick: bool = False) -> str:
    s = result["settings"]
    r = result["rows"]
    lines = C.section_header("Where the CPU goes (zero-latency members)", started_load, [
        f"Sequential requests, fake backend in a separate process answering at once; CPU of this process per request, "
        f"median of {s['rounds']} rounds of {s['requests']} requests (order reversed every other round).", ""])
    if quick:
        lines += ["**Quick smoke run: sizes too small for the numbers to mean anything.**", ""]
    lines += [C.md_table(["what", "CPU ms per request (median)", "rounds"],
                         [[name, f"{v['median_ms']:.2f}", ", ".join(f"{x:.2f}" for x in v["all_ms"])]
                          for name, v in r.items()]), ""]

    def get(name: str) -> float:
        return r.get(name, {}).get("median_ms", float("nan"))

    hand = get("4 x litellm.acompletion (hand-written)")
    comp = get("composite via litellm.acompletion")
    core = get("composite via service.run (no outer LiteLLM call)")
    nolog = get("4 x litellm.acompletion with no-log")
    empty = get("1 x litellm.acompletion of an empty CustomLLM")
    clients = result.get("cached_clients")
    lines += [
        f"Decomposition: the composite costs {comp:.1f} ms against {hand:.1f} ms hand-written (+{comp - hand:.1f} ms, "
        f"{comp / hand:.2f}×). Split: the outer LiteLLM call (composite via litellm minus via `service.run`) "
        f"{comp - core:.1f} ms, against {empty:.1f} ms for an empty CustomLLM; composite-llm's own code "
        f"(`service.run` minus the four no-log sub-calls) {core - nolog:.1f} ms. On a shared machine the rounds of "
        "one row spread by ±15% (last column): differences of a few ms between rows are within that noise; the "
        "concurrency sweep, where CPU is the bottleneck, is the better measure of the CPU ratio.", ""]
    if clients is not None:
        lines += [f"LiteLLM's cached HTTP clients after all composite requests of this run: {clients} "
                  "(the engine gives LiteLLM each node's configured timeout, so sub-calls reuse clients; "
                  "before that fix every sub-call built a new client and the cache filled to its 200 cap).", ""]
    lines += ["### Profile: composite-llm functions by own time", "",
              f"cProfile over {s['profile_requests']} composite requests (profiling inflates every figure; compare "
              "rows with each other, not with the table above).", "",
              C.md_table(["function", "calls/request", "own ms/request", "cumulative ms/request"],
                         [[h["where"], f"{h['calls']:.1f}", f"{h['own_ms']:.3f}", f"{h['cum_ms']:.3f}"]
                          for h in result["hot"]]), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: Any) -> None:
        parser.add_argument("--requests", type=int, default=None)

    args = C.standard_args(__doc__.splitlines()[0], argv, extra)
    started = C.load_average()
    result = run_overhead(requests=args.requests or (10 if args.quick else 50), rounds=1 if args.quick else 8,
                          profile_requests=10 if args.quick else 100,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    text = render(result, started, quick=args.quick)
    print(text)
    if not args.no_write:
        print(f"written to {C.write_section('overhead', text, result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
