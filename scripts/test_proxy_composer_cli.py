#!/usr/bin/env python3
"""End to end: a LiteLLM proxy serving Cursor's `agent` CLI as `composite/composer-cli/<model>`.

Starts `litellm --config <tmp config> --host 127.0.0.1 --port <free port>` with one deployment
(`composer-cli` -> `composite/composer-cli/composer-1`, the composite provider registered through
`custom_provider_map`), sends one chat request (optionally a streaming one too) with the master key
and prints the answer, usage and cost. Exits 0 on success, 1 on failure, and 0 with a `SKIP:` line
when neither `agent` nor `cursor-agent` is on PATH.

    python scripts/test_proxy_composer_cli.py [--model composer-1] [--stream] [--timeout 300]

The master key comes from LITELLM_MASTER_KEY, or a fresh random one is generated for this run.
Authentication of the CLI itself is the CLI's business (`agent login`, or CURSOR_API_KEY).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROXY_START_TIMEOUT = 90.0


def find_agent() -> str | None:
    return shutil.which("agent") or shutil.which("cursor-agent")


def find_litellm() -> str | None:
    beside = Path(sys.executable).with_name("litellm")
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("litellm")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(directory: Path, model: str, timeout: float) -> Path:
    # JSON is valid YAML: no YAML library needed to write it.
    config = {
        "model_list": [
            {
                "model_name": "composer-cli",
                "litellm_params": {"model": f"composite/composer-cli/{model}", "timeout": timeout},
            }
        ],
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": "composite", "custom_handler": "composite_llm.litellm_provider.COMPOSITE_PROVIDER"}
            ],
            "num_retries": 0,
        },
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    path = directory / "litellm_config.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no proxy log)"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def wait_ready(httpx, base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + PROXY_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with code {proc.returncode}:\n{tail(log)}")
        try:
            if httpx.get(f"{base}/health/liveliness", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the proxy did not become ready within {PROXY_START_TIMEOUT:.0f}s:\n{tail(log)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="composer-1", help="model for the agent CLI (default composer-1)")
    parser.add_argument("--prompt", default="Reply with exactly one word: PONG")
    parser.add_argument("--timeout", type=float, default=300.0, help="request timeout in seconds")
    parser.add_argument("--stream", action="store_true", help="also send a streaming request")
    args = parser.parse_args()

    agent = find_agent()
    if agent is None:
        print("SKIP: `agent` not on PATH (nor `cursor-agent`); install Cursor's CLI to run this end-to-end test.")
        return 0
    litellm_bin = find_litellm()
    if litellm_bin is None:
        print("FAIL: the `litellm` proxy command is not installed (pip install 'composite-llm[proxy]').")
        return 1
    import httpx  # a dependency of composite-llm

    master_key = os.environ.get("LITELLM_MASTER_KEY") or "sk-" + secrets.token_urlsafe(24)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    print(f"agent CLI: {agent}")
    print(f"proxy:     {litellm_bin} on {base}")

    with tempfile.TemporaryDirectory(prefix="composer-cli-e2e-") as tmp:
        tmpdir = Path(tmp)
        config = write_config(tmpdir, args.model, args.timeout)
        log = tmpdir / "proxy.log"
        env = dict(os.environ, LITELLM_MASTER_KEY=master_key, LITELLM_LOCAL_MODEL_COST_MAP="True")
        with open(log, "wb") as log_fh:
            proc = subprocess.Popen(
                [litellm_bin, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                cwd=tmpdir, env=env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            started = time.monotonic()
            wait_ready(httpx, base, proc, log)
            print(f"proxy ready in {time.monotonic() - started:.1f}s")
            headers = {"Authorization": f"Bearer {master_key}"}
            body = {
                "model": "composer-cli",
                "messages": [
                    {"role": "system", "content": "You are a terse assistant."},
                    {"role": "user", "content": args.prompt},
                ],
            }
            started = time.monotonic()
            response = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers,
                                  timeout=args.timeout + 30)
            elapsed = time.monotonic() - started
            if response.status_code != 200:
                print(f"FAIL: HTTP {response.status_code} after {elapsed:.1f}s: {response.text[:2000]}")
                print(f"--- proxy log (tail) ---\n{tail(log)}")
                return 1
            data = response.json()
            answer = (data.get("choices") or [{}])[0].get("message", {}).get("content") or ""
            print(f"answer ({elapsed:.1f}s): {answer!r}")
            print(f"usage: {data.get('usage')}")
            print(f"cost header: {response.headers.get('x-litellm-response-cost')}")
            if not answer.strip():
                print("FAIL: empty answer")
                return 1

            if args.stream:
                pieces: list[str] = []
                with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True},
                                  headers=headers, timeout=args.timeout + 30) as stream:
                    if stream.status_code != 200:
                        print(f"FAIL: streaming HTTP {stream.status_code}: {stream.read()[:2000]!r}")
                        return 1
                    for line in stream.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[len("data: "):])
                        for choice in chunk.get("choices") or []:
                            pieces.append((choice.get("delta") or {}).get("content") or "")
                streamed = "".join(pieces)
                print(f"streamed answer: {streamed!r} ({sum(1 for p in pieces if p)} chunks)")
                if not streamed.strip():
                    print("FAIL: empty streamed answer")
                    return 1
            print("OK")
            return 0
        except (RuntimeError, httpx.HTTPError) as exc:
            print(f"FAIL: {exc}")
            return 1
        finally:
            stop(proc)


if __name__ == "__main__":
    sys.exit(main())
