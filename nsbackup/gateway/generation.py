"""One *generation* of rclone servers: an ``rclone rcd`` on its own unix socket and config copy,
running over rc a WebDAV server per destination, a WebDAV server over the combined remote
(``/`` and what no destination serves) and two restic servers over the combined remote (full
for nodes, append-only for modules).

Every backend is created with bounded waits: a destination whose backend cannot be created,
or does not answer within :data:`START_TIMEOUT`, is reported in :class:`DestinationsFailed`
and the caller starts a new generation without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any

import attrs

from nsbackup import rclone
from nsbackup.errors import NsbackupError, Unreachable
from nsbackup.gateway.context import Sockets
from nsbackup.gateway.logs import relay_rclone
from nsbackup.gateway.rc import RcError, rc_call

log = logging.getLogger(__name__)

SECOND_NS = 1_000_000_000
START_TIMEOUT = 10.0
"""How long one server may take to start (its backend created): past it the destination is
dropped. Backends are created by rclone's ``NewFs``: a few round trips to the storage."""
IO_TIMEOUT = 60
"""rclone's ``Timeout`` (seconds) for every backend of a generation: a storage that sends no
byte for this long fails the request, instead of holding it for rclone's default 5 minutes."""
CONNECT_TIMEOUT = 5
RC_READY = 30.0
STOP_GRACE = 1.0
"""rclone gets this long to end after SIGTERM: it holds nothing to flush (no VFS cache), and
one waiting on a storage that does not answer would not end sooner by itself."""
BACKEND_CONFIG = {
    "LowLevelRetries": 1,
    "ConnectTimeout": CONNECT_TIMEOUT * SECOND_NS,
    "Timeout": IO_TIMEOUT * SECOND_NS,
}
"""rclone's ``_config`` for each ``serve/start``: backends keep it for their lifetime."""

