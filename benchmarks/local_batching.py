"""Batched multi-sequence decoding of the local models: k samples together versus one after another,
and the offline composites with the batched scheduler versus one sequence at a time.

1. *samples*: for each installed model and k in 1, 2, 4, 8: one request for `n=k` samples (batched:
   the prompt evaluated once, the k sequences decoded in the same llama.cpp steps) against k requests
   run one after another (sequential), same prompt, same max_tokens, temperature 0.7, the same seeds
   (sample i of the batched request uses seed+i, the i-th sequential request seed+i). The two paths
   are interleaved per repetition, so load changes hit both.
2. *profiles*: end-to-end latency of `self_moa_local`, `self_consistency_local` and `debate_local`
   (profiles/) with the default scheduler (batched, COMPOSITE_LLM_LOCAL_BATCH=4) against one sequence
   at a time (COMPOSITE_LLM_LOCAL_BATCH=1, how local requests ran before batching), interleaved, and
   the 1.5B alone on the same question as the reference. `--profile-max-tokens` caps every node's
   max_tokens (the shapes stay the same) so a run fits a loaded 2-core machine; the cap is reported.

Two runtimes are loaded side by side (one per mode, the weights are shared through mmap); the LiteLLM
provider is pointed at one or the other for each measurement.

    python benchmarks/local_batching.py [--quick] [--models smollm2-135m,qwen2.5-coder-1.5b] [--max-tokens 64]
        [--ks 1,2,4,8] [--reps 2] [--profiles self_moa_local,...] [--profile-reps 1] [--profile-max-tokens 96]
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository root makes the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common as C  # noqa: E402
from benchmarks.local_tokens import availability  # noqa: E402

PROMPT = "Explain in detail how a hash map works, with its main operations and their costs."
QUESTION = "A shop sells pens at 3 dollars each. Tom buys 7 pens and pays with a 50 dollar note. How much change does he get?"
SEED = 7
PROFILES = ["self_moa_local", "self_consistency_local", "debate_local"]
REFERENCE = "local/qwen2.5-coder-1.5b"


def _runtimes(max_seqs: int) -> tuple[Any, Any]:
    from composite_llm.local.runtime import LocalRuntime

    return LocalRuntime(max_seqs=1), LocalRuntime(max_seqs=max_seqs)


def _samples(args: Any, names: list[str]) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    ks = [int(k) for k in args.ks.split(",")]
    sequential_rt, batched_rt = _runtimes(max(ks))
    messages = C.user(PROMPT)
    rows, data = [], []
    for name in names:
        for rt in (sequential_rt, batched_rt):  # load, and warm up both
            rt.load(name)
            rt.complete(name, messages, {"max_tokens": 8, "temperature": 0})
        base_rate = None
        for k in ks:
            runs: dict[str, list[tuple[float, int]]] = {"sequential": [], "batched": []}
            step_ms: list[float] = []
            scheduler = batched_rt.model(name).scheduler
            for rep in range(args.reps):
                order = ("sequential", "batched") if rep % 2 == 0 else ("batched", "sequential")
                for mode in order:
                    params = {"max_tokens": args.max_tokens, "temperature": 0.7, "seed": SEED}
                    started = time.perf_counter()
                    if mode == "batched":
                        before = scheduler.stats.snapshot()
                        gen = batched_rt.complete(name, messages, {**params, "n": k})
                        tokens = gen.usage.completion_tokens
                        after = scheduler.stats.snapshot()
                        steps = after["decode_calls"] - before["decode_calls"] - 1  # the prompt's call aside
                        step_ms.append(1000 * (after["decode_seconds"] - before["decode_seconds"]) / max(1, steps))
                    else:
                        tokens = 0
                        for i in range(k):
                            gen = sequential_rt.complete(name, messages, {**params, "seed": SEED + i})
                            tokens += gen.usage.completion_tokens
                    runs[mode].append((time.perf_counter() - started, tokens))
            seq_s = sum(s for s, _ in runs["sequential"]) / len(runs["sequential"])
            bat_s = sum(s for s, _ in runs["batched"]) / len(runs["batched"])
            seq_tok = sum(t for _, t in runs["sequential"]) / len(runs["sequential"])
            bat_tok = sum(t for _, t in runs["batched"]) / len(runs["batched"])
            if k == 1:
                base_rate = bat_s
            rows.append([f"local/{name}", k, f"{seq_s:.2f}", f"{bat_s:.2f}", f"{seq_tok / seq_s:.1f}",
                         f"{bat_tok / bat_s:.1f}", C.ratio(seq_s, bat_s),
                         C.ratio(bat_s, base_rate) if base_rate else "-", f"{bat_tok:.0f}",
                         f"{sum(step_ms) / len(step_ms):.0f}"])
            data.append({"model": name, "k": k, "runs": runs, "decode_ms_per_step": step_ms,
                         "load": C.load_average()})
            print(rows[-1], flush=True)
    return rows, data


def _capped(document: dict[str, Any], cap: int) -> dict[str, Any]:
    """The same profiles with every node's max_tokens at most `cap`."""
    doc = copy.deepcopy(document)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            params = node.get("params")
            if isinstance(params, dict) and "max_tokens" in params:
                params["max_tokens"] = min(int(params["max_tokens"]), cap)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return doc


