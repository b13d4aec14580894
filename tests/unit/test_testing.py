"""testing.py's process helper: `stop_process_group` ends a server a test started in its own session, the
whole group (workers, children), and only it."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from composite_llm.testing import stop_process_group

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process groups from /proc (Linux)")


def _group_alive(pgid: int) -> bool:
    """Some process of the group still runs (zombies waiting for a reaper do not count). A killed process
    leaves the process table asynchronously: looked at for up to 5 s."""
    deadline = time.monotonic() + 5
    while True:
        running = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":
                    running.append(entry.name)
        if not running or time.monotonic() > deadline:
            return bool(running)
        time.sleep(0.05)


def _start(script: str) -> subprocess.Popen:
    process = subprocess.Popen(["sh", "-c", script], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"  # the child is running
    return process


def test_the_whole_group_is_stopped_children_included():
    process = _start("sleep 30 & echo ready; wait")
    stop_process_group(process)
    assert process.returncode == -signal.SIGTERM
    assert not _group_alive(process.pid)  # the background sleep went with it


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace():
    process = _start("trap '' TERM; sleep 30 & echo ready; wait")
    stop_process_group(process, grace_s=0.5)
    assert process.returncode == -signal.SIGKILL and not _group_alive(process.pid)


def test_nothing_to_stop_is_fine():
    stop_process_group(None)
    done = subprocess.Popen(["true"], start_new_session=True)
    done.wait(timeout=10)
    stop_process_group(done)  # already exited: no signal sent anywhere
