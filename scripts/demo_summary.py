"""The composite_llm_research-style SUMMARY printed by the demos: one line per model with its answer, latency, tokens, cost.

Shared by `demo.py`, `demo_profiles.py` and `scripts/demo_proxy.py`; imports nothing heavy. It lives beside
the demos, not in the library: printing a demo's table is no job of `composite_llm`.
"""

from __future__ import annotations

from dataclasses import dataclass

RULE = "═" * 70


@dataclass
class Outcome:
    """What one model did with the task (`text` is the error message when `ok` is False)."""

    model: str
    ok: bool
    text: str
    latency_s: float
    total_tokens: int | None = None
    cost: float | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.model


def preview(text: str, width: int = 100) -> str:
    """One line; the end of a long answer (where the conclusion is), as composite_llm_research showed it."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else "..." + flat[-(width - 3):]


def summary(task: str, outcomes: list[Outcome]) -> str:
    width = max((len(o.name) for o in outcomes), default=0)
    lines = ["", RULE, "📊 SUMMARY", RULE, "", f"Task: {task}", ""]
    for o in outcomes:
        if o.ok:
            stats = [f"{o.latency_s:.2f} s"]
            stats.append(f"{o.total_tokens} tok" if o.total_tokens is not None else "? tok")
            stats.append(f"${o.cost:.6f}" if o.cost is not None else "$?")
            lines.append(f"  ✓ {o.name:<{width}} → {preview(o.text) or '(empty answer)'}")
            lines.append(f"    {'':<{width}}   {' · '.join(stats)}")
        else:
            lines.append(f"  ✗ {o.name:<{width}} → {preview(o.text, 160)}")
    total_cost = sum(o.cost or 0.0 for o in outcomes)
    ok = sum(o.ok for o in outcomes)
    lines += ["", f"{ok}/{len(outcomes)} models answered · total cost ${total_cost:.6f}", RULE]
    return "\n".join(lines)
