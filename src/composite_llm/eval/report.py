"""From result rows to the comparison: accuracy with a 95% Wilson interval, latency, tokens, cost.

A pair that errored counts as answered wrongly (the model did not answer) and is also counted in
`errors`; latency statistics use successful calls only. Cost is the sum of known costs; `cost_complete`
is False when some call had no known price. Judge tokens and cost (llm_judge) are reported apart.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .runner import latest_results

Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 0) when n == 0."""
    if n <= 0:
        return (0.0, 0.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return (low, high)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


@dataclass
class ModelSummary:
    model: str
    kind: str
    baseline_of: str | None
    n: int
    correct: int
    errors: int
    accuracy: float
    ci_low: float
    ci_high: float
    latency_mean_s: float | None
    latency_p95_s: float | None
    prompt_tokens: int
    completion_tokens: int
    tokens_per_item: float
    cost_total: float
    cost_per_item: float
    cost_complete: bool
    judge_cost: float = 0.0
    escalation_rate: float | None = None  # cascades: share of answered items a later tier answered

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(rows: Iterable[dict[str, Any]], *, order: Sequence[str] | None = None,
              task_ids: set[str] | None = None) -> list[ModelSummary]:
    """One summary per model (latest row per (model, task)), in `order` (then first-seen order)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for (model, task_id), row in latest_results(rows).items():
        if task_ids is not None and task_id not in task_ids:
            continue
        grouped.setdefault(model, []).append(row)
    names = [m for m in (order or []) if m in grouped] + [m for m in grouped if m not in (order or [])]
    out = []
    for model in names:
        items = grouped[model]
        n = len(items)
        correct = sum(1 for r in items if r.get("correct"))
        errors = sum(1 for r in items if r.get("error"))
        latencies = [float(r["latency_s"]) for r in items if not r.get("error") and r.get("latency_s") is not None]
        prompt = sum(int(r.get("prompt_tokens") or 0) for r in items)
        completion = sum(int(r.get("completion_tokens") or 0) for r in items)
        answered = [r for r in items if not r.get("error")]
        costs = [r.get("cost") for r in answered]
        cost_total = float(sum(c for c in costs if c is not None))
        low, high = wilson_interval(correct, n)
        first = items[0]
        tiers = [(r.get("composite") or {}).get("answered_by_tier") for r in answered]
        tiers = [t for t in tiers if t is not None]
        out.append(ModelSummary(
            model=model,
            kind=str(first.get("kind") or "model"),
            baseline_of=first.get("baseline_of"),
            n=n,
            correct=correct,
            errors=errors,
            accuracy=correct / n if n else 0.0,
            ci_low=low,
            ci_high=high,
            latency_mean_s=sum(latencies) / len(latencies) if latencies else None,
            latency_p95_s=percentile(latencies, 95),
            prompt_tokens=prompt,
            completion_tokens=completion,
            tokens_per_item=(prompt + completion) / n if n else 0.0,
            cost_total=cost_total,
            cost_per_item=cost_total / n if n else 0.0,
            cost_complete=all(c is not None for c in costs),
            judge_cost=float(sum((r.get("judge") or {}).get("cost") or 0.0 for r in items)),
            escalation_rate=(sum(1 for t in tiers if t > 1) / len(tiers)) if tiers else None,
        ))
    return out


def by_task_set(rows: Iterable[dict[str, Any]], *,
                order: Sequence[str] | None = None) -> dict[str, list[ModelSummary]]:
    """Summaries per task set (for the dashboard and the JSON output)."""
    latest = list(latest_results(rows).values())
    sets = list(dict.fromkeys(str(r.get("task_set") or "") for r in latest))
    return {name: summarize([r for r in latest if str(r.get("task_set") or "") == name], order=order)
            for name in sets}


# --------------------------------------------------------------------------- rendering
def _fmt_latency(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_cost(summary: ModelSummary) -> str:
    text = f"${summary.cost_total:.4f}" if summary.cost_total < 100 else f"${summary.cost_total:,.2f}"
    return text + ("" if summary.cost_complete else "*")


TABLE_HEADER = ("model", "kind", "n", "accuracy", "95% CI", "mean s", "p95 s", "tokens/item", "cost", "errors")


def table_rows(summaries: Sequence[ModelSummary]) -> list[tuple[str, ...]]:
    rows = []
    for s in summaries:
        kind = s.kind if not s.baseline_of else f"{s.kind} of {s.baseline_of}"
        rows.append((
            s.model, kind, str(s.n), f"{s.accuracy:.0%} ({s.correct}/{s.n})", f"{s.ci_low:.0%}–{s.ci_high:.0%}",
            _fmt_latency(s.latency_mean_s), _fmt_latency(s.latency_p95_s), f"{s.tokens_per_item:.0f}",
            _fmt_cost(s), str(s.errors),
        ))
    return rows


def format_table(summaries: Sequence[ModelSummary]) -> str:
    """Aligned plain text for the terminal."""
    rows = [TABLE_HEADER, *table_rows(summaries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    numeric = {2, 5, 6, 7, 8, 9}
    lines = []
    for index, row in enumerate(rows):
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    if any(not s.cost_complete for s in summaries):
        lines.append("* some calls had no known price; their cost counts as $0")
    lines.extend(escalation_lines(summaries))
    return "\n".join(lines)


def escalation_lines(summaries: Sequence[ModelSummary]) -> list[str]:
    """One line per cascade: how often a later tier had to answer."""
    return [f"escalation rate of {s.model}: {s.escalation_rate:.0%} (answered items a later tier answered)"
            for s in summaries if s.escalation_rate is not None]


def format_markdown(summaries: Sequence[ModelSummary]) -> str:
    header = "| " + " | ".join(TABLE_HEADER) + " |"
    align = "| " + " | ".join("---:" if i in {2, 5, 6, 7, 8, 9} else "---" for i in range(len(TABLE_HEADER))) + " |"
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table_rows(summaries)]
    lines = [header, align, *body]
    if any(not s.cost_complete for s in summaries):
        lines.append("\n\\* some calls had no known price; their cost counts as $0")
    escalations = escalation_lines(summaries)
    if escalations:
        lines.append("")
        lines.extend(f"- {line}" for line in escalations)
    return "\n".join(lines)


RESULT_CSV_FIELDS = ("model", "model_string", "kind", "baseline_of", "task_set", "task_id", "scorer", "expected",
                     "extracted", "correct", "latency_s", "prompt_tokens", "completion_tokens", "total_tokens",
                     "cost", "error", "answer")


def summaries_csv(summaries: Sequence[ModelSummary]) -> str:
    buffer = io.StringIO()
    fields = list(ModelSummary.__dataclass_fields__)
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for s in summaries:
        writer.writerow(s.as_dict())
    return buffer.getvalue()


def results_csv(rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RESULT_CSV_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in latest_results(rows).values():
        writer.writerow({k: row.get(k) for k in RESULT_CSV_FIELDS})
    return buffer.getvalue()


def report_document(rows: Sequence[dict[str, Any]], *, order: Sequence[str] | None = None,
                    meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the JSON output (and the dashboard) needs."""
    from .paired import TEST_NAME, best_single, paired_against

    summaries = summarize(rows, order=order)
    reference = best_single(rows, order=order)
    paired = paired_against(rows, reference, [s.model for s in summaries]) if reference else []
    return {
        "meta": meta or {},
        "models": [s.as_dict() for s in summaries],
        "paired": {"reference": reference, "test": TEST_NAME, "results": [p.as_dict() for p in paired]},
        "paired_instructed": [
            {"reference": instructed, "test": TEST_NAME, "results": [p.as_dict() for p in results]}
            for instructed, results in instructed_pairings(rows, summaries, reference)],
        "task_sets": {name: [s.as_dict() for s in group] for name, group in by_task_set(rows, order=order).items()},
    }


def write_outputs(out_dir: str | Path, rows: Sequence[dict[str, Any]], *, order: Sequence[str] | None = None,
                  meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """summary.json, summary.csv, results.csv and report.md in `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(rows, order=order)
    document = report_document(rows, order=order, meta=meta)
    paths = {
        "summary_json": out / "summary.json",
        "summary_csv": out / "summary.csv",
        "results_csv": out / "results.csv",
        "report_md": out / "report.md",
    }
    paths["summary_json"].write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["summary_csv"].write_text(summaries_csv(summaries), encoding="utf-8")
    paths["results_csv"].write_text(results_csv(rows), encoding="utf-8")
    paths["report_md"].write_text(format_markdown(summaries) + "\n" + paired_section(rows, order=order, markdown=True),
                                  encoding="utf-8")
    return paths


def paired_section(rows: Sequence[dict[str, Any]], *, order: Sequence[str] | None = None,
                   markdown: bool = False) -> str:
    """Every model against the best single model, item by item (eval/paired.py); "" without a reference."""
    from .paired import best_single, format_paired, paired_against

    reference = best_single(rows, order=order)
    if reference is None:
        return ""
    summaries = summarize(rows, order=order)
    table = format_paired(paired_against(rows, reference, [s.model for s in summaries]), markdown=markdown)
    if not table:
        return ""
    title = f"Paired against the best single model, {reference}:"
    out = f"\n{'## ' if markdown else ''}{title}\n\n{table}\n"
    for instructed, results in instructed_pairings(rows, summaries, reference):
        table = format_paired(results, markdown=markdown)
        if table:
            title = (f"Paired against the same model with the strategies' reasoning instruction, {instructed} "
                     "(a composite's gain over this one is not its prompt's):")
            out += f"\n{'## ' if markdown else ''}{title}\n\n{table}\n"
    return out


def instructed_pairings(rows: Sequence[dict[str, Any]], summaries: Sequence[ModelSummary],
                        reference: str | None) -> list[tuple[str, list[Any]]]:
    """Each `cot(<model>)` baseline present, with every composite (and cot-sc) paired against it: the second
    reference, the member given the same reasoning instruction as the composites' prompts."""
    from .paired import paired_against

    kinds: dict[Any, str] = {}
    for row in rows:
        kinds.setdefault(row.get("model"), str(row.get("kind")))
    names = [s.model for s in summaries]
    challengers = [n for n in names if n != reference and kinds.get(n) in ("composite", "cot-sc")]
    return [(n, paired_against(rows, n, challengers)) for n in names if kinds.get(n) == "cot"]
