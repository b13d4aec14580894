"""`composite-llm tune`: which composite helps on my tasks, at what cost? A search over topologies.

1. **Search space** (`search_space`): from candidate models, sample counts and temperatures, every
   strategy asked for: each model alone; self-consistency and Self-MoA of each model; with two or more
   models, mixed MoA, fusion (panel of all models, each model as judge) and debate; self-fusion and
   self-debate of each model; cascades over every ordered pair (cheap model sampled, then the other).
   Every candidate is an inline composite (`composite/<strategy>/<model>` plus parameters), so the eval
   runner runs it unchanged and its topology can be written as a profile.
2. **Racing with early elimination** (`tune`): the tasks are run in rounds of `round_size` items (all
   surviving candidates answer the same items: paired data). After each round a composite is eliminated
   when another surviving candidate is *clearly* better on the items so far, paired item by item
   (exact McNemar test, p < `alpha`, more wins than losses) **and** no more expensive (tokens per item and
   mean latency not higher): dominated on every axis, so it cannot be on the frontier. Single models are
   never eliminated (they are the reference).
3. **Budget**: calls (sub-calls counted from the traces), dollars (summed cost) or minutes (the summed
   request latency, i.e. model time, not wall time). Before each round the round's cost is estimated
   from what each candidate spent per item so far (before any data: its topology's call count) and the
   round is shortened to fit; the search stops when the budget is spent or the tasks run out.
4. **Result**: the accuracy-tokens-latency(-cost) Pareto frontier of the surviving candidates on the
   items they all answered, each paired against the best single model (exact McNemar); the chosen
   topology (the most accurate composite on the frontier; ties: fewer tokens, then lower latency) is
   written as a profile YAML for `composite/profile/<name>` and the proxy.

Resumable like eval: results go to the same JSONL file (one line per (candidate, task)), and every
decision (eliminations, budget) is recomputed from that file, so rerunning the command continues.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .baselines import PREFIX, ModelSpec
from .paired import pair
from .report import ModelSummary, summarize
from .runner import latest_results
from .tasks import Task

STRATEGIES = ("single", "self_consistency", "moa", "fusion", "cascade", "debate")
BUDGET_KINDS = ("calls", "dollars", "minutes")


# --------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """One topology of the search: how to call it inline, and how to write it as a profile."""

    label: str
    strategy: str | None  # None: a single model
    model: str               # the model string's model (final stage) or the single model
    inline: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    calls: int = 1           # sub-calls per item, an estimate before any data (upper bound for cascades)

    @property
    def model_string(self) -> str:
        if self.strategy is None:
            return self.model
        return f"{PREFIX}{self.strategy.replace('_', '-')}/{self.model}"

    def spec(self) -> ModelSpec:
        kind = "model" if self.strategy is None else "composite"
        return ModelSpec(label=self.label, model=self.model_string, kwargs=dict(self.inline), kind=kind)

    def profile(self) -> dict[str, Any]:
        """The profile entry (strategy + topology) that runs exactly what the inline candidate ran."""
        from ..strategies import get_strategy

        if self.strategy is None:
            raise ValueError(f"{self.label} is a single model, not a composite topology")
        strategy = get_strategy(self.strategy)
        loose = sorted(set(self.inline) - strategy.inline_keys)
        if loose:  # they would be request parameters when measured, and missing from the profile
            raise ValueError(f"{self.label}: {', '.join(loose)} would not be part of the profile's topology")
        topology = strategy.topology_from_inline(self.model, dict(self.inline))
        strategy.topology_model.model_validate(topology)  # fails here, not in the user's proxy
        return {"strategy": strategy.name, "topology": topology}


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def _sampled(model: str, k: int, t: float) -> dict[str, Any]:
    return {"model": model, "samples": k, "temperature": t}


def search_space(models: Sequence[str], *, strategies: Sequence[str] = STRATEGIES, samples: Sequence[int] = (3,),
                 temperatures: Sequence[float] = (0.7,), rounds: int = 1) -> list[Candidate]:
    """Every candidate topology for these models (see the module docstring), without duplicates."""
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}")
    models = list(dict.fromkeys(models))
    if not models:
        raise ValueError("no candidate models")
    out: list[Candidate] = []
    mixed = len(models) >= 2
    for m in models:
        if "single" in strategies:
            out.append(Candidate(label=m, strategy=None, model=m))
    for k in samples:
        for t in temperatures:
            tag = f"k={k},t={t}"
            for m in models:
                if "self_consistency" in strategies:
                    # `temperatures`, not `temperature`: the latter is a request parameter for self-consistency
                    # and would not be part of the written profile's topology
                    out.append(Candidate(f"sc({_short(m)},{tag})", "self_consistency", m,
                                         {"samples": k, "temperatures": [t] * k}, calls=k))
                if "moa" in strategies:
                    out.append(Candidate(f"self-moa({_short(m)},{tag})", "moa", m,
                                         {"proposers": _sampled(m, k, t)}, calls=k + 1))
                if "fusion" in strategies:
                    out.append(Candidate(f"self-fusion({_short(m)},{tag})", "fusion", m,
                                         {"panel": _sampled(m, k, t)}, calls=k + 2))
                if "debate" in strategies and k >= 2:
                    out.append(Candidate(f"self-debate({_short(m)},{tag},r={rounds})", "debate", m,
                                         {"members": _sampled(m, k, t), "rounds": rounds}, calls=k * (rounds + 1)))
                if "cascade" in strategies and k >= 2:
                    for big in models:
                        if big != m:
                            out.append(Candidate(f"cascade({_short(m)}x{k},t={t}->{_short(big)})", "cascade", big,
                                                 {"tiers": [_sampled(m, k, t)]}, calls=k + 1))
    if mixed:
        names = "+".join(_short(m) for m in models)
        for judge in models:
            if "moa" in strategies:
                out.append(Candidate(f"moa({names}->{_short(judge)})", "moa", judge, {"proposers": list(models)},
                                     calls=len(models) + 1))
            if "fusion" in strategies:
                out.append(Candidate(f"fusion({names}->{_short(judge)})", "fusion", judge, {"panel": list(models)},
                                     calls=len(models) + 2))
        if "debate" in strategies:
            out.append(Candidate(f"debate({names},r={rounds})", "debate", models[0],
                                 {"members": list(models), "rounds": rounds}, calls=len(models) * (rounds + 1)))
    unique: dict[str, Candidate] = {}
    for candidate in out:
        unique.setdefault(candidate.label, candidate)
    return list(unique.values())


# --------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class Budget:
    kind: str
    limit: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind must be one of {', '.join(BUDGET_KINDS)}")
        if not self.limit > 0:
            raise ValueError("the budget must be positive")

    def of_row(self, row: dict[str, Any]) -> float:
        """What one result row spent, in this budget's unit."""
        if self.kind == "calls":
            return float((row.get("composite") or {}).get("sub_calls") or 1)
        if self.kind == "dollars":
            return float(row.get("cost") or 0.0)
        return float(row.get("latency_s") or 0.0) / 60.0

    def spent(self, rows: Sequence[dict[str, Any]], labels: set[str]) -> float:
        return sum(self.of_row(r) for (label, _), r in latest_results(rows).items() if label in labels)

    def describe(self, value: float) -> str:
        return {"calls": f"{value:.0f} calls", "dollars": f"${value:.4f}", "minutes": f"{value:.1f} min"}[self.kind]


