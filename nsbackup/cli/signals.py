"""SIGTERM/SIGINT during a run: stop the module sides it started, then end with 130."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def stop_children_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGINT end every child process group of the run and raise
    ``KeyboardInterrupt`` (the CLI exits 130); the modules then fail like any failure."""
    from nsbackup.runs import children

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        children.stopping.set()  # worker threads waiting for a module's lock give up
        children.terminate_all()
        raise KeyboardInterrupt

    children.stopping.clear()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