def _profiles(args: Any) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    import litellm
    import yaml

    from composite_llm import register_composite_provider
    from composite_llm.local import LOCAL_PROVIDER, register_local_provider

    documents: dict[str, Any] = {"profiles": {}}
    for file in ("local.yaml", "local_strategies.yaml"):
        documents["profiles"].update(yaml.safe_load((C.ROOT / "profiles" / file).read_text())["profiles"])
    wanted = args.profiles.split(",")
    document = {"profiles": {name: documents["profiles"][name] for name in wanted}}
    if args.profile_max_tokens:
        document = _capped(document, args.profile_max_tokens)
    register_composite_provider(profiles=document)
    register_local_provider()
    sequential_rt, batched_rt = _runtimes(4)
    messages = C.user(QUESTION)
    single_params = {"max_tokens": args.profile_max_tokens or 256, "temperature": 0.7}
    for rt in (sequential_rt, batched_rt):
        rt.load(REFERENCE.split("/", 1)[1])
    results: dict[str, dict[str, list[float]]] = {}
    details: list[dict[str, Any]] = []
    for rep in range(args.profile_reps):
        for target in [REFERENCE, *(f"composite/profile/{p}" for p in wanted)]:
            modes = ("sequential", "batched") if rep % 2 == 0 else ("batched", "sequential")
            for mode in modes:
                LOCAL_PROVIDER._runtime = sequential_rt if mode == "sequential" else batched_rt
                started = time.perf_counter()
                kwargs = single_params if target == REFERENCE else {}
                response = litellm.completion(model=target, messages=messages, seed=SEED, **kwargs)
                elapsed = time.perf_counter() - started
                results.setdefault(target, {}).setdefault(mode, []).append(elapsed)
                calls = len(C.composite_trace(response).get("sub_calls", [])) if target != REFERENCE else 1
                details.append({"target": target, "mode": mode, "seconds": elapsed, "calls": calls,
                                "usage": response.usage.model_dump() if response.usage else None,
                                "load": C.load_average()})
                print(target, mode, f"{elapsed:.1f}s", calls, "calls", C.load_average(), flush=True)
    LOCAL_PROVIDER._runtime = None
    ref = sum(results[REFERENCE]["batched"]) / len(results[REFERENCE]["batched"])
    rows = []
    for target, modes in results.items():
        seq = sum(modes["sequential"]) / len(modes["sequential"])
        bat = sum(modes["batched"]) / len(modes["batched"])
        rows.append([target, f"{seq:.1f}", f"{bat:.1f}", C.ratio(seq, bat), C.ratio(bat, ref)])
    return rows, details


def main(argv: Any = None) -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--models", default="")
        parser.add_argument("--ks", default="1,2,4,8")
        parser.add_argument("--max-tokens", type=int, default=64)
        parser.add_argument("--reps", type=int, default=2)
        parser.add_argument("--profiles", default=",".join(PROFILES))
        parser.add_argument("--profile-reps", type=int, default=1)
        parser.add_argument("--profile-max-tokens", type=int, default=0)
        parser.add_argument("--skip-samples", action="store_true")
        parser.add_argument("--skip-profiles", action="store_true")

    args = C.standard_args(__doc__ or "", argv, extra)
    if args.quick:
        args.ks, args.max_tokens, args.reps, args.skip_profiles = "1,2", 8, 1, True
    ok, why, installed = availability()
    if not ok:
        print(f"skipped: {why}")
        return
    names = [n for n in (args.models.split(",") if args.models else installed) if n in installed]
    started_load = C.load_average()
    threads = os.environ.get("COMPOSITE_LLM_LOCAL_THREADS", str(os.cpu_count()))
    lines: list[str] = []
    data: dict[str, Any] = {"threads": threads}
    if not args.skip_samples:
        rows, data["samples"] = _samples(args, names)
        lines += [f"### k samples of one prompt: one `n=k` request versus k requests in a row (max_tokens "
                  f"{args.max_tokens}, temperature 0.7, seeds {SEED}+i, {args.reps} interleaved reps)", "",
                  C.md_table(["model", "k", "sequential s", "batched s", "sequential tok/s", "batched tok/s",
                              "speed-up", "batched / batched k=1", "tokens (batched)",
                              "ms per decode step (batched, incl. prompt share)"], rows), ""]
    if not args.skip_profiles:
        rows, data["profiles"] = _profiles(args)
        cap = f", every node's max_tokens capped at {args.profile_max_tokens}" if args.profile_max_tokens else ""
        lines += [f"### Offline composites end to end: one sequence at a time (before) versus batched (after){cap}",
                  "", f"Question: \"{QUESTION}\" ({args.profile_reps} interleaved rep(s)); the reference is "
                  f"`{REFERENCE}` alone on the same question.", "",
                  C.md_table(["model", "one at a time s", "batched s", "speed-up", "batched / 1.5B alone"], rows), ""]
    lines = [*C.section_header(
        "Local models: batched samples (multi-sequence decoding)", started_load,
        [f"llama.cpp threads: {threads} (COMPOSITE_LLM_LOCAL_THREADS); other helpers' tests shared the 2 cores, "
         "so both paths of a row were run interleaved, and every figure is a ratio within one row.", ""],
    ), *lines]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        C.write_section("local_batching", markdown, data)


if __name__ == "__main__":
    main()
