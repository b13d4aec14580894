"""Item-paired comparison of two models on the same tasks: wins, losses, and the exact McNemar test.

Two models answer the same items, so their accuracies are not independent samples: what tells them apart
are the items where exactly one of them is right (a "win" for one, a "loss" for the other). Under the
null hypothesis that neither is better, each such discordant item is a fair coin; the exact McNemar test
is the two-sided binomial (sign) test of the wins among the discordant items, p = P(|X - n/2| >= |w - n/2|)
for X ~ Binomial(n, 1/2). Items both got right or both got wrong carry no information and are ties.

The reference is the best single model of the run (a plain model or a member alone, not a composite and
not a baseline with an added instruction): highest accuracy, then lower mean latency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import comb
from typing import Any, Iterable, Sequence

from .runner import latest_results

TEST_NAME = "exact McNemar (two-sided sign test on discordant items)"
SINGLE_KINDS = ("model", "member")


def exact_sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of `wins` successes in `wins + losses` fair-coin trials."""
    n = wins + losses
    if n == 0:
        return 1.0
    low = min(wins, losses)
    tail = sum(comb(n, k) for k in range(low + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass
class PairedResult:
    model: str
    reference: str
    n: int            # items both answered (rows for both)
    wins: int         # model right, reference wrong
    losses: int       # model wrong, reference right
    ties: int
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def pair(rows: Iterable[dict[str, Any]], model: str, reference: str,
         task_ids: set[str] | None = None) -> PairedResult:
    """Wins/losses/ties of `model` against `reference` over the items both have a result for."""
    latest = latest_results(rows)
    mine = {task: row for (name, task), row in latest.items() if name == model}
    theirs = {task: row for (name, task), row in latest.items() if name == reference}
    items = sorted(set(mine) & set(theirs) if task_ids is None else set(mine) & set(theirs) & task_ids)
    wins = sum(1 for t in items if mine[t].get("correct") and not theirs[t].get("correct"))
    losses = sum(1 for t in items if theirs[t].get("correct") and not mine[t].get("correct"))
    return PairedResult(model=model, reference=reference, n=len(items), wins=wins, losses=losses,
                        ties=len(items) - wins - losses, p_value=exact_sign_test(wins, losses))


def best_single(rows: Iterable[dict[str, Any]], order: Sequence[str] | None = None) -> str | None:
    """The reference: the most accurate single model (no composite, no added instruction), then the
    fastest, then the first listed."""
    from .report import summarize

    rows = list(rows)
    singles = {str(r["model"]) for r in rows if r.get("kind") in SINGLE_KINDS
               and not str(r.get("model_string") or r["model"]).startswith("composite/")}
    summaries = [s for s in summarize(rows, order=order) if s.model in singles]
    if not summaries:
        return None
    position = {s.model: i for i, s in enumerate(summaries)}
    return min(summaries, key=lambda s: (-s.accuracy, s.latency_mean_s if s.latency_mean_s is not None
                                         else float("inf"), position[s.model])).model


def paired_against(rows: Iterable[dict[str, Any]], reference: str, models: Sequence[str],
                   task_ids: set[str] | None = None) -> list[PairedResult]:
    rows = list(rows)
    return [pair(rows, model, reference, task_ids) for model in models if model != reference]


PAIRED_HEADER = ("model", "vs", "items", "wins", "losses", "ties", "p")


def _cells(result: PairedResult) -> tuple[str, ...]:
    return (result.model, result.reference, str(result.n), str(result.wins), str(result.losses), str(result.ties),
            f"{result.p_value:.3g}" + (" *" if result.significant else ""))


def format_paired(results: Sequence[PairedResult], *, markdown: bool = False) -> str:
    """The paired table (plain aligned text or markdown), with the test named under it."""
    if not results:
        return ""
    rows = [PAIRED_HEADER, *(_cells(r) for r in results)]
    footer = f"p: {TEST_NAME}; * p < 0.05"
    if markdown:
        lines = ["| " + " | ".join(PAIRED_HEADER) + " |",
                 "| " + " | ".join("---:" if i >= 2 else "---" for i in range(len(PAIRED_HEADER))) + " |"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows[1:]]
        return "\n".join(lines) + f"\n\n{footer}"
    widths = [max(len(r[i]) for r in rows) for i in range(len(PAIRED_HEADER))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i >= 2 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + f"\n{footer}"
