"""The child processes of a run (module sides, restic), so that a run stopped by a signal
stops them too: each is started in its own session, and :func:`terminate_all` ends their
whole process groups (SIGTERM, then SIGKILL after a grace period)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

_live: set[subprocess.Popen[str]] = set()
_lock = threading.Lock()
stopping = threading.Event()
"""Set while a run is being stopped (the CLI's signal handler): the run's waits for a
module's lock end at once instead of lasting up to ``--wait``."""


def track(proc: subprocess.Popen[str]) -> None:
    with _lock:
        _live.add(proc)


def untrack(proc: subprocess.Popen[str]) -> None:
    with _lock:
        _live.discard(proc)


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def terminate_all(grace: float = 10.0) -> int:
    """SIGTERM every tracked child's process group, SIGKILL what is left after ``grace``
    seconds; return how many children there were."""
    with _lock:
        procs = [p for p in _live if p.poll() is None]
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    return len(procs)
