"""Honest attribution in the eval: number words score as numbers, the paired test is exact, the CoT
baselines carry the strategies' reasoning instruction, cascades report their escalation rate."""

from __future__ import annotations

from math import comb

import pytest

from composite_llm.eval import report
from composite_llm.eval.baselines import COT_INSTRUCTION, cot_specs
from composite_llm.messages import with_instruction
from composite_llm.eval.paired import best_single, exact_sign_test, pair
from composite_llm.eval.scorers import number_words_to_digits, score_numeric
from composite_llm.eval.tasks import Task


@pytest.mark.parametrize("answer, expected, correct", [
    ("seven continents", "7", True),
    ("There are seven continents.", "7", True),
    ("The answer is twenty-one.", "21", True),
    ("one hundred and five", "105", True),
    ("three thousand two hundred", "3200", True),
    ("Step 1: add them. So the answer is twelve.", "12", True),
    ("No one knows; the answer is 42", "42", True),
    ("seven continents", "8", False),
    ("The answer is 42", "42", True),
])
def test_number_words_count_as_numbers(answer, expected, correct):
    task = Task(id="t", prompt="q", expected=expected, scorer="numeric")
    assert score_numeric(task, answer).correct is correct


def test_number_words_left_alone_when_not_a_number():
    assert number_words_to_digits("no one, someone, five six") == "no one, someone, five six"


def test_exact_sign_test_matches_the_binomial():
    assert exact_sign_test(0, 0) == 1.0
    assert exact_sign_test(7, 1) == pytest.approx(2 * (comb(8, 0) + comb(8, 1)) / 2 ** 8)  # 0.0703
    assert exact_sign_test(1, 7) == exact_sign_test(7, 1)
    assert exact_sign_test(16, 3) == pytest.approx(2 * sum(comb(19, k) for k in range(4)) / 2 ** 19)
    assert exact_sign_test(16, 3) < 0.05 < exact_sign_test(7, 1)
    assert exact_sign_test(5, 5) == 1.0


def _row(model, task, correct, kind="model", latency=1.0, **extra):
    return {"model": model, "model_string": extra.pop("model_string", model), "kind": kind, "task_id": task,
            "correct": correct, "latency_s": latency, "error": None, **extra}


def test_pair_and_reference():
    rows = [_row("a", str(i), i < 6) for i in range(10)] + [_row("b", str(i), i % 2 == 0) for i in range(10)]
    rows += [_row("composite/x", str(i), True, kind="composite") for i in range(10)]
    rows += [_row("cot(a)", str(i), True, kind="cot", instruction=COT_INSTRUCTION) for i in range(10)]
    assert best_single(rows) == "a"  # composites and instructed baselines are never the reference
    result = pair(rows, "composite/x", "a")
    assert (result.n, result.wins, result.losses, result.ties) == (10, 4, 0, 6)
    assert result.p_value == pytest.approx(0.125)


def test_cot_baselines_and_instruction():
    cot, cot_sc = cot_specs("local/m", of="composite/profile/p")
    assert cot.model == "local/m" and cot.instruction == COT_INSTRUCTION and cot.kind == "cot"
    assert cot_sc.model == "composite/self-consistency/local/m" and cot_sc.kwargs["samples"] == 5
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2+2?"}]
    out = with_instruction(messages, COT_INSTRUCTION)
    assert out[1]["content"] == f"What is 2+2?\n\n{COT_INSTRUCTION}" and messages[1]["content"] == "What is 2+2?"
    assert "step by step" in COT_INSTRUCTION


def test_escalation_rate_in_the_summary():
    rows = [_row("composite/profile/c", str(i), True, kind="composite",
                 composite={"answered_by_tier": 1 if i < 3 else 2, "escalations": 0 if i < 3 else 1})
            for i in range(4)]
    (summary,) = report.summarize(rows)
    assert summary.escalation_rate == 0.25
    assert "escalation rate of composite/profile/c: 25%" in report.format_table([summary])


def test_bundled_word_problems():
    from composite_llm.eval.scorers import parse_number
    from composite_llm.eval.tasks import bundled_task_sets, load_task_set

    assert "wordproblems" in bundled_task_sets()
    tasks = load_task_set("wordproblems")
    assert len(tasks) >= 40 and len({t.id for t in tasks}) == len(tasks)
    assert all(t.scorer == "numeric" and parse_number(t.expected) is not None for t in tasks)
    by_id = {t.id: t for t in tasks}
    # spot checks of multi-step items, worked by hand: 96 oranges, half sold (48 left), a third of those sold
    assert "96 oranges" in by_id["word-026"].prompt and by_id["word-026"].expected == "32"
    assert "7:45 pm" in by_id["word-025"].prompt and by_id["word-025"].expected == "60"  # ends 10:00 pm


def test_baselines_can_be_named_in_the_model_list():
    """`cot(<m>)`, `cot-sc(<m>)` and `self-moa(<m>)` run item by item beside the other models."""
    from composite_llm.eval.baselines import parse_models

    specs = parse_models("local/m,cot(local/m),cot-sc(local/m),self-moa(local/m),composite/profile/p,cot()")
    assert [(s.label, s.kind) for s in specs] == [
        ("local/m", "model"), ("cot(local/m)", "cot"), ("cot-sc(local/m)", "cot-sc"),
        ("self-moa(local/m)", "self-moa"), ("composite/profile/p", "composite"), ("cot()", "model")]
    cot, cot_sc = specs[1], specs[2]
    assert cot.model == "local/m" and cot.instruction == COT_INSTRUCTION
    assert cot_sc.model == "composite/self-consistency/local/m" and cot_sc.instruction == COT_INSTRUCTION


def test_composites_are_also_paired_with_the_reasoning_instruction_baseline():
    """Beating the plain member may be the prompt's doing: the report pairs every composite (and cot-sc)
    with `cot(<model>)` as well, item by item."""
    rows = [_row("a", str(i), i < 5) for i in range(10)]
    rows += [_row("cot(a)", str(i), i < 8, kind="cot", instruction=COT_INSTRUCTION) for i in range(10)]
    rows += [_row("cot-sc(a)", str(i), i < 9, kind="cot-sc", model_string="composite/self-consistency/a")
             for i in range(10)]
    rows += [_row("composite/profile/x", str(i), True, kind="composite") for i in range(10)]
    text = report.paired_section(rows)
    first, second = text.split("reasoning instruction, cot(a)")
    assert "Paired against the best single model, a:" in first
    lines = {cells[0]: cells for cells in (line.split() for line in second.splitlines())
             if len(cells) > 1 and cells[1] == "cot(a)"}
    assert set(lines) == {"composite/profile/x", "cot-sc(a)"}  # the plain model is not paired again
    assert lines["composite/profile/x"][2:6] == ["10", "2", "0", "8"]
    assert lines["cot-sc(a)"][2:6] == ["10", "1", "0", "9"]
    document = report.report_document(rows)
    (instructed,) = document["paired_instructed"]
    assert instructed["reference"] == "cot(a)"
    assert {r["model"]: (r["wins"], r["losses"]) for r in instructed["results"]} == {
        "composite/profile/x": (2, 0), "cot-sc(a)": (1, 0)}
