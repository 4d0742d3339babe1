"""File locks of runs: a backup id runs once at a time on a node, a module is backed up by one
run at a time. ``flock`` locks vanish with their process, so a crashed run never leaves one
behind. A waiter polls every 20 ms, so it starts within milliseconds of the holder's end
(NS8 retried every 60 s)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL = 0.02


class LockTimeout(Exception):
    """The lock was still held at the deadline; ``holder`` is the pid written in it, if any."""

    def __init__(self, path: Path, waited: float, holder: int | None) -> None:
        super().__init__(f"{path} still locked after {waited:g} s")
        self.path = path
        self.waited = waited
        self.holder = holder


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


class FileLock:
    """An exclusive ``flock`` on ``path`` held between :meth:`acquire` and :meth:`release`
    (possibly by different threads: the lock belongs to the open file, not to a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, *, wait: float = 0.0, stop: Callable[[], bool] | None = None) -> None:
        """Take the lock, waiting at most ``wait`` seconds (:class:`LockTimeout` otherwise);
        the holder's pid is written into the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline or (stop is not None and stop()):
                        raise LockTimeout(self.path, wait, _holder(fd)) from None
                    time.sleep(POLL)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def file_lock(
    path: Path,
    *,
    wait: float = 0.0,
    stop: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created 0600 in a 0700 directory), waiting at most
    ``wait`` seconds; raise :class:`LockTimeout` naming the holder's pid otherwise. The
    holder's pid is written into the file while it is held."""
    lock = FileLock(path)
    lock.acquire(wait=wait, stop=stop)
    try:
        yield
    finally:
        lock.release()
