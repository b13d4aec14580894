"""Does a composite beat its members? `composite-llm eval` and the pieces behind it.

    composite-llm eval --tasks arithmetic --models local/qwen2.5-coder-1.5b,composite/profile/self_moa_local \\
        --baselines --limit 10 --out eval-results

Modules (importing this package is cheap; litellm is imported only when requests are made):

- `tasks`: task sets (JSONL: id, prompt, expected, scorer); the bundled ones live in `eval/task_sets/`.
- `scorers`: exact, contains, regex, numeric (with tolerance) and llm_judge (JUDGE_PROMPT).
- `baselines`: each member of a composite alone; Self-MoA of the best member and the best member with the
  strategies' reasoning instruction (cot, cot-sc).
- `paired`: wins/losses against the best single model and the exact McNemar test.
- `runner`: bounded concurrency, a progress bar, resumable results (one JSONL line per (model, task)).
- `report`: accuracy with a 95% Wilson interval, mean/p95 latency, tokens, cost; JSON, CSV, markdown.
- `plot`: accuracy against cost (or tokens, when every cost is $0) and against latency, as PNG.
- `command`: the `composite-llm eval` subcommand.
- `tune`, `tune_command`: `composite-llm tune` (search space, racing with elimination, budget, frontier,
  profile YAML).
"""

from __future__ import annotations

__all__: list[str] = []