def per_item_estimate(budget: Budget, candidate: Candidate, rows: Sequence[dict[str, Any]]) -> float:
    """What one more item of `candidate` will cost: its mean so far, else its topology's call count (for
    dollars and minutes before any data: unknown, taken as 0, so the first round always runs)."""
    mine = [r for (label, _), r in latest_results(rows).items() if label == candidate.label]
    if mine:
        return sum(budget.of_row(r) for r in mine) / len(mine)
    return float(candidate.calls) if budget.kind == "calls" else 0.0


# --------------------------------------------------------------------------- elimination and frontier
@dataclass
class Elimination:
    label: str
    by: str
    round: int
    wins: int
    losses: int
    p_value: float


def dominated(rows: Sequence[dict[str, Any]], alive: Sequence[Candidate], task_ids: set[str], alpha: float,
              round_number: int) -> list[Elimination]:
    """Composites that another surviving candidate clearly beats on the items so far (paired, p < alpha)
    at no higher tokens per item and mean latency."""
    summaries = {s.model: s for s in summarize(rows, task_ids=task_ids) if s.model in {c.label for c in alive}}
    out: list[Elimination] = []
    for loser in alive:
        if loser.strategy is None or loser.label not in summaries:
            continue
        weak = summaries[loser.label]
        for winner in alive:
            if winner.label == loser.label or winner.label not in summaries:
                continue
            strong = summaries[winner.label]
            if not _no_costlier(strong, weak):
                continue
            result = pair(rows, winner.label, loser.label, task_ids)
            if result.wins > result.losses and result.p_value < alpha:
                out.append(Elimination(loser.label, winner.label, round_number, result.wins, result.losses,
                                       result.p_value))
                break
    return out


