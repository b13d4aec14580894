"""Run (model, task) pairs with bounded concurrency and a progress bar, appending one JSONL line each.

Resumable: the results file is read first and every (model, task id) pair that already has an answer is
skipped, so an interrupted run continues where it stopped and a finished one costs nothing to rerun.
Pairs whose last attempt failed (an exception, not a wrong answer) are tried again unless
`retry_errors=False`. Each line is written with one `write` on an O_APPEND descriptor.

Latency is the wall-clock time of the `litellm.acompletion` call as the runner saw it; with concurrency
above 1 and a backend that queues (local llama.cpp runs one generation at a time) it includes the wait,
so local models are run one request at a time by default.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..messages import with_instruction
from .baselines import ModelSpec
from .scorers import Score, score_answer
from .tasks import Task

RESULTS_FILE = "results.jsonl"
ANSWER_CHARS = 2000
LOCAL_PREFIX = "local/"


@dataclass
class RunOptions:
    concurrency: int = 4
    timeout: float = 600.0
    params: dict[str, Any] = field(default_factory=dict)  # extra kwargs for every call (api_base, temperature)
    judge: str | None = None
    judge_params: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    retry_errors: bool = True


# --------------------------------------------------------------------------- results file
def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every parseable line of a results file (a missing file is an empty list)."""
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that pair simply runs again
                if isinstance(row, dict) and "model" in row and "task_id" in row:
                    rows.append(row)
    except FileNotFoundError:
        pass
    return rows


