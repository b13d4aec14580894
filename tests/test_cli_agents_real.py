"""The real coding-agent CLIs (Claude Code, Codex, Gemini CLI from npm) through `composite/cli/<spec>/<model>`.

`make test` installs the pinned versions (composite_llm.cli_agents.versions) once per machine with
`make cli-agents`; this module only finds them and skips, saying why, when they are missing. Each CLI
talks to a real LiteLLM proxy (module scope) whose wildcard deployment maps every model name to
`custom_openai/<name>` on a FakeOpenAIServer, so the proxy answers the Anthropic Messages (Claude), Responses
(Codex) and Gemini generateContent (Gemini CLI) routes by converting them to chat completions. The proxy also
serves `brain`, a composite MoA profile: Claude Code with a MoA as its model.

HOME points into a temp dir for every test, so the real home is never touched; every CLI process carries a
marker variable, so the tests can find any process a run left behind.
"""

from __future__ import annotations

import glob
import os
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import litellm
import pytest
import yaml

from composite_llm.cli_agents.doctor import diagnose_all
from composite_llm.cli_agents.versions import TESTED_VERSIONS, cli_cache_bin
from composite_llm.testing import FakeOpenAIServer, count_tokens
from test_proxy import ProxyProcess, _proxy_env

ANSWER = "The answer is 42."
BRAIN_ANSWER = "The mixture says 42."
MARKER = "COMPOSITE_LLM_REAL_CLI_MARKER"
# (spec, model, key variable, what the CLI's base URL looks like relative to the proxy root)
CLIS = {
    "claude": ("claude-test", "ANTHROPIC_API_KEY", ""),
    "codex": ("gpt-test", "OPENAI_API_KEY", "/v1"),
    "gemini": ("gemini-test", "GEMINI_API_KEY", ""),
}
KEY_VARS = [key for _, key, _ in CLIS.values()] + [
    "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "CODEX_API_KEY", "GOOGLE_API_KEY", "ANTHROPIC_BASE_URL",
    "OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL", "CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_CLI_HOME"]
#: What a CLI may leave in the shared temp dir if nothing stops it (Gemini's error reports, CLI scratch dirs).
TMP_PATTERNS = ("gemini-client-error-*", "claude-*", "codex-*", "composite-llm-cli-*", ".gemini*")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cli_bin() -> Path:
    found = os.environ.get("COMPOSITE_LLM_CLI_BIN")
    path = Path(found) if found else cli_cache_bin()
    if path is None or not all((path / name).exists() for name in CLIS):
        pytest.skip("the real coding-agent CLIs are not installed: run `make cli-agents` (needs Node.js >= 20 "
                    "with npm; `make test` does it) or set COMPOSITE_LLM_CLI_BIN to a folder holding "
                    "claude, codex and gemini")
    return path


@pytest.fixture(scope="module")
def upstream():
    with FakeOpenAIServer() as server:
        yield server


def _config(fake_base_url: str) -> dict[str, Any]:
    node = lambda model: {"model": f"openai/{model}", "provider": "fake"}  # noqa: E731
    return {
        "model_list": [
            # Claude Code's Messages request carries `prompt_cache_key` after LiteLLM's conversion: the composite
            # accepts it as a hint (not forwarded), so the deployment needs nothing more.
            {"model_name": "brain", "litellm_params": {"model": "composite/profile/brain", "num_retries": 0}},
            # The offline SmolLM2 (llama.cpp in the proxy process).
            {"model_name": "smollm2", "litellm_params": {"model": "local/smollm2-135m",
                                                         "additional_drop_params": ["prompt_cache_key"]}},
            # Every other name: the fake upstream through `custom_openai`, so LiteLLM converts the Responses
            # and Messages routes to chat completions instead of forwarding them.
            {"model_name": "*", "litellm_params": {"model": "custom_openai/*", "api_base": fake_base_url,
                                                   "api_key": "os.environ/FAKE_UPSTREAM_KEY", "num_retries": 0}},
        ],
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": "composite", "custom_handler": "composite_llm.litellm_provider.COMPOSITE_PROVIDER"},
                {"provider": "local", "custom_handler": "composite_llm.local.LOCAL_PROVIDER"}],
            "num_retries": 0,
        },
        "general_settings": {
            "master_key": "os.environ/LITELLM_MASTER_KEY",
            "composite_llm": {
                "providers": {"fake": {"litellm_params": {"api_base": fake_base_url,
                                                          "api_key": "os.environ/FAKE_UPSTREAM_KEY"}}},
                "profiles": {"brain": {"strategy": "moa", "topology": {
                    "aggregator": node("brain-agg"), "proposers": [node("brain-p1"), node("brain-p2")],
                    "settings": {"retries": 0}}}},
            },
        },
    }


