#!/usr/bin/env python3
"""Ask one task to several models of a running LiteLLM proxy and print the composite_llm_research-style SUMMARY.

    scripts/demo_proxy.py --base-url http://127.0.0.1:4000
    scripts/demo_proxy.py --base-url http://127.0.0.1:4000 --models smollm2-135m,self_moa_smollm2 --stream

Uses only the `openai` SDK, as any client of the proxy would. Per model: ✓/✗, the answer (its end, where
the conclusion usually is), latency, tokens and cost. The cost is what the proxy charged: the
`x-litellm-response-cost` header (for a composite model, the sum of its sub-calls); streamed answers
carry it in the final usage chunk instead, since headers leave before the answer is complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository root makes `scripts.demo_summary` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.demo_summary import Outcome, summary  # noqa: E402

DEFAULT_TASK = "How many r's in strawberry?"


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _error_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            text = str(message)
            return text.split("\n\nLiteLLM:")[0].removeprefix("litellm.")
    return f"{type(exc).__name__}: {exc}"


def ask(client: Any, model: str, task: str, *, stream: bool, max_tokens: int | None,
        show_reasoning: bool) -> Outcome:
    messages = [{"role": "user", "content": task}]
    extra = {"max_tokens": max_tokens} if max_tokens else {}
    started = time.monotonic()
    try:
        if not stream:
            raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, **extra)
            completion = raw.parse()
            answer = completion.choices[0].message.content or ""
            usage = completion.usage
            return Outcome(model, True, answer, time.monotonic() - started,
                           usage.total_tokens if usage else None, _float(raw.headers.get("x-litellm-response-cost")))
        return _ask_streaming(client, model, messages, extra, started, show_reasoning)
    except Exception as exc:  # noqa: BLE001 - every failure is one ✗ line of the summary
        return Outcome(model, False, _error_message(exc), time.monotonic() - started)


def _ask_streaming(client: Any, model: str, messages: list, extra: dict, started: float,
                   show_reasoning: bool) -> Outcome:
    dim = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n── {model} ──", flush=True)
    stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **extra)
    parts: list[str] = []
    usage = None
    in_reasoning = False
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning = getattr(choice.delta, "reasoning_content", None)
            if reasoning and show_reasoning:
                print(f"{dim[0]}{reasoning}{dim[1]}", end="", flush=True)
                in_reasoning = True
            if choice.delta.content:
                if in_reasoning:
                    print()
                    in_reasoning = False
                parts.append(choice.delta.content)
                print(choice.delta.content, end="", flush=True)
    print(flush=True)
    cost = _float((usage.model_extra or {}).get("cost")) if usage is not None else None
    return Outcome(model, True, "".join(parts), time.monotonic() - started,
                   usage.total_tokens if usage else None, cost)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("LITELLM_BASE_URL", "http://127.0.0.1:4000"),
                        help="the proxy (with or without /v1)")
    parser.add_argument("--api-key", default=None,
                        help="proxy key (default: $LITELLM_API_KEY, else $LITELLM_MASTER_KEY)")
    parser.add_argument("--models", help="comma-separated model names (default: every model the proxy lists)")
    parser.add_argument("--task", default=DEFAULT_TASK)
    parser.add_argument("--stream", action="store_true", help="print each answer token by token as it arrives")
    parser.add_argument("--show-reasoning", action="store_true",
                        help="with --stream, also print the composite's progress (reasoning_content)")
    parser.add_argument("--max-tokens", type=int, help="max_tokens for every answer")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    args = parser.parse_args(argv)

    try:
        import openai
    except ImportError:
        print("demo_proxy: the openai package is missing: pip install openai", file=sys.stderr)
        return 2
    api_key = args.api_key or os.environ.get("LITELLM_API_KEY") or os.environ.get("LITELLM_MASTER_KEY")
    if not api_key:
        print("demo_proxy: no API key: pass --api-key, or set LITELLM_API_KEY or LITELLM_MASTER_KEY",
              file=sys.stderr)
        return 2
    base_url = args.base_url.rstrip("/")
    base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=args.timeout, max_retries=0)

    try:
        available = [m.id for m in client.models.list()]
    except Exception as exc:  # noqa: BLE001
        print(f"demo_proxy: cannot list models at {base_url}: {_error_message(exc)}", file=sys.stderr)
        return 1
    print(f"Models on {base_url}: {', '.join(available) or '(none)'}")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else available
    unknown = [m for m in models if m not in available]
    if unknown:
        print(f"demo_proxy: not served by this proxy: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if not models:
        print("demo_proxy: the proxy lists no models", file=sys.stderr)
        return 1

    outcomes = []
    for model in models:
        if not args.stream:
            print(f"… {model}", flush=True)
        outcomes.append(ask(client, model, args.task, stream=args.stream, max_tokens=args.max_tokens,
                            show_reasoning=args.show_reasoning))
    print(summary(args.task, outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