def latest_results(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last row per (model, task id): a retried pair counts once, with its latest outcome."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        latest[(str(row["model"]), str(row["task_id"]))] = row
    return latest


def done_keys(rows: Iterable[dict[str, Any]], *, retry_errors: bool = True) -> set[tuple[str, str]]:
    return {key for key, row in latest_results(rows).items() if not (retry_errors and row.get("error"))}


def append_result(path: str | os.PathLike, row: dict[str, Any]) -> None:
    line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- one call
def _cost_of(response: Any, trace: dict[str, Any] | None) -> float | None:
    if trace is not None and trace.get("cost") is not None:
        return float(trace["cost"]) if trace.get("cost_complete", True) else None
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    if cost is not None:
        return float(cost)
    try:
        import litellm

        return float(litellm.completion_cost(completion_response=response))
    except Exception:  # unknown price
        return None


def _trace_summary(trace: dict[str, Any] | None) -> dict[str, Any] | None:
    if not trace:
        return None
    calls = trace.get("sub_calls") or []
    return {
        "request_id": trace.get("request_id"),
        "strategy": trace.get("strategy"),
        "profile": trace.get("profile"),
        "sub_calls": len(calls),
        "failed_members": trace.get("failed_members") or [],
        "dropped_members": trace.get("dropped_members") or [],
        "degraded": bool(trace.get("degraded")),
        **_cascade_summary(trace),
    }


def _cascade_summary(trace: dict[str, Any]) -> dict[str, Any]:
    """Which cascade tier answered (for the escalation rate), from `details.cascade`; {} otherwise."""
    cascade = (trace.get("details") or {}).get("cascade")
    if not isinstance(cascade, dict) or cascade.get("answered_by") is None:
        return {}
    return {"answered_by_tier": cascade["answered_by"], "escalations": cascade.get("escalations", 0)}


async def run_one(spec: ModelSpec, task: Task, options: RunOptions) -> dict[str, Any]:
    """Ask one model one task, score the answer, and return the result row (errors are caught)."""
    import litellm

    from ..redact import redact

    row: dict[str, Any] = {
        "model": spec.label,
        "model_string": spec.model,
        "kind": spec.kind,
        "baseline_of": spec.baseline_of,
        "task_id": task.id,
        "task_set": task.task_set,
        "scorer": task.scorer,
        "expected": task.expected,
    }
    kwargs = {**options.params, **spec.kwargs}
    started = time.perf_counter()
    try:
        messages = with_instruction(task.messages(), spec.instruction)
        response = await litellm.acompletion(model=spec.model, messages=messages, timeout=options.timeout,
                                             **kwargs)
    except Exception as exc:  # the model failed: recorded, counted as not correct, retried on rerun
        row.update(ts=time.time(), latency_s=round(time.perf_counter() - started, 4), correct=False, answer=None,
                   error=redact(str(exc))[:500], error_type=type(exc).__name__, prompt_tokens=0,
                   completion_tokens=0, total_tokens=0, cost=None)
        return row
    latency = time.perf_counter() - started
    message = response.choices[0].message
    text = message.content or ""
    fields = getattr(message, "provider_specific_fields", None) or {}
    trace = fields.get("composite") if isinstance(fields, dict) else None
    usage = getattr(response, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    row.update(
        ts=time.time(),
        latency_s=round(latency, 4),
        answer=text[:ANSWER_CHARS],
        finish_reason=response.choices[0].finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        cost=_cost_of(response, trace),
        composite=_trace_summary(trace),
        error=None,
    )
    try:
        score: Score = await score_answer(task, text, judge_model=options.judge, judge_kwargs=options.judge_params,
                                          timeout=options.timeout)
    except Exception as exc:  # a judge failure is not the model's: keep the answer, mark it for a rerun
        row.update(correct=False, error=f"scoring failed: {redact(str(exc))[:400]}", error_type=type(exc).__name__)
        return row
    row.update(correct=bool(score.correct), extracted=score.extracted, score_detail=score.detail or None)
    if score.judge:
        row["judge"] = score.judge
    return row


# --------------------------------------------------------------------------- progress
class _Progress:
    """tqdm on stderr when available, else one rewritten status line; silent when disabled."""

    def __init__(self, total: int, enabled: bool, desc: str = "eval") -> None:
        self.total, self.enabled, self.count, self.correct = total, enabled and total > 0, 0, 0
        self._bar: Any = None
        if self.enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def update(self, row: dict[str, Any]) -> None:
        self.count += 1
        self.correct += 1 if row.get("correct") else 0
        if not self.enabled:
            return
        status = "error" if row.get("error") else ("✓" if row.get("correct") else "✗")
        note = f"{row['model']} {row['task_id']} {status} {row.get('latency_s', 0):.1f}s"
        if self._bar is not None:
            self._bar.set_postfix_str(note[:60], refresh=False)
            self._bar.update(1)
        else:
            sys.stderr.write(f"\r[{self.count}/{self.total}] {self.correct} correct · {note[:60]:<60}")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


# --------------------------------------------------------------------------- the run
def plan(models: Sequence[ModelSpec], tasks: Sequence[Task],
         done: set[tuple[str, str]]) -> list[tuple[ModelSpec, Task]]:
    """Pending pairs, task-major (every model answers task 1, then task 2...) so a partial run is balanced."""
    return [(spec, task) for task in tasks for spec in models if (spec.label, task.id) not in done]


async def run_eval(models: Sequence[ModelSpec], tasks: Sequence[Task], results_path: str | os.PathLike,
                   options: RunOptions, *, on_result: Callable[[dict[str, Any]], None] | None = None
                   ) -> list[dict[str, Any]]:
    """Run every pending pair, append each result as soon as it is scored, return the new rows."""
    Path(results_path).parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(read_results(results_path), retry_errors=options.retry_errors)
    pending = plan(models, tasks, done)
    progress = _Progress(len(pending), options.progress)
    semaphore = asyncio.Semaphore(max(1, options.concurrency))
    new_rows: list[dict[str, Any]] = []

    async def worker(spec: ModelSpec, task: Task) -> None:
        async with semaphore:
            row = await run_one(spec, task, options)
        append_result(results_path, row)
        new_rows.append(row)
        progress.update(row)
        if on_result is not None:
            on_result(row)

    try:
        # Tasks are started in plan order; the semaphore keeps at most `concurrency` calls in flight.
        await asyncio.gather(*(worker(spec, task) for spec, task in pending))
    finally:
        progress.close()
    return new_rows


def local_models_involved(models: Sequence[ModelSpec]) -> list[str]:
    """The `local/...` models these specs call, members of composites included."""
    from .baselines import composite_members

    found: list[str] = []
    for spec in models:
        if spec.model.startswith(LOCAL_PREFIX):
            found.append(spec.model)
        elif spec.is_composite:
            try:
                found.extend(m for m in composite_members(spec.model) if m.startswith(LOCAL_PREFIX))
            except Exception:  # an unknown profile fails later, with a proper message
                pass
            proposers = spec.kwargs.get("proposers")
            if isinstance(proposers, dict) and str(proposers.get("model", "")).startswith(LOCAL_PREFIX):
                found.append(proposers["model"])
    return list(dict.fromkeys(found))


async def warm_up(models: Iterable[str], timeout: float = 600.0) -> dict[str, float]:
    """Load each local model once (a 1-token request, not recorded), so the first task of each model
    does not pay the model's load time. Returns the seconds each took."""
    import litellm

    took: dict[str, float] = {}
    for model in models:
        started = time.perf_counter()
        try:
            await litellm.acompletion(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                      timeout=timeout)
        except Exception:  # the real run reports the error per task
            pass
        took[model] = time.perf_counter() - started
    return took
