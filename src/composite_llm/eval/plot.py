"""Accuracy against cost and against latency, one PNG with two panels (matplotlib, extra `[eval]`).

Error bars are the 95% Wilson intervals. When every cost is $0 (local models), the cost panel plots
tokens per item instead, and says so: tokens are what a local model spends.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .report import ModelSummary

MARKERS = {"model": "o", "member": "o", "composite": "D", "self-moa": "s"}
COLORS = {"model": "#4c72b0", "member": "#4c72b0", "composite": "#dd8452", "self-moa": "#55a868"}
INSTALL_HINT = "pip install 'composite-llm[eval]' (matplotlib)"


class PlotUnavailable(RuntimeError):
    pass


def plot_summaries(summaries: Sequence[ModelSummary], path: str | Path, *, title: str = "") -> Path:
    """Write the two-panel PNG; raises PlotUnavailable when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(f"matplotlib is not installed: {INSTALL_HINT}") from exc

    points = [s for s in summaries if s.n > 0]
    use_cost = any(s.cost_total > 0 for s in points)
    fig, (ax_cost, ax_latency) = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, xs, xlabel in (
        (ax_cost, [s.cost_per_item if use_cost else s.tokens_per_item for s in points],
         "cost per item (USD)" if use_cost else "tokens per item (every cost is $0: local models)"),
        (ax_latency, [s.latency_mean_s or 0.0 for s in points], "mean latency per item (s)"),
    ):
        positive = [x for x in xs if x > 0]
        log_scale = bool(positive) and len(positive) == len(xs) and max(positive) / min(positive) > 20
        where = [math.log10(x) for x in xs] if log_scale else list(xs)  # positions as drawn
        span = max(where) - min(where) if where else 0.0
        placed: list[tuple[float, float]] = []  # labels already drawn, in axis fractions
        for summary, x, at in zip(points, xs, where):
            kind = summary.kind
            low = max(0.0, summary.accuracy - summary.ci_low)
            high = max(0.0, summary.ci_high - summary.accuracy)
            ax.errorbar([x], [summary.accuracy * 100], yerr=[[low * 100], [high * 100]],
                        fmt=MARKERS.get(kind, "o"), color=COLORS.get(kind, "#8172b2"), ecolor="#999999",
                        capsize=4, markersize=8)
            # a label close to one already drawn goes one line lower instead of on top of it
            fx, fy = ((at - min(where)) / span if span else 0.0), summary.accuracy
            lines_down = sum(1 for px, py in placed if abs(px - fx) < 0.35 and abs(py - fy) < 0.06)
            placed.append((fx, fy))
            ax.annotate(summary.model.replace("composite/profile/", "profile/"), (x, summary.accuracy * 100),
                        textcoords="offset points", xytext=(6, 6 - 11 * lines_down), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if log_scale:
            ax.set_xscale("log")
            ax.set_xlim(min(positive) / 1.5, max(positive) * 3)
        elif xs:
            ax.set_xlim(0, (max(xs) or 1.0) * 1.35)  # from zero, with room for the labels
    ax_cost.set_ylabel("accuracy (%), 95% Wilson interval")
    ax_cost.set_ylim(-5, 105)
    handles = [plt.Line2D([], [], marker=MARKERS[k], color=COLORS[k], linestyle="", label=label)
               for k, label in (("model", "single model"), ("composite", "composite"),
                                ("self-moa", "Self-MoA baseline"))]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.95))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
