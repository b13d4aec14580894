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


def _running(pid: int) -> bool:
    """The process runs now (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _ends(pid: int, within_s: float = 5.0) -> bool:
    """A killed process leaves the process table asynchronously: wait for that, bounded."""
    deadline = time.monotonic() + within_s
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _start(script: str) -> tuple[subprocess.Popen, int]:
    """`sh -c script` in its own session; the script starts a background child and prints its pid."""
    process = subprocess.Popen(["sh", "-c", script], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    child = int(process.stdout.readline())
    assert _running(child)
    return process, child


def test_the_whole_group_is_stopped_children_included():
    process, child = _start("sleep 30 & echo $!; wait")
    stop_process_group(process)
    assert process.returncode == -signal.SIGTERM
    assert _ends(child)  # the background sleep went with it


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace():
    process, child = _start("trap '' TERM; sleep 30 & echo $!; wait")
    stop_process_group(process, grace_s=0.5)
    assert process.returncode == -signal.SIGKILL and _ends(child)


def test_nothing_to_stop_is_fine():
    stop_process_group(None)
    done = subprocess.Popen(["true"], start_new_session=True)
    done.wait(timeout=10)
    stop_process_group(done)  # already exited: no signal sent anywhere
