"""Tokens per second of the offline local models: llama-cpp-python directly, through LiteLLM, and through
a composite.

For each installed catalog model (`local/<name>`, registered by `composite_llm.local.register_local_provider`):

- *direct*: `llama_cpp.Llama.create_chat_completion`, loaded the way the runtime loads it (same n_ctx,
  threads, chat template and stop strings);
- *litellm*: `litellm.completion(model="local/<name>")` (the in-process provider, one worker per model);
- *composite*: a MoA of 2 proposers + 1 aggregator, all the same local model, via `litellm.completion`;
  its rate is the completion tokens of every sub-call over the wall time (local generations run one at a
  time, so the ideal is the direct rate minus the aggregator's longer prompt processing).

Rates are end to end (prompt processing included): completion tokens / wall seconds, temperature 0, fixed
seed, the same prompt. Skips with a clear message when llama-cpp-python or a model's packages are missing.

    python benchmarks/local_tokens.py [--quick] [--models smollm2-135m,qwen2.5-coder-0.5b] [--max-tokens 128]
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

if not __package__:  # run as a file: the repository root makes the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common as C  # noqa: E402

PROMPT = "Explain in detail how a hash map works, with its main operations and their costs."
SEED = 7


def availability() -> tuple[bool, str, list[str]]:
    """(runtime importable, why not, installed model names)."""
    try:
        from composite_llm.local.catalog import MODELS, is_installed
        from composite_llm.local.runtime import runtime_installed, runtime_pip_command
        from composite_llm.local.cache import cached_file_valid
    except ImportError as exc:
        return False, f"composite_llm.local is not importable ({exc})", []
    if not runtime_installed():
        return False, f"llama-cpp-python is not installed (install: {runtime_pip_command()})", []
    names = [m.name for m in MODELS if is_installed(m) or (m.chunked and cached_file_valid(m))]
    return True, "", names


class _Direct:
    """`llama_cpp.Llama` loaded the way the runtime loads it (same n_ctx, threads, chat template, stops)."""

    def __init__(self, name: str, max_tokens: int) -> None:
        import llama_cpp

        from composite_llm.local.cache import resolve_model_file
        from composite_llm.local.catalog import get_model
        from composite_llm.local.params import generation_kwargs
        from composite_llm.local.runtime import DEFAULT_N_CTX

        spec = get_model(name)
        t0 = time.perf_counter()
        self.llama = llama_cpp.Llama(model_path=str(resolve_model_file(spec)), n_ctx=DEFAULT_N_CTX,
                                     n_threads=os.cpu_count() or 1, n_threads_batch=os.cpu_count() or 1,
                                     chat_format=spec.chat_format, verbose=False)
        if spec.chat_format is None and "tokenizer.chat_template" not in self.llama.metadata:
            self.llama.chat_format = "chatml"
        self.load_s = time.perf_counter() - t0
        self.kwargs = generation_kwargs({"max_tokens": max_tokens, "temperature": 0, "seed": SEED}, spec.stop)
        self.run(max_tokens=4)  # warm-up

    def run(self, max_tokens: int | None = None) -> tuple[int, float]:
        kwargs = dict(self.kwargs, **({"max_tokens": max_tokens} if max_tokens else {}))
        t = time.perf_counter()
        out = self.llama.create_chat_completion(messages=[{"role": "user", "content": PROMPT}], **kwargs)
        return out["usage"]["completion_tokens"], time.perf_counter() - t

    def close(self) -> None:
        self.llama.close()
        del self.llama
        gc.collect()


def _litellm_run(name: str, max_tokens: int) -> tuple[int, float]:
    import litellm

    t = time.perf_counter()
    response = litellm.completion(model=f"local/{name}", messages=[{"role": "user", "content": PROMPT}],
                                  max_tokens=max_tokens, temperature=0, seed=SEED)
    return response.usage.completion_tokens, time.perf_counter() - t


def _register_composite(name: str, max_tokens: int) -> None:
    from composite_llm import register_composite_provider

    local_node = {"model": f"local/{name}", "params": {"max_tokens": max_tokens, "temperature": 0, "seed": SEED}}
    doc = {"profiles": {"bench_local": {"strategy": "moa", "topology": {
        "proposers": [dict(local_node, name=f"{name} #1"), dict(local_node, name=f"{name} #2")],
        "aggregator": local_node, "settings": {"retries": 0}}}}}
    register_composite_provider(profiles=doc)


def _composite_run() -> tuple[tuple[int, float], list[tuple[str, int, float]]]:
    import litellm

    t = time.perf_counter()
    response = litellm.completion(model="composite/profile/bench_local", messages=[{"role": "user", "content": PROMPT}])
    seconds = time.perf_counter() - t
    trace = C.composite_trace(response)
    subs = [(c["label"], c["usage"].get("completion_tokens"), c["latency_s"]) for c in trace.get("sub_calls", [])]
    return (response.usage.completion_tokens, seconds), subs


def _measure_model(name: str, max_tokens: int, reps: int) -> dict[str, Any]:
    """All three paths with the model loaded, runs interleaved (order rotating) so load drift hits all alike."""
    from composite_llm.local import register_local_provider

    register_local_provider()
    _register_composite(name, max_tokens)
    direct = _Direct(name, max_tokens)
    try:
        t0 = time.perf_counter()
        _litellm_run(name, 4)  # first call: the runtime loads its own instance
        first_call_s = time.perf_counter() - t0
        runs: dict[str, list[tuple[int, float]]] = {"direct": [], "litellm": [], "composite": []}
        subs: list[tuple[str, int, float]] = []
        paths = ["direct", "litellm", "composite"]
        for rep in range(reps):
            for path in paths[rep % 3:] + paths[:rep % 3]:
                if path == "direct":
                    runs["direct"].append(direct.run())
                elif path == "litellm":
                    runs["litellm"].append(_litellm_run(name, max_tokens))
                else:
                    timing, subs = _composite_run()
                    runs["composite"].append(timing)
    finally:
        direct.close()
    return {"runs": runs, "direct_load_s": direct.load_s, "litellm_first_call_s": first_call_s, "sub_calls": subs}


def _rate(runs: list[tuple[int, float]]) -> dict[str, float]:
    tokens = sum(t for t, _ in runs)
    seconds = sum(s for _, s in runs)
    per_run = [t / s for t, s in runs if s > 0]
    return {"tokens_per_s": tokens / seconds if seconds else float("nan"), "tokens": tokens, "seconds": seconds,
            "runs": len(runs), "min": min(per_run) if per_run else float("nan"),
            "max": max(per_run) if per_run else float("nan")}


def run_local_tokens(*, models: Sequence[str] | None = None, max_tokens: int = 128, reps: int = 3,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    ok, why, installed = availability()
    if not ok:
        return {"skipped": why, "rows": [], "settings": {"max_tokens": max_tokens, "reps": reps}}
    wanted = list(models) if models else installed
    missing = [m for m in wanted if m not in installed]
    rows = []
    for name in [m for m in wanted if m in installed]:
        log(f"local: {name}")
        measured = _measure_model(name, max_tokens, reps)
        runs = measured["runs"]
        row = {"model": name, "direct": _rate(runs["direct"]), "litellm": _rate(runs["litellm"]),
               "composite": _rate(runs["composite"]), "direct_load_s": measured["direct_load_s"],
               "litellm_first_call_s": measured["litellm_first_call_s"], "composite_sub_calls": measured["sub_calls"]}
        row["litellm_ratio"] = row["litellm"]["tokens_per_s"] / row["direct"]["tokens_per_s"]
        row["composite_ratio"] = row["composite"]["tokens_per_s"] / row["direct"]["tokens_per_s"]
        rows.append(row)
    return {"skipped": None, "rows": rows, "missing": missing, "installed": installed,
            "settings": {"max_tokens": max_tokens, "reps": reps, "threads": os.cpu_count()}}


def render(result: dict[str, Any], started_load: str, quick: bool = False) -> str:
    s = result["settings"]
    lines = C.section_header("Local models: tokens per second", started_load, [
        f"Completion tokens / wall seconds, end to end (prompt processing included), temperature 0, seed {SEED}, "
        f"max_tokens {s['max_tokens']}, {s['reps']} runs per path after a warm-up, the three paths interleaved "
        "(both llama.cpp instances loaded at once); llama.cpp uses every core "
        "(shared with other work on this machine: rates vary with the load).", ""])
    if quick:
        lines += ["**Quick smoke run: sizes too small for the numbers to mean anything.**", ""]
    if result["skipped"]:
        lines += [f"**Skipped:** {result['skipped']}", ""]
        return "\n".join(lines)
    table = [[f"local/{r['model']}", f"{r['direct']['tokens_per_s']:.1f}", f"{r['litellm']['tokens_per_s']:.1f}",
              f"{r['litellm_ratio']:.3f}", f"{r['composite']['tokens_per_s']:.1f}", f"{r['composite_ratio']:.3f}",
              f"{r['direct']['tokens'] // max(r['direct']['runs'], 1)}",
              f"{r['direct_load_s']:.1f}", f"{r['litellm_first_call_s']:.1f}"] for r in result["rows"]]
    lines += [C.md_table(["model", "direct tok/s", "litellm tok/s", "litellm/direct", "composite tok/s (3 sub-calls)",
                          "composite/direct", "tokens per answer", "direct load s", "litellm first call s"], table), ""]
    for r in result["rows"]:
        parts = ", ".join(f"{label}: {tok} tok in {lat:.2f} s" for label, tok, lat in r["composite_sub_calls"])
        lines.append(f"- local/{r['model']} composite, last run: {parts}")
    if result.get("missing"):
        lines.append(f"- not installed, skipped: {', '.join(result['missing'])}")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: Any) -> None:
        parser.add_argument("--models", default=None, help="comma-separated catalog names (default: all installed)")
        parser.add_argument("--max-tokens", type=int, default=None)

    args = C.standard_args(__doc__.splitlines()[0], argv, extra)
    models = [m.strip() for m in args.models.split(",")] if args.models else (["smollm2-135m"] if args.quick else None)
    started = C.load_average()
    result = run_local_tokens(models=models, max_tokens=args.max_tokens or (24 if args.quick else 128),
                              reps=1 if args.quick else 3, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = render(result, started, quick=args.quick)
    print(text)
    if not args.no_write:
        print(f"written to {C.write_section('local_tokens', text, result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
