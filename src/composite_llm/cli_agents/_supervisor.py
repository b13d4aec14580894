"""A tiny supervisor between the runner and a CLI: every descendant of the CLI dies with the run.

Killing the process group is not enough: a grandchild that calls ``setsid()`` (real CLIs start
detached helpers this way) leaves the group, and once its parent exits it is re-parented to init
and outlives the request. On Linux this script marks itself a *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``), so every orphan below it is re-parented to it instead of init,
starts the CLI as its child (same process group, inherited stdin/stdout/stderr), and:

* when the CLI exits: SIGTERM every remaining descendant, SIGKILL what is left after the grace
  period, reap them all, then exit with the CLI's status (a CLI killed by signal N makes the
  supervisor die by signal N, so the runner sees the same ``returncode``);
* on SIGTERM/SIGINT/SIGHUP (the runner kills the group, or the host died: ``PR_SET_PDEATHSIG``):
  the same sweep, then die by that signal.

Run as a file with ``python -I -S`` (stdlib only, no site-packages): it starts in ~50 ms.
Usage: ``_supervisor.py GRACE_SECONDS PARENT_PID -- ARGV...`` (PARENT_PID: the runner, so a supervisor
whose runner died before ``PR_SET_PDEATHSIG`` took effect exits instead of running an orphaned CLI).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_SWEEP_ROUNDS = 200
_POLL = 0.02


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _descendants(root: int) -> list[int]:
    """Live (non-zombie) processes below ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    zombie: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(name)
        if fields[0] in (b"Z", b"X"):
            zombie.add(pid)
        children.setdefault(int(fields[1]), []).append(pid)
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in zombie:
                found.append(child)
            stack.append(child)
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _sweep(grace: float) -> None:
    """SIGTERM every descendant, SIGKILL the survivors after ``grace``; reap all of them."""
    me = os.getpid()
    deadline = time.monotonic() + grace
    termed: set[int] = set()
    for _ in range(_SWEEP_ROUNDS):
        _reap()
        alive = _descendants(me)
        if not alive:
            return
        sig = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
        for pid in alive:
            if sig == signal.SIGTERM and pid in termed:
                continue
            termed.add(pid)
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(_POLL)
    _reap()


def _die_like(status: int) -> None:
    """Exit the way the CLI did: same exit code, or killed by the same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: _supervisor.py GRACE_SECONDS PARENT_PID -- ARGV...\n")
        os._exit(2)
    grace = max(0.0, float(argv[0]))
    parent = int(argv[1])
    command = argv[3:]

    def stop(signum: int, _frame: object) -> None:
        raise _Stop(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the runner died before PR_SET_PDEATHSIG took effect
        os._exit(1)
    try:
        try:
            child = subprocess.Popen(command, close_fds=True, restore_signals=True)
        except OSError as exc:
            sys.stderr.write(f"cannot start {command[0]}: {exc.strerror or exc}\n")
            os._exit(127)
        # The CLI has its own copies; ours would keep the runner's stdout pipe open.
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == child.pid:
                break
        child.returncode = 0  # reaped here; keep Popen's destructor from waiting again
    except _Stop as stop_signal:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        _sweep(grace)
        signal.signal(stop_signal.signum, signal.SIG_DFL)
        os.kill(os.getpid(), stop_signal.signum)
        time.sleep(1)
        os._exit(128 + stop_signal.signum)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _sweep(grace)
    _die_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
