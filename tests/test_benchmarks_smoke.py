"""The benchmark suite runs: every benchmark function with tiny sizes, in process (fake backend in a thread,
no proxy, no local model), checking the shape of what it returns. Timing targets are not asserted here:
the numbers only mean something in a full run (`python benchmarks/run_all.py`)."""

from __future__ import annotations

import math

import pytest

from benchmarks import common as C
from benchmarks import concurrency, latency, local_tokens, overhead, quorum
from composite_llm import engine, limits
from composite_llm.local.catalog import MODELS, is_installed
from composite_llm.local.runtime import runtime_installed
from composite_llm.profiles import REGISTRY


@pytest.fixture()
def clean_state():
    yield
    import litellm

    litellm.custom_provider_map = [e for e in litellm.custom_provider_map if e.get("provider") != "benchempty"]
    litellm.utils.custom_llm_setup()
    REGISTRY.set_explicit(None)
    engine.set_max_concurrency(engine._DEFAULT_MAX_CONCURRENCY)


def _positive(x: float) -> bool:
    return isinstance(x, float) and x > 0 and not math.isnan(x)


def test_benchmark_functions_run_with_tiny_sizes(clean_state):
    quiet = lambda _message: None  # noqa: E731

    # helpers
    assert C.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert C.percentile([5.0], 99) == 5.0
    tail = quorum.tail_spec(7)
    assert tail.latency("q1", "x") == tail.latency("q1", "x")  # deterministic: client and server agree
    assert "| a |" in C.md_table(["a"], [[1]])

    # single-request latency: 2 modes x 1 strategy, the streaming one with TTFT
    lat = latency.run_latency(reps=1, warmup=0, modes=("async", "async-stream"), strategies=("moa",),
                              stage_s=0.03, backend_mode="thread", log=quiet)
    assert [(r["strategy"], r["mode"]) for r in lat["rows"]] == [("moa", "async"), ("moa", "async-stream")]
    for row in lat["rows"]:
        assert row["ideal_s"] == pytest.approx(0.06)
        assert row["composite"]["n"] == row["hand"]["n"] == 1
        assert _positive(row["ratio_ideal"]) and _positive(row["ratio_hand"])
        assert row["composite"]["p50"] >= 0.06 * 0.9  # never faster than the members themselves
    assert _positive(lat["rows"][1]["ttft_ratio_ideal"])
    assert [r["mode"] for r in lat["leaf_rows"]] == ["async (litellm.acompletion)"]
    assert "composite/ideal" in latency.render(lat, C.load_average())

    # concurrency sweep: 2 levels x 3 variants, request counts exact, nothing failed
    con = concurrency.run_concurrency(levels=(1, 3), min_requests=1, min_rounds=1, blocks=1, stage_s=0.03,
                                      backend_mode="thread", log=quiet)
    assert len(con["rows"]) == 6
    for row in con["rows"]:
        assert row["requests"] == row["level"] and row["errors"] == 0
        assert len(row["latency"]) and row["latency"]["n"] == row["level"]
        assert _positive(row["throughput"]) and _positive(row["wall_ratio"]) and row["cpu_per_request_s"] > 0
    assert limits._max_concurrency == limits._DEFAULT_MAX_CONCURRENCY  # restored after the sweep
    assert "**Target" not in concurrency.render(con, C.load_average())  # level 40 not run: no verdict claimed

    # quorum: among the first 4 requests of seed 28 exactly one member straggles (2.08 s, request 2; the
    # others answer within 0.24 s): waiting for all pays it, every quorum of 3 drops it
    configs = ("wait_all", "quorum3", "quorum3_grace", "hand_quorum3", "hand_quorum3_grace")
    straggler_s = max(max(d) for d in quorum.member_latencies(quorum.tail_spec(28), 4))
    assert 2.0 < straggler_s < 2.1
    q = quorum.run_quorum(requests=4, in_flight=4, seed=28, configs=configs, backend_mode="thread", log=quiet)
    assert q["members"]["stragglers"] == 1 and q["members"]["requests_with_straggler"] == 1
    assert [r["config"] for r in q["rows"]] == list(configs)
    for row in q["rows"]:
        assert row["ok"] == 4 and row["errors"] == 0, row["error_samples"]
        assert _positive(row["reference"]["p99"]) and _positive(row["p99_ratio"])
    by = {r["config"]: r for r in q["rows"]}
    assert by["wait_all"]["dropped"] == 0 and by["wait_all"]["degraded"] == 0
    assert by["wait_all"]["latency"]["max"] >= straggler_s + quorum.AGG_LATENCY_S  # it waited for the straggler
    assert by["wait_all"]["reference"]["max"] == pytest.approx(straggler_s + quorum.AGG_LATENCY_S)
    for name in ("quorum3", "quorum3_grace", "hand_quorum3", "hand_quorum3_grace"):
        # the straggler at least (stragglers of other requests answer within ~60 ms of the third), at most
        # the 2 members past the quorum of each request; the trace says which requests were degraded
        assert 1 <= by[name]["dropped"] <= 2 * 4, name
        assert 1 <= by[name]["degraded"] <= by[name]["dropped"], name
        assert by[name]["reference"]["max"] < 0.5, name  # the 3rd fastest member + aggregator, from the draws
    rendered = quorum.render(q, C.load_average())
    # one verdict per composite quorum row that ran, each compared with its own hand-written row
    assert rendered.count("**Target") == 2 and rendered.count("the hand-written quorum reaches") == 2

    # CPU decomposition
    over = overhead.run_overhead(requests=2, rounds=1, profile_requests=2, backend_mode="thread", log=quiet)
    assert all(v["median_ms"] > 0 for v in over["rows"].values())
    assert over["hot"] and over["hot"][0]["where"].startswith("(whole")
    assert over["cached_clients"] is not None and over["cached_clients"] < 50  # sub-calls reuse LiteLLM's clients
    assert "Decomposition" in overhead.render(over, C.load_average())

    # local models: only the availability probe (generation is too slow for a smoke test)
    ok, why, installed = local_tokens.availability()
    assert ok == runtime_installed()
    if ok:
        assert why == "" and set(installed) <= {m.name for m in MODELS}
        assert ("smollm2-135m" in installed) == is_installed(next(m for m in MODELS if m.name == "smollm2-135m"))
    else:
        assert installed == [] and why.startswith("llama-cpp-python is not installed (install: ")
    skipped = local_tokens.render({"skipped": "llama-cpp-python is not installed", "rows": [],
                                   "settings": {"max_tokens": 4, "reps": 1}}, C.load_average())
    assert "Skipped" in skipped