# rclone's combine names the upstream it could not use: one that fails to start, or one whose
# root is a file ("can't combine files yet, only directories "<uuid>:<path>": is a file ...").
_UPSTREAM_FAILURE = re.compile(
    r"(?:failed to create upstream|can't combine files yet)"
    r"\D*?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)

_PRCTL: Any = None
# Resolved once here: a child process between fork and exec must not import anything.
with contextlib.suppress(OSError, AttributeError):  # not Linux
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1
CHILD_UMASK = 0o077
"""rclone and HAProxy create sockets, a pid file, caches and (in the repo dir) backups: for
their own user only."""


def child_setup() -> None:
    """In the child before exec: a private umask, and SIGTERM if the thread that started it
    ends (Linux ``PR_SET_PDEATHSIG``): no rclone or HAProxy outlives ``gateway serve``. So
    children that must live on are started from the main thread only."""
    os.umask(CHILD_UMASK)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class DestinationsFailed(NsbackupError):
    """Some destinations' servers could not start: ``failed`` maps their ids to the reason."""

    def __init__(self, failed: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{uid}: {why}" for uid, why in sorted(failed.items())))
        self.failed = dict(failed)


class Stopped(NsbackupError):
    """The gateway was asked to stop while a generation was starting."""


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    stop: threading.Event | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise Unreachable(f"timed out waiting for {what}")
        time.sleep(0.05)


def describe_exit(code: int | None) -> str:
    """``status 1`` or ``killed by SIGKILL``, for a Popen return code."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"status {code}"


@attrs.define
class Generation:
    """One ``rclone rcd`` and its servers."""

    number: int
    sockets: Sockets
    rc_socket: str
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    served: tuple[str, ...] = ()
    started: float = 0.0
    """``time.time()`` when its servers answered."""

    def start(
        self,
        config_text: str,
        fs: Mapping[str, str],
        *,
        combined: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        """Start rclone with ``config_text`` and a WebDAV server per destination (``fs``: id
        -> rclone path), then the servers over the combined remote (unless ``combined`` is
        false: a probe). Destinations that fail raise :class:`DestinationsFailed` (the
        caller stops this generation); anything else :class:`Unreachable`. Must be called
        from the thread that keeps the generation running (see :func:`child_setup`)."""
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(config_text)
        for path in self._socket_paths():
            Path(path).unlink(missing_ok=True)
        env = rclone.clean_env({"RCLONE_CONFIG": str(self.config)})
        try:
            self.proc = subprocess.Popen(
                [
                    rclone.rclone_binary(),
                    "rcd",
                    "--rc-no-auth",
                    "--rc-addr",
                    f"unix://{self.rc_socket}",
                    "--cache-dir",
                    str(self.config.parent / "cache"),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=child_setup,
            )
        except OSError as exc:
            raise Unreachable(f"rclone rcd cannot be started: {exc.strerror or exc}") from None
        relay_output(self.proc.stdout, f"rclone g{self.number}", relay_rclone)
        wait_for(self._rc_ready, RC_READY, "rclone rcd", stop)
        if not fs:
            return
        self._start_destinations(fs, stop)
        if not combined:
            return
        # No VFS caching: files changed behind the server's back (other nodes, restic
        # servers) are seen at once.
        servers: list[dict[str, Any]] = [
            {
                "type": "webdav",
                "addr": f"unix://{self.sockets.webdav}",
                "vfs_cache_mode": "off",
                "dir_cache_time": "0s",
            },
            {"type": "restic", "addr": f"unix://{self.sockets.restic}", "cache_objects": False},
            {
                "type": "restic",
                "addr": f"unix://{self.sockets.restic_append}",
                "cache_objects": False,
                "append_only": True,
            },
        ]
        for server in servers:
            try:
                self._serve({**server, "fs": "combined:"})
            except RcError as exc:
                failed = _UPSTREAM_FAILURE.search(exc.message)
                if failed is None:
                    raise Unreachable(f"rclone servers failed to start: {exc.message}") from None
                raise DestinationsFailed({failed.group(1): _first_line(exc.message)}) from None
            except OSError as exc:
                raise Unreachable(
                    f"rclone did not start its {server['type']} server within "
                    f"{START_TIMEOUT:g} s: {exc}"
                ) from None

    def _start_destinations(self, fs: Mapping[str, str], stop: threading.Event | None) -> None:
        """A WebDAV server per destination. rclone starts one server at a time (``serve/start``
        holds a lock while it creates the backend), so a storage that never answers would hold
        up every other one: the backends are created first, in parallel, by
        ``operations/fsinfo`` (no lock; each must answer within :data:`START_TIMEOUT`), and
        the servers then start on the backends rclone keeps in its cache."""
        failed = self._parallel(
            {uid: ("operations/fsinfo", {"fs": path}) for uid, path in fs.items()}, stop
        )
        if failed:
            raise DestinationsFailed(failed)  # this rclone may be stuck: the caller drops them
        servers = {
            uid: (
                "serve/start",
                {
                    "type": "webdav",
                    "fs": path,
                    "baseurl": f"/{uid}",
                    "addr": f"unix://{self.sockets.destinations[uid]}",
                    "vfs_cache_mode": "off",
                    "dir_cache_time": "0s",
                },
            )
            for uid, path in fs.items()
        }
        failed = self._parallel(servers, stop)
        if failed:
            raise DestinationsFailed(failed)

    def _parallel(
        self, calls: Mapping[str, tuple[str, dict[str, Any]]], stop: threading.Event | None
    ) -> dict[str, str]:
        """rc calls by destination id, in parallel; the failed ones with their reason."""
        if not calls:
            return {}
        failed: dict[str, str] = {}
        pool = ThreadPoolExecutor(max_workers=min(16, len(calls)), thread_name_prefix="rc")
        try:
            futures: dict[Future[dict[str, Any]], str] = {
                pool.submit(self._call, method, params): uid
                for uid, (method, params) in calls.items()
            }
            pending = set(futures)
            while pending:
                if stop is not None and stop.is_set():
                    raise Stopped("stopped while rclone servers were starting")
                _, pending = wait(pending, timeout=0.2, return_when=ALL_COMPLETED)
            if not self.alive():
                assert self.proc is not None
                raise Unreachable(
                    f"rclone rcd exited while starting its servers "
                    f"({describe_exit(self.proc.returncode)})"
                )
            for future, uid in futures.items():
                exc = future.exception()
                if isinstance(exc, RcError):
                    failed[uid] = _first_line(exc.message)
                elif isinstance(exc, OSError):  # socket.timeout included
                    failed[uid] = f"its backend did not answer within {START_TIMEOUT:g} s"
                elif exc is not None:
                    raise exc
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return failed

    def _serve(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._call("serve/start", params)

    def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return rc_call(
            self.rc_socket, method, {**params, "_config": BACKEND_CONFIG}, timeout=START_TIMEOUT
        )

    def _rc_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise Unreachable(f"rclone rcd exited ({describe_exit(self.proc.returncode)})")
        try:
            rc_call(self.rc_socket, "core/version", timeout=2)
            return True
        except (OSError, RcError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        """rclone's rc answers (``gateway status``)."""
        try:
            rc_call(self.rc_socket, "core/version", timeout=2)
            return True
        except (OSError, RcError):
            return False

    def stop(self) -> None:
        """Stop rclone (SIGTERM, SIGKILL after :data:`STOP_GRACE`) and remove its files.
        No ``serve/stopall`` first: a server waiting on a storage that does not answer would
        hold it up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for path in (*self._socket_paths(), str(self.config)):
            Path(path).unlink(missing_ok=True)
        shutil.rmtree(self.config.parent, ignore_errors=True)  # config copy and cache

    def _socket_paths(self) -> tuple[str, ...]:
        return (
            self.rc_socket,
            self.sockets.restic,
            self.sockets.restic_append,
            self.sockets.webdav,
            *self.sockets.destinations.values(),
        )


def _first_line(message: str) -> str:
    return message.splitlines()[0][:300] if message else "unknown error"


def relay_output(
    stream: IO[bytes] | None, source: str, relay: Callable[[str, str], None]
) -> threading.Thread | None:
    """Read a child's output line by line in a daemon thread and hand each to ``relay``."""
    if stream is None:
        return None

    def run() -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                with contextlib.suppress(Exception):  # never stop draining the pipe
                    relay(source, raw.decode("utf-8", "replace").rstrip("\n"))

    thread = threading.Thread(target=run, name=f"output-{source}", daemon=True)
    thread.start()
    return thread
