"""Adaptive self-consistency versus fixed n, on the fake server.

Each task's sampled answers are drawn from a seeded distribution (right with probability p, otherwise
one of a few wrong answers). Every configuration runs the real `self_consistency` strategy through
LiteLLM against the fake OpenAI server. The draws are paired: sample k of a task always gets the task's
k-th pre-drawn answer (the fake model reads k from the sample's temperature), so an adaptive run sees a
prefix of what fixed n sees, ties break alike, and any accuracy difference comes from stopping early.

    python benchmarks/adaptive_self_consistency.py [--items 50] [--seed 7] [--output PATH]

Writes a markdown section to benchmarks/results/adaptive_self_consistency.md (machine, versions, date).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import litellm  # noqa: E402

import composite_llm  # noqa: E402
from composite_llm import register_composite_provider  # noqa: E402
from composite_llm.testing import FakeOpenAIServer  # noqa: E402

MAX_SAMPLES = 9
MODEL = "composite/self-consistency/openai/sampler"
# Sample k runs at temperature 0.50 + k/100: the fake model reads it to hand sample k the task's k-th draw,
# so every configuration gives sample k the same answer (ties break the same way everywhere).
TEMPERATURES = [round(0.5 + k / 100, 2) for k in range(MAX_SAMPLES)]
CONFIGS: dict[str, dict[str, Any]] = {
    "single sample (n=1)": {"samples": 1},
    "fixed n=9": {"samples": MAX_SAMPLES},
    "adaptive: waves of 3, stop_share 0.67": {"samples": MAX_SAMPLES, "wave_size": 3, "stop_share": 0.67},
    "adaptive, share rule only (stop_when_decided off)": {"samples": MAX_SAMPLES, "wave_size": 3, "stop_share": 0.67,
                                                          "stop_when_decided": False},
    "waves of 3, stop only when decided (no stop_share)": {"samples": MAX_SAMPLES, "wave_size": 3},
}
FIXED = "fixed n=9"


@dataclass
class Scenario:
    name: str
    p_correct: float
    wrong_weights: list[float]  # relative weights of the wrong answers

    def describe(self) -> str:
        total = sum(self.wrong_weights)
        shares = ", ".join(f"{(1 - self.p_correct) * w / total:.2f}" for w in self.wrong_weights)
        return f"right with p={self.p_correct}, wrong answers with p={shares}"


SCENARIOS = [
    Scenario("main: p=0.7, three wrong answers", 0.7, [1, 1, 1]),
    Scenario("hard: p=0.5, one strong distractor", 0.5, [3, 1, 1]),
    Scenario("easy: p=0.9, three wrong answers", 0.9, [1, 1, 1]),
]


class ScriptedSampler:
    """The fake model: sample k of task t answers the k-th pre-drawn answer of task t."""

    def __init__(self, draws: dict[int, list[str]]) -> None:
        self.draws = draws

    def __call__(self, request: Any) -> str:
        task = int(re.search(r"Task (\d+)", request.last_user_text).group(1))
        sample = TEMPERATURES.index(round(float(request.body["temperature"]), 2))
        return f"Working through task {task} step by step.\nThe answer is {self.draws[task][sample]}."


def draw_tasks(scenario: Scenario, items: int, rng: random.Random) -> tuple[dict[int, str], dict[int, list[str]]]:
    truth, draws = {}, {}
    for task in range(items):
        right = rng.randint(10, 999)
        wrong = rng.sample([v for v in range(10, 999) if v != right], len(scenario.wrong_weights))
        truth[task] = str(right)
        draws[task] = [str(right) if rng.random() < scenario.p_correct
                       else str(rng.choices(wrong, weights=scenario.wrong_weights)[0])
                       for _ in range(MAX_SAMPLES)]
    return truth, draws


async def run_config(server: FakeOpenAIServer, truth: dict[int, str], settings: dict[str, Any],
                     concurrency: int) -> dict[str, Any]:
    limit = asyncio.Semaphore(concurrency)
    outcomes: dict[int, tuple[str, int]] = {}

    async def one(task: int) -> None:
        async with limit:
            response = await litellm.acompletion(
                model=MODEL, messages=[{"role": "user", "content": f"Task {task}: what is the number?"}],
                api_base=server.base_url, api_key="sk-bench", **settings)
        details = response.choices[0].message.provider_specific_fields["composite"]["details"]["self_consistency"]
        outcomes[task] = (details["winner"], details["samples_spent"])

    started = time.monotonic()
    await asyncio.gather(*(one(task) for task in truth))
    elapsed = time.monotonic() - started
    correct = sum(outcomes[t][0] == truth[t] for t in truth)
    spent = [outcomes[t][1] for t in truth]
    return {"accuracy": correct / len(truth), "correct": correct, "mean_samples": sum(spent) / len(spent),
            "answers": {t: outcomes[t][0] for t in truth}, "seconds": elapsed}


async def run_scenario(server: FakeOpenAIServer, sampler: ScriptedSampler, scenario: Scenario, items: int, seed: int,
                       concurrency: int) -> dict[str, dict[str, Any]]:
    truth, draws = draw_tasks(scenario, items, random.Random(f"{seed}/{scenario.name}"))
    sampler.draws = draws
    results = {}
    for name, settings in CONFIGS.items():
        settings = {**settings, "temperatures": TEMPERATURES[:settings["samples"]]}
        results[name] = await run_config(server, truth, settings, concurrency)
        print(f"  {name:<52} accuracy {results[name]['accuracy']:.2f}  mean samples "
              f"{results[name]['mean_samples']:.2f}  ({results[name]['seconds']:.1f} s)", flush=True)
    return results


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs"


def render(all_results: dict[str, dict[str, dict[str, Any]]], items: int, seed: int, seconds: float) -> str:
    lines = [
        "## Adaptive self-consistency versus fixed n",
        "",
        f"- Date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {machine()}",
        f"- Versions: Python {platform.python_version()}, litellm {litellm_version()}, "
        f"composite-llm {composite_llm.__version__}",
        f"- Command: `python benchmarks/adaptive_self_consistency.py --items {items} --seed {seed}` "
        f"({seconds:.0f} s wall time)",
        f"- Setup: the real `self_consistency` strategy through `litellm.acompletion` against the fake OpenAI "
        f"server; {items} tasks per scenario, each with a pre-drawn sequence of {MAX_SAMPLES} sampled answers "
        "shared by every configuration (paired draws: a configuration that stops early sees a prefix of what "
        "fixed n sees, sample k always gets draw k, so ties break the same way). The fake model's answer is a "
        "seeded draw; no real model is involved, so the figures "
        "measure the stopping rule, not a model.",
        "",
    ]
    for scenario in SCENARIOS:
        results = all_results[scenario.name]
        fixed = results[FIXED]
        lines += [f"### {scenario.name}", "", f"Each sample: {scenario.describe()}.", "",
                  "| configuration | accuracy | mean samples | samples vs fixed n=9 | answers differing from fixed |",
                  "|---|---|---|---|---|"]
        for name, result in results.items():
            differ = sum(result["answers"][t] != fixed["answers"][t] for t in fixed["answers"])
            lines.append(f"| {name} | {result['accuracy']:.2f} ({result['correct']}/{items}) | "
                         f"{result['mean_samples']:.2f} | {result['mean_samples'] / fixed['mean_samples']:.2f} | "
                         f"{differ} |")
        lines.append("")
    main = all_results[SCENARIOS[0].name]
    adaptive = main["adaptive: waves of 3, stop_share 0.67"]
    lines += [
        "### Reading",
        "",
        f"On the main scenario adaptive sampling spent {adaptive['mean_samples']:.2f} samples per task instead of "
        f"{MAX_SAMPLES} (ratio {adaptive['mean_samples'] / main[FIXED]['mean_samples']:.2f}) for an accuracy of "
        f"{adaptive['accuracy']:.2f} against {main[FIXED]['accuracy']:.2f} with fixed n. "
        "`stop_share` stops after the first wave only when it is unanimous (2 of 3 is a share of 0.667, below "
        "0.67); `stop_when_decided` (on by default) also stops once the samples left cannot change the winner, "
        "which never changes the answer relative to the same waves run to the end (the last row). The two "
        "adaptive rows coincide on these draws: with no unreadable samples, after 6 samples both rules need 5 "
        "of 6 to agree. With "
        f"{items} tasks, one task is {1 / items:.2f} of accuracy: differences of a task or two are noise.",
        "",
    ]
    return "\n".join(lines)


def litellm_version() -> str:
    from importlib.metadata import version

    return version("litellm")


async def main_async(args: argparse.Namespace) -> str:
    register_composite_provider()
    sampler = ScriptedSampler({})
    started = time.monotonic()
    with FakeOpenAIServer() as server:
        server.set_model("sampler", reply=sampler)
        all_results = {}
        for scenario in SCENARIOS:
            print(f"{scenario.name}: {scenario.describe()}", flush=True)
            all_results[scenario.name] = await run_scenario(server, sampler, scenario, args.items, args.seed,
                                                            args.concurrency)
    return render(all_results, args.items, args.seed, time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=8, help="tasks in flight at once")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "adaptive_self_consistency.md")
    args = parser.parse_args()
    litellm.suppress_debug_info = True
    report = asyncio.run(main_async(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