@pytest.fixture(scope="module")
def proxy(cli_bin, upstream, tmp_path_factory) -> ProxyProcess:
    work = tmp_path_factory.mktemp("cli-proxy")
    (work / "config.yaml").write_text(yaml.safe_dump(_config(upstream.base_url), sort_keys=False))
    env = _proxy_env(FAKE_UPSTREAM_KEY="sk-fake-upstream-" + secrets.token_hex(8))
    process = ProxyProcess("cli", work / "config.yaml", work, env, work / "proxy.log").start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture()
def cli_env(proxy, upstream, cli_bin, tmp_path, monkeypatch):
    """The CLIs first on PATH, their keys = the proxy's master key, HOME in a temp dir, one marker."""
    upstream.reset()
    upstream.set_default(reply=ANSWER)
    upstream.set_model("bad400", fail_status=400, fail_message="context too long for bad400")
    upstream.set_model("hang", hang=True)
    upstream.set_model("brain-agg", reply=BRAIN_ANSWER)
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{cli_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    for _, key, _ in CLIS.values():
        monkeypatch.setenv(key, proxy.master_key)
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)
    yield type("CliEnv", (), {"home": home, "marker": marker, "proxy": proxy, "upstream": upstream})
    upstream.reset()


def _settings(cli: str, proxy: ProxyProcess, **extra: Any) -> dict[str, Any]:
    return {"cli_base_url": proxy.base_url + CLIS[cli][2], "env_passthrough": [MARKER],
            "timeout_seconds": 120, "kill_grace_seconds": 1.0, **extra}


def _model(cli: str, model: str | None = None) -> str:
    return f"composite/cli/{cli}/{model or CLIS[cli][0]}"


