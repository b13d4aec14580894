"""What to run: the models asked for, and with `--baselines` the controls a composite must beat.

- each member of every composite, alone (the strategy's `member_models(topology)`, deduplicated;
  nested composites are not expanded);
- Self-MoA of the best member: the best-scoring member sampled three times (temperatures 0.7/0.8/0.9) and
  aggregated by itself. "Best" is decided on this run's results (accuracy, then lower mean latency), so it
  runs after the members, as a second phase;
- the best member with the reasoning instruction the strategies give their models (`COT_INSTRUCTION`,
  debate's revision wording: check the reasoning step by step, then answer in the form asked for), as one
  call (`cot(<model>)`) and as self-consistency of five such samples (`cot-sc(<model>)`). A composite's
  gain over these is its own; a gain over the plain member alone may only be its prompt's.

A member alone is called with its model string only: profile node `params` (temperature, max_tokens) and
provider bundles are not applied, so a member that needs a bundle's api_base gets the run's `--param`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

PREFIX = "composite/"  # composite_llm.model_string.PREFIX (that module imports litellm)
SELF_MOA_TEMPERATURES = (0.7, 0.8, 0.9)
# The instruction debate's revision rounds give every member (strategies/debate.py REVISE_PROMPT), as it
# reads for a first answer; fusion's judge and cascade's verifier are told to check step by step too.
COT_INSTRUCTION = ("Think step by step: work through the problem and check each step, then give your answer "
                   "to the question, complete and in the form it asked for, on the last line.")
COT_SC_SAMPLES = 5
COT_SC_TEMPERATURE = 0.7


@dataclass(frozen=True)
class ModelSpec:
    """One column of the comparison: a label (the results key) and how to call it."""

    label: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    kind: str = "model"  # model | composite | member, self-moa, cot, cot-sc (baselines)
    baseline_of: str | None = None
    instruction: str | None = None  # appended to the task's last user message (the CoT baselines)

    @property
    def is_composite(self) -> bool:
        return self.model.startswith(PREFIX)


def parse_models(text: str | Sequence[str]) -> list[ModelSpec]:
    names = text.split(",") if isinstance(text, str) else list(text)
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for raw in names:
        name = raw.strip()
        if not name or name in seen:
            continue
        seen.add(name)
        specs.append(named_baseline(name) or
                     ModelSpec(label=name, model=name, kind="composite" if name.startswith(PREFIX) else "model"))
    return specs


def named_baseline(name: str) -> ModelSpec | None:
    """`cot(<model>)`, `cot-sc(<model>)` or `self-moa(<model>)` as a model to compare: the baseline of that
    name, run item by item beside the others (`--baselines` runs them after every member, as a second
    phase, so a stopped run may have none)."""
    for kind in ("cot-sc", "cot", "self-moa"):
        prefix = f"{kind}("
        if name.startswith(prefix) and name.endswith(")") and len(name) > len(prefix) + 1:
            model = name[len(prefix):-1]
            if kind == "self-moa":
                return self_moa_spec(model)
            cot, cot_sc = cot_specs(model)
            return cot_sc if kind == "cot-sc" else cot
    return None


def composite_members(model: str) -> list[str]:
    """The member models of a composite model string, in topology order, without repeats.

    Profiles: `strategy.member_models(topology)`. Inline strings (`composite/moa/<provider>/<model>`): the
    final-stage model only (the other members come from request parameters this function does not see).
    """
    from ..model_string import parse_model_string

    target = parse_model_string(model)
    if target.profile is not None:
        from ..profiles import REGISTRY

        profile = REGISTRY.get(target.profile)
        members = profile.strategy.member_models(profile.topology)
    else:
        members = [target.final_model] if target.final_model else []
    return list(dict.fromkeys(m for m in members if m))


def expand_baselines(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """`specs` followed by every composite member not already listed, each as a `member` baseline."""
    out = list(specs)
    listed = {s.model for s in specs}
    for spec in specs:
        if not spec.is_composite:
            continue
        for member in composite_members(spec.model):
            if member in listed:
                continue
            listed.add(member)
            out.append(ModelSpec(label=member, model=member, kind="member", baseline_of=spec.label))
    return out


def self_moa_candidates(specs: Sequence[ModelSpec]) -> list[str]:
    """Models eligible as "best member": the members of the listed composites, else the plain models."""
    members: list[str] = []
    for spec in specs:
        if spec.is_composite and spec.kind == "composite":
            members.extend(composite_members(spec.model))
    members = [m for m in dict.fromkeys(members) if not m.startswith(PREFIX)]
    if members:
        return members
    return [s.model for s in specs if not s.is_composite]


def self_moa_spec(best: str, *, of: str | None = None) -> ModelSpec:
    """Self-MoA of one model: three samples at different temperatures, aggregated by the same model."""
    return ModelSpec(
        label=f"self-moa({best})",
        model=f"{PREFIX}moa/{best}",
        kwargs={"proposers": {"model": best, "samples": len(SELF_MOA_TEMPERATURES),
                              "temperatures": list(SELF_MOA_TEMPERATURES)}},
        kind="self-moa",
        baseline_of=of,
    )


def pick_best(results: Iterable[dict[str, Any]], candidates: Sequence[str],
              task_ids: set[str] | None = None) -> str | None:
    """The candidate (by label) with the highest accuracy on `task_ids`; ties: lower mean latency, then
    the earlier candidate. None when no candidate has results."""
    stats: dict[str, list[float]] = {}
    for row in results:
        label = row.get("model")
        if label not in candidates or (task_ids is not None and row.get("task_id") not in task_ids):
            continue
        entry = stats.setdefault(label, [0.0, 0.0, 0.0, 0.0])  # n, correct, latency sum, latency n
        entry[0] += 1
        entry[1] += 1 if row.get("correct") else 0
        if row.get("error") is None and row.get("latency_s") is not None:
            entry[2] += row["latency_s"]
            entry[3] += 1
    if not stats:
        return None

    def key(label: str) -> tuple[float, float, int]:
        n, correct, lat_sum, lat_n = stats[label]
        return (-(correct / n), (lat_sum / lat_n) if lat_n else float("inf"), candidates.index(label))

    return min(stats, key=key)


def cot_specs(best: str, *, of: str | None = None) -> list[ModelSpec]:
    """The best member with the strategies' reasoning instruction: one call, and self-consistency of it."""
    return [
        ModelSpec(label=f"cot({best})", model=best, kind="cot", baseline_of=of, instruction=COT_INSTRUCTION),
        ModelSpec(label=f"cot-sc({best})", model=f"{PREFIX}self-consistency/{best}",
                  kwargs={"samples": COT_SC_SAMPLES, "temperature": COT_SC_TEMPERATURE}, kind="cot-sc",
                  baseline_of=of, instruction=COT_INSTRUCTION),
    ]