def _no_costlier(a: ModelSummary, b: ModelSummary) -> bool:
    latency_a = a.latency_mean_s if a.latency_mean_s is not None else math.inf
    latency_b = b.latency_mean_s if b.latency_mean_s is not None else math.inf
    return a.tokens_per_item <= b.tokens_per_item and latency_a <= latency_b and a.cost_per_item <= b.cost_per_item


def pareto_frontier(summaries: Sequence[ModelSummary]) -> list[ModelSummary]:
    """The summaries no other one dominates: at least as accurate, as few tokens, as fast and as cheap,
    and strictly better on one of them."""
    def key(s: ModelSummary) -> tuple[float, float, float, float]:
        latency = s.latency_mean_s if s.latency_mean_s is not None else math.inf
        return (-s.accuracy, s.tokens_per_item, latency, s.cost_per_item)

    frontier = []
    for s in summaries:
        mine = key(s)
        if not any(all(o <= m for o, m in zip(key(other), mine)) and key(other) != mine
                   for other in summaries if other is not s):
            frontier.append(s)
    return sorted(frontier, key=lambda s: (-s.accuracy, s.tokens_per_item))


def choose(frontier: Sequence[ModelSummary], candidates: dict[str, Candidate]) -> ModelSummary | None:
    """The most accurate composite on the frontier (ties: fewer tokens, then lower latency)."""
    composites = [s for s in frontier if candidates[s.model].strategy is not None]
    if not composites:
        return None
    return min(composites, key=lambda s: (-s.accuracy, s.tokens_per_item,
                                          s.latency_mean_s if s.latency_mean_s is not None else math.inf))


# --------------------------------------------------------------------------- the search
@dataclass
class TuneOutcome:
    rounds: int
    items: int
    spent: float
    budget: Budget | None
    stop_reason: str
    survivors: list[Candidate]
    eliminated: list[Elimination]
    summaries: list[ModelSummary]       # survivors on the items they all answered
    frontier: list[ModelSummary]
    reference: str | None            # the best single model
    paired: dict[str, Any]              # label -> PairedResult against the reference
    chosen: ModelSummary | None
    task_ids: set[str]


def interleave(tasks: Sequence[Task], seed: int = 0) -> list[Task]:
    """The tasks in a fixed pseudo-random order, task sets interleaved, so every round mixes them."""
    by_set: dict[str, list[Task]] = {}
    for task in tasks:
        by_set.setdefault(task.task_set, []).append(task)
    rng = random.Random(seed)
    for group in by_set.values():
        rng.shuffle(group)
    out: list[Task] = []
    while any(by_set.values()):
        for group in by_set.values():
            if group:
                out.append(group.pop(0))
    return out


RunRound = Callable[[list[ModelSpec], list[Task]], Any]  # awaitable: runs the pairs, appends results
ReadRows = Callable[[], list[dict[str, Any]]]