def _marked_processes(marker: str) -> list[int]:
    """Processes (not zombies) whose environment carries this test's marker."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def _no_marked_processes(marker: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _tmp_entries() -> set[str]:
    root = tempfile.gettempdir()
    return {p for pattern in TMP_PATTERNS for p in glob.glob(os.path.join(root, pattern))}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _trace(response) -> dict[str, Any]:
    return response.choices[0].message.provider_specific_fields["composite"]


# --------------------------------------------------------------------------- tests
def test_doctor_sees_the_tested_versions_ready(cli_env, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", cli_env.proxy.base_url + "/v1")  # Codex with OPENAI_API_KEY needs it
    statuses = {s.spec: s for s in diagnose_all(names=list(CLIS))}
    for cli, version in TESTED_VERSIONS.items():
        status = statuses[cli]
        assert status.ready, status.problems
        assert status.version == version
        assert not any("newer" in n or "older" in n for n in status.notes)
    assert _files(cli_env.home) == []  # asking for versions wrote nothing to HOME


@pytest.mark.parametrize("cli", list(CLIS))
def test_answer_usage_cost_and_nothing_left_behind(cli, cli_env):
    tmp_before = _tmp_entries()
    response = litellm.completion(model=_model(cli), messages=[{"role": "user", "content": "What is 6*7?"}],
                                  **_settings(cli, cli_env.proxy))
    assert response.choices[0].message.content == ANSWER
    assert response.choices[0].finish_reason == "stop"
    # Usage = what the upstream counted, summed over every request the CLI made.
    requests = [r for r in cli_env.upstream.requests if r.status == 200]
    assert requests, "the CLI never reached the proxy"
    assert response.usage.prompt_tokens == sum(r.prompt_tokens for r in requests)
    assert response.usage.completion_tokens == len(requests) * count_tokens(ANSWER)
    trace = _trace(response)
    call = trace["sub_calls"][0]
    assert call["model"] == f"cli/{cli}/{CLIS[cli][0]}"
    if cli == "claude":  # the only one of the three that reports a cost
        assert call["cost"] > 0 and response._hidden_params["response_cost"] == pytest.approx(call["cost"])
    if cli == "codex":  # its "unknown model metadata" warning item reaches the trace
        assert any("Model metadata for `gpt-test` not found" in note for note in trace["notes"])
    # No transcript, config or temp file outlives the request: not in HOME, not in the temp dir.
    assert _files(cli_env.home) == []
    assert _tmp_entries() - tmp_before == set()
    assert _no_marked_processes(cli_env.marker) == []


@pytest.mark.parametrize("cli", list(CLIS))
async def test_streaming_deltas(cli, cli_env):
    stream = await litellm.acompletion(model=_model(cli), messages=[{"role": "user", "content": "What is 6*7?"}],
                                       stream=True, **_settings(cli, cli_env.proxy))
    pieces, finishes = [], []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == ANSWER and finishes == ["stop"]
    if cli != "codex":  # Codex's JSON events carry whole messages only
        assert len(pieces) > 1


@pytest.mark.parametrize("cli", list(CLIS))
def test_upstream_400_is_a_400_with_the_clis_message(cli, cli_env):
    tmp_before = _tmp_entries()
    with pytest.raises(litellm.BadRequestError) as info:
        litellm.completion(model=_model(cli, "bad400"), messages=[{"role": "user", "content": "hi"}],
                           **_settings(cli, cli_env.proxy))
    assert info.value.status_code == 400
    message = str(info.value)
    assert "context too long for bad400" in message
    assert "\x1b[" not in message and cli_env.proxy.master_key not in message
    assert _tmp_entries() - tmp_before == set()  # Gemini's error report went to the per-request TMPDIR
    assert _files(cli_env.home) == []


@pytest.mark.parametrize("cli", list(CLIS))
def test_timeout_kills_every_process_of_the_cli(cli, cli_env):
    started = time.monotonic()
    with pytest.raises(litellm.Timeout):
        litellm.completion(model=_model(cli, "hang"), messages=[{"role": "user", "content": "hi"}],
                           **_settings(cli, cli_env.proxy, timeout_seconds=8, idle_timeout_seconds=8))
    assert time.monotonic() - started < 60
    assert _no_marked_processes(cli_env.marker) == []
    assert _files(cli_env.home) == []


def test_keep_sessions_keeps_claudes_transcript_in_home(cli_env):
    litellm.completion(model=_model("claude"), messages=[{"role": "user", "content": "What is 6*7?"}],
                       **_settings("claude", cli_env.proxy, keep_sessions=True))
    transcripts = [f for f in _files(cli_env.home) if f.startswith(".claude/projects/") and f.endswith(".jsonl")]
    assert transcripts, _files(cli_env.home)


def test_claude_code_with_a_moa_as_its_brain(cli_env):
    """Claude Code -> the proxy's `brain` model = composite MoA -> two proposers and an aggregator."""
    response = litellm.completion(model=_model("claude", "brain"), messages=[{"role": "user", "content": "6*7?"}],
                                  **_settings("claude", cli_env.proxy))
    assert response.choices[0].message.content == BRAIN_ANSWER
    models = sorted(r.model for r in cli_env.upstream.requests)
    assert models.count("brain-agg") >= 1 and models.count("brain-p1") >= 1 and models.count("brain-p2") >= 1


def test_claude_code_on_the_offline_smollm2(cli_env):
    """A `composite/cli/...` member on an offline `local/` model through the proxy. Claude Code's own system
    prompt and tool list do not fit a small context, so the recipe replaces the system prompt."""
    response = litellm.completion(
        model=_model("claude", "smollm2"), messages=[{"role": "user", "content": "Say hello."}],
        **_settings("claude", cli_env.proxy, extra_args=["--system-prompt", "You are a helpful assistant."]))
    assert response.choices[0].message.content.strip()
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert cli_env.upstream.requests == []  # answered offline, not by the fake upstream


@pytest.mark.parametrize("cli", list(CLIS))
def test_no_transcript_in_home_when_the_cli_keeps_its_state_there(cli, cli_env):
    """`state_dir: home` (a CLI logged in through its home): what the CLIs write there may stay, but no file
    holds the prompt afterwards (Claude and Codex by their switches, Gemini's chat folder removed by us)."""
    if cli == "gemini":  # API-key auth is chosen in the user's settings, as a Gemini user would have it
        settings = cli_env.home / ".gemini" / "settings.json"
        settings.parent.mkdir()
        settings.write_text('{"security": {"auth": {"selectedType": "gemini-api-key"}}}')
    secret_question = f"What is 6*7? ({uuid.uuid4().hex})"
    response = litellm.completion(model=_model(cli), messages=[{"role": "user", "content": secret_question}],
                                  **_settings(cli, cli_env.proxy, state_dir="home"))
    assert response.choices[0].message.content == ANSWER
    written = [p for p in cli_env.home.rglob("*") if p.is_file()]
    assert written, "the CLI wrote nothing to HOME: state_dir home was not used"
    holding = [str(p.relative_to(cli_env.home)) for p in written
               if secret_question.split("(")[1][:32].encode() in p.read_bytes()]
    assert holding == []
