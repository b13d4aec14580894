"""`composite-llm tune` on the fake server: the search space, racing with early elimination, the budget,
the Pareto frontier with paired significance, the profile YAML (loaded and called), resuming."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import litellm
import pytest
import yaml

from composite_llm import load_profiles
from composite_llm.cli import main as cli_main
from composite_llm.eval.report import ModelSummary
from composite_llm.eval.tune import Budget, Candidate, interleave, pareto_frontier, search_space, tune
from composite_llm.eval.tasks import Task
from conftest import API_KEY, user


def _summary(name, accuracy, tokens, latency, cost=0.0):
    return ModelSummary(model=name, kind="model", baseline_of=None, n=10, correct=int(accuracy * 10), errors=0,
                        accuracy=accuracy, ci_low=0, ci_high=1, latency_mean_s=latency, latency_p95_s=latency,
                        prompt_tokens=0, completion_tokens=0, tokens_per_item=tokens, cost_total=cost * 10,
                        cost_per_item=cost, cost_complete=True)


def test_search_space_topologies_are_valid_profiles():
    space = search_space(["openai/a", "openai/b"], samples=[3], temperatures=[0.7])
    labels = [c.label for c in space]
    assert len(labels) == len(set(labels))
    assert {"openai/a", "openai/b", "sc(a,k=3,t=0.7)", "self-moa(b,k=3,t=0.7)", "self-fusion(a,k=3,t=0.7)",
            "cascade(ax3,t=0.7->b)", "fusion(a+b->a)", "moa(a+b->b)", "debate(a+b,r=1)"} <= set(labels)
    for candidate in space:
        if candidate.strategy is None:
            continue
        entry = candidate.profile()  # validated against the strategy's topology model
        assert entry["strategy"] == candidate.strategy
        load_profiles({"profiles": {"p": entry}})
    cascade = next(c for c in space if c.label == "cascade(ax3,t=0.7->b)")
    assert cascade.model_string == "composite/cascade/openai/b"
    assert cascade.profile()["topology"]["tiers"][-1] == "openai/b"
    assert len(search_space(["openai/a"], strategies=["single", "self_consistency"], samples=[3, 5])) == 3
    with pytest.raises(ValueError, match="unknown strategies"):
        search_space(["openai/a"], strategies=["nope"])


def test_pareto_frontier():
    a, b, c, d = (_summary("a", 0.6, 100, 1.0), _summary("b", 0.8, 400, 4.0), _summary("c", 0.6, 300, 3.0),
                  _summary("d", 0.8, 500, 4.0))
    assert [s.model for s in pareto_frontier([a, b, c, d])] == ["b", "a"]  # c and d are dominated


def test_interleave_mixes_task_sets():
    tasks = [Task(id=f"{s}{i}", prompt="p", expected="1", task_set=s) for s in "xy" for i in range(3)]
    order = interleave(tasks, seed=1)
    assert [t.task_set for t in order] == ["x", "y"] * 3 and sorted(t.id for t in order) == sorted(t.id for t in tasks)


# --------------------------------------------------------------------------- racing on the fake server
def _question(record) -> int:
    found = re.search(r"What is (\d+)\+(\d+)", record.all_text)
    return int(found.group(1)) + int(found.group(2))


def _good(record) -> str:
    """Right when sampled (a temperature is set); called greedily, wrong on odd-numbered questions."""
    if "compare the answers" in record.system_text:
        return json.dumps({"consensus": ["sum"], "contradictions": [], "gaps": [], "unique_points": [], "errors": {}})
    total = _question(record)
    if "temperature" not in record.body and total % 4 == 3:
        return f"The answer is {total + 1}."
    return f"The answer is {total}."


def _tasks_file(tmp_path: Path, n: int = 8) -> Path:
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "prompt": f"What is {i}+{i + 1}?", "expected": str(2 * i + 1),
                                        "scorer": "numeric"}) + "\n" for i in range(n)))
    return path


def test_tune_races_eliminates_and_writes_a_usable_profile(server, tmp_path, capsys):
    server.set_model("good", reply=_good)
    # 'bad' is also slower, so the candidates built on it are costlier on latency whatever the machine's load
    # (elimination needs the winner to be no slower)
    server.set_model("bad", reply="no idea, maybe 0", latency_s=0.3)
    out = tmp_path / "tune"
    argv = ["tune", "--tasks", str(_tasks_file(tmp_path)), "--models", "openai/bad,openai/good",
            "--strategies", "single,self_consistency,fusion,cascade", "--round-size", "2", "--out", str(out),
            "--name", "tuned_fake", "--param", f"api_base={server.base_url}", "--param", f"api_key={API_KEY}",
            "--no-progress"]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    document = json.loads((out / "tune.json").read_text())
    # sc(bad) is always wrong and costs more than 'good' alone: eliminated once 'good' wins 5-0 (p=0.0625 is
    # not enough; 6-0 gives p=0.03125 < 0.05), i.e. after round 3 of 2 items
    eliminated = {e["label"]: e for e in document["eliminated"]}
    assert eliminated["sc(bad,k=3,t=0.7)"]["round"] == 3 and eliminated["sc(bad,k=3,t=0.7)"]["wins"] == 6
    assert "eliminated in round 3: sc(bad,k=3,t=0.7)" in captured.out
    # eliminated candidates ran no further items
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["model"] == "sc(bad,k=3,t=0.7)") == 6
    assert sum(1 for r in rows if r["model"] == "openai/good") == 8
    # the frontier, paired against the best single model, with the test named
    assert document["reference"] == "openai/good" and "openai/good" in document["frontier"]
    assert "exact McNemar" in captured.out and "Pareto frontier" in captured.out
    assert document["paired"]["openai/bad"]["losses"] == 4  # 'good' alone is right on 4 of 8
    assert document["paired"]["sc(good,k=3,t=0.7)"]["wins"] == 4
    # the chosen composite is written as a profile that loads and runs
    chosen = document["chosen"]
    # right on every item at the fewest tokens: 'good' sampled 3 times and voted. Self-consistency, a cascade
    # whose first tier always agrees and a self-debate that stops after round 0 cost the same; the fastest of
    # them is chosen
    assert chosen in {"sc(good,k=3,t=0.7)", "cascade(goodx3,t=0.7->bad)", "self-debate(good,k=3,t=0.7,r=1)"}
    perfect = [s for s in document["summaries"] if s["accuracy"] == 1.0]
    assert chosen in {s["model"] for s in perfect}
    assert next(s for s in perfect if s["model"] == chosen)["tokens_per_item"] == min(s["tokens_per_item"]
                                                                                      for s in perfect)
    profile_path = out / "tuned_fake.yaml"
    data = yaml.safe_load(profile_path.read_text())
    assert "tuned_fake" in data["profiles"] and "exact McNemar" in data["profiles"]["tuned_fake"]["description"]
    load_profiles(profile_path)
    from composite_llm.profiles import REGISTRY

    REGISTRY.set_explicit(str(profile_path))
    server.clear_requests()
    try:
        response = litellm.completion(model="composite/profile/tuned_fake", messages=user("What is 20+21?"),
                                      api_base=server.base_url, api_key=API_KEY)
    finally:
        REGISTRY.set_explicit(None)
    assert response.choices[0].message.content == "The answer is 41."
    sampled = server.requests_for("good")
    assert len(sampled) == 3 and all(r.body["temperature"] == 0.7 for r in sampled)
    # resumable: the same command again makes no request and reaches the same decisions
    server.clear_requests()
    assert cli_main(argv) == 0
    assert server.requests == []
    assert json.loads((out / "tune.json").read_text())["eliminated"] == document["eliminated"]


def test_tune_respects_a_call_budget(server, tmp_path):
    server.set_model("good", reply=_good)
    candidates = search_space(["openai/good"], strategies=["single", "self_consistency"], samples=[3])
    tasks = [Task(id=f"s{i}", prompt=f"What is {i}+{i + 1}?", expected=str(2 * i + 1), scorer="numeric",
                  task_set="sums") for i in range(10)]
    from composite_llm.eval.runner import RunOptions, read_results, run_eval

    results = tmp_path / "results.jsonl"
    options = RunOptions(concurrency=4, params={"api_base": server.base_url, "api_key": API_KEY}, progress=False)
    lines: list[str] = []
    outcome = asyncio.run(tune(candidates, tasks, run_round=lambda specs, chunk: run_eval(specs, chunk, results,
                                                                                          options),
                               read_rows=lambda: read_results(results), budget=Budget("calls", 18), round_size=2,
                               log=lines.append))
    # each item costs 1 (single) + 3 (self-consistency) = 4 calls: 4 items fit in 18, a 5th would not
    assert outcome.items == 4 and outcome.spent == 16 and len(server.requests) == 16
    assert outcome.stop_reason.startswith("budget: 16 calls of 18 calls spent")
    assert lines[0].startswith("round 1: 2 candidates x 2 tasks")


def test_tune_command_argument_errors(capsys, tmp_path):
    tasks = _tasks_file(tmp_path, 2)
    assert cli_main(["tune", "--tasks", str(tasks), "--models", "openai/a", "--budget", "coins=3"]) == 2
    assert "expected calls=N" in capsys.readouterr().err
    assert cli_main(["tune", "--tasks", str(tasks), "--models", "openai/a", "--samples", "x"]) == 2
    assert "--samples" in capsys.readouterr().err


def test_candidate_profile_of_a_single_model_is_refused():
    with pytest.raises(ValueError, match="single model"):
        Candidate("openai/a", None, "openai/a").profile()


def test_tune_help_without_litellm():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "composite_llm.cli", "tune", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Pareto frontier" in done.stdout
    assert "litellm" not in done.stderr