async def tune(candidates: Sequence[Candidate], tasks: Sequence[Task], *, run_round: RunRound, read_rows: ReadRows,
               budget: Budget | None = None, round_size: int = 8, alpha: float = 0.05,
               log: Callable[[str], None] = lambda line: None) -> TuneOutcome:
    """Race the candidates over `tasks` in rounds (see the module docstring)."""
    if round_size < 1:
        raise ValueError("round_size must be at least 1")
    by_label = {c.label: c for c in candidates}
    alive = list(candidates)
    eliminated: list[Elimination] = []
    done: list[Task] = []
    stop = "every task ran"
    round_number = 0
    labels = set(by_label)
    while len(done) < len(tasks):
        round_number += 1
        chunk = list(tasks[len(done):len(done) + round_size])
        rows = read_rows()
        if budget is not None:
            spent = budget.spent(rows, labels)
            # pairs already in the results cost nothing more (a resumed run)
            finished = {key for key, r in latest_results(rows).items() if not r.get("error")}
            def cost_of(items: list[Task]) -> float:
                return sum(per_item_estimate(budget, c, rows) for t in items for c in alive
                           if (c.label, t.id) not in finished)
            while chunk and spent + cost_of(chunk) > budget.limit:
                chunk.pop()
            if not chunk:
                stop = (f"budget: {budget.describe(spent)} of {budget.describe(budget.limit)} spent; the next item "
                        "would exceed it")
                round_number -= 1
                break
        log(f"round {round_number}: {len(alive)} candidates x {len(chunk)} tasks (items {len(done) + 1}-"
            f"{len(done) + len(chunk)} of {len(tasks)})"
            + (f", spent {budget.describe(budget.spent(rows, labels))} of {budget.describe(budget.limit)}"
               if budget else ""))
        await run_round([c.spec() for c in alive], chunk)
        done.extend(chunk)
        rows = read_rows()
        task_ids = {t.id for t in done}
        for out in dominated(rows, alive, task_ids, alpha, round_number):
            eliminated.append(out)
            log(f"  eliminated {out.label}: {out.by} wins {out.wins}-{out.losses} (p={out.p_value:.3g}) at no "
                "higher tokens or latency")
        gone = {e.label for e in eliminated}
        alive = [c for c in alive if c.label not in gone]
    rows = read_rows()
    task_ids = {t.id for t in done}
    summaries = [s for s in summarize(rows, order=[c.label for c in alive], task_ids=task_ids)
                 if s.model in {c.label for c in alive}]
    frontier = pareto_frontier(summaries)
    singles = [s for s in summaries if by_label[s.model].strategy is None]
    reference = min(singles, key=lambda s: (-s.accuracy, s.latency_mean_s or math.inf)).model if singles else None
    paired = {s.model: pair(rows, s.model, reference, task_ids) for s in summaries
              if reference is not None and s.model != reference}
    chosen = choose(frontier, by_label)
    return TuneOutcome(rounds=round_number, items=len(done),
                       spent=budget.spent(rows, labels) if budget else 0.0, budget=budget, stop_reason=stop,
                       survivors=alive, eliminated=eliminated, summaries=summaries, frontier=frontier,
                       reference=reference, paired=paired, chosen=chosen, task_ids=task_ids)


# --------------------------------------------------------------------------- output
def frontier_table(outcome: TuneOutcome) -> str:
    """The frontier as aligned text: accuracy, tokens, latency, cost, paired result against the reference."""
    header = ("candidate", "accuracy", "tokens/item", "mean s", "cost/item", f"vs {outcome.reference or '-'}", "p")
    rows = [header]
    for s in outcome.frontier:
        result = outcome.paired.get(s.model)
        versus = "reference" if s.model == outcome.reference else (
            f"+{result.wins}/-{result.losses}" if result else "-")
        p = f"{result.p_value:.3g}{' *' if result.significant else ''}" if result else "-"
        mark = " <- chosen" if outcome.chosen is not None and s.model == outcome.chosen.model else ""
        rows.append((s.model + mark, f"{s.accuracy:.0%} ({s.correct}/{s.n})", f"{s.tokens_per_item:.0f}",
                     "-" if s.latency_mean_s is None else f"{s.latency_mean_s:.2f}", f"${s.cost_per_item:.5f}",
                     versus, p))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("p: exact McNemar test (two-sided sign test on the items where exactly one is right); * p < 0.05")
    return "\n".join(lines)


def profile_document(name: str, candidate: Candidate, summary: ModelSummary, outcome: TuneOutcome,
                     tasks_spec: str) -> dict[str, Any]:
    result = outcome.paired.get(summary.model)
    versus = (f"; against {outcome.reference}: {result.wins} wins, {result.losses} losses, exact McNemar "
              f"p={result.p_value:.3g}" if result else "")
    description = (f"chosen by composite-llm tune on {tasks_spec} ({summary.n} items): accuracy "
                   f"{summary.correct}/{summary.n}, {summary.tokens_per_item:.0f} tokens/item{versus}")
    return {"profiles": {name: {"description": description, **candidate.profile()}}}
