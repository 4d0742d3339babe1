"""``nsbackup gateway serve``: rclone rcd + restic/WebDAV servers + HAProxy, kept in step with
Redis.

Each *generation* is one ``rclone rcd`` (on its own unix socket and config copy) running three
servers over the ``combined`` remote: a full restic server (nodes), an append-only one
(modules) and a WebDAV server. HAProxy (master-worker) sits in front. Changes arrive as Redis
events:

- ACL or restore-grant change (only ``auth.map``/``modrepo.map`` differ): the maps are
  replaced inside the running HAProxy through its admin socket (prepare/add/commit, atomic);
  rclone is not touched.
- destination change: a new generation starts on new sockets, HAProxy reloads onto it
  (seamless: listening sockets are passed over), and the old generation stops once the old
  HAProxy worker has drained its connections.

A destination whose backend cannot be created is dropped from the combined remote and
reported; the others keep being served (and peers take over the dropped one, ref §3.5).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from nsbackup import rclone
from nsbackup.errors import NsbackupError, Unreachable
from nsbackup.gateway.context import (
    FILES_PER_CONNECTION,
    RESERVED_FILES,
    GatewaySettings,
    RenderContext,
    Sockets,
)
from nsbackup.gateway.dirs import ensure_run_dir, ensure_state_dir, private_subdir
from nsbackup.gateway.rc import RcError, haproxy_command, rc_call
from nsbackup.gateway.render import Problem, build_context, render_files, write_files
from nsbackup.model import ClusterState
from nsbackup.plugins import PluginHost
from nsbackup.store import EVENT_ACL_CHANGED, EVENT_DESTINATION_CHANGED, Store

log = logging.getLogger(__name__)

MAP_FILES = ("auth.map", "modrepo.map")
# rclone's combine names the upstream it could not use: one that fails to start, or one whose
# root is a file ("can't combine files yet, only directories "<uuid>:<path>": is a file ...").
_UPSTREAM_FAILURE = re.compile(
    r"(?:failed to create upstream|can't combine files yet)"
    r"\D*?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


_PRCTL: Any = None
# Resolved once here: a child process between fork and exec must not import anything.
with contextlib.suppress(OSError, AttributeError):  # not Linux
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1
CHILD_UMASK = 0o077
"""rclone and HAProxy create sockets, a pid file, caches and (in the repo dir) backups: for
their own user only."""


def _child_setup() -> None:
    """In the child before exec: a private umask, and SIGTERM if ``gateway serve`` dies, so
    no rclone or HAProxy outlives it (Linux ``PR_SET_PDEATHSIG``)."""
    os.umask(CHILD_UMASK)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise Unreachable(f"timed out waiting for {what}")
        time.sleep(0.05)


@attrs.define
class Generation:
    """One ``rclone rcd`` and its three servers."""

    number: int
    sockets: Sockets
    rc_socket: str
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    served: tuple[str, ...] = ()

    def start(self, config_text: str, upstreams: bool) -> None:
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(config_text)
        for path in (
            self.rc_socket,
            self.sockets.restic,
            self.sockets.restic_append,
            self.sockets.webdav,
        ):
            Path(path).unlink(missing_ok=True)
        env = rclone.clean_env({"RCLONE_CONFIG": str(self.config)})
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
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        _wait(self._rc_ready, 30, "rclone rcd")
        if not upstreams:
            log.warning("no destination to serve: rclone servers not started")
            return
        common = {
            "fs": "combined:",
            "_config": {"LowLevelRetries": 1, "ConnectTimeout": 5_000_000_000},
        }
        # No VFS caching: files changed behind the server's back (other nodes, restic
        # servers) are seen at once.
        rc_call(
            self.rc_socket,
            "serve/start",
            {
                **common,
                "type": "webdav",
                "addr": f"unix://{self.sockets.webdav}",
                "vfs_cache_mode": "off",
                "dir_cache_time": "0s",
            },
            timeout=120,
        )
        rc_call(
            self.rc_socket,
            "serve/start",
            {
                **common,
                "type": "restic",
                "addr": f"unix://{self.sockets.restic}",
                "cache_objects": False,
            },
            timeout=120,
        )
        rc_call(
            self.rc_socket,
            "serve/start",
            {
                **common,
                "type": "restic",
                "addr": f"unix://{self.sockets.restic_append}",
                "cache_objects": False,
                "append_only": True,
            },
            timeout=120,
        )

    def _rc_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise Unreachable(f"rclone rcd exited with status {self.proc.returncode}")
        try:
            rc_call(self.rc_socket, "core/version", timeout=2)
            return True
        except (OSError, RcError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, RcError):
                rc_call(self.rc_socket, "serve/stopall", timeout=10)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        for path in (
            self.rc_socket,
            self.sockets.restic,
            self.sockets.restic_append,
            self.sockets.webdav,
            str(self.config),
        ):
            Path(path).unlink(missing_ok=True)
        shutil.rmtree(self.config.parent, ignore_errors=True)  # config copy and cache


class Gateway:
    """The running gateway of one node."""

    def __init__(
        self,
        store: Store,
        host: PluginHost,
        node_id: str,
        settings: GatewaySettings,
        *,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self.node_id = node_id
        self.settings = settings
        self.generation: Generation | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.dropped: frozenset[str] = frozenset()
        self.problems: tuple[Problem, ...] = ()
        self._next = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._drains: list[threading.Thread] = []
        self.on_event = on_event
        self.reloads = {"maps": 0, "generations": 0}
        self._pending_retire: threading.Thread | None = None
        self._run_dir_ours = False
        """Set once the run dir is verified: only then does :meth:`stop` clean it."""

    # -- start and stop -------------------------------------------------------------------
    def start(self) -> None:
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise Unreachable("haproxy not found (scripts/setup installs it)")
        ensure_state_dir(self.settings.state_dir)
        run = self.settings.run_dir
        ensure_run_dir(run)
        self._run_dir_ours = True
        Path(self.settings.repo_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        maxconn = fit_maxconn(self.settings.maxconn)
        if maxconn != self.settings.maxconn:
            self.settings = attrs.evolve(self.settings, maxconn=maxconn)
        state = self.store.load()
        context = self._new_generation(state)
        self._check_haproxy()
        self.haproxy = subprocess.Popen(
            [
                haproxy,
                "-W",
                "-db",
                "-f",
                str(self.settings.state_dir / "haproxy.cfg"),
                "-p",
                str(run / "haproxy.pid"),
                "-S",
                f"{self.settings.master_socket},mode,600",
            ],
            env=rclone.clean_env(),  # no Redis credentials in HAProxy's environment
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        _wait(self._haproxy_ready, 30, "haproxy")
        log.info(
            "gateway of node %s listening on %s (generation %d, %d destination(s))",
            self.node_id,
            self.settings.listen,
            self.generation.number if self.generation else -1,
            len(context.destinations),
        )

    def stop(self) -> None:
        self._stop.set()
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(timeout=15)
        for thread in self._drains:
            if thread.is_alive():
                thread.join(timeout=1)
        if self.generation is not None:
            self.generation.stop()
        if not self._run_dir_ours:
            return  # a refused run dir is someone else's: leave it alone
        # HAProxy leaves its sockets behind; nothing of this gateway stays in the run dir.
        for path in (
            self.settings.admin_socket,
            self.settings.master_socket,
            str(self.settings.run_dir / "haproxy.pid"),
        ):
            Path(path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.settings.run_dir.rmdir()

    def _haproxy_ready(self) -> bool:
        if self.haproxy is not None and self.haproxy.poll() is not None:
            raise Unreachable(f"haproxy exited with status {self.haproxy.returncode}")
        try:
            return "Pid:" in haproxy_command(self.settings.admin_socket, "show info", 2)
        except OSError:
            return False

    def _check_haproxy(self) -> None:
        result = subprocess.run(
            ["haproxy", "-c", "-q", "-f", str(self.settings.state_dir / "haproxy.cfg")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise NsbackupError(
                f"haproxy rejects the rendered configuration: {result.stderr.strip()[-500:]}"
            )

    # -- generations ----------------------------------------------------------------------
    def _render(
        self, state: ClusterState, generation: int
    ) -> tuple[RenderContext, dict[str, tuple[str, bool]]]:
        context, problems = build_context(
            state,
            self.host,
            self.node_id,
            self.settings,
            generation,
            self.dropped,
        )
        for problem in problems:
            if problem not in self.problems:
                log.warning("%s", problem)
        self.problems = problems
        return context, render_files(self.host, context)

    def _new_generation(self, state: ClusterState) -> RenderContext:
        """Start rclone for ``state`` on new sockets, dropping upstreams that fail; write the
        files. The caller reloads HAProxy."""
        self.dropped = frozenset()
        while True:
            number = self._next
            self._next += 1
            context, files = self._render(state, number)
            generation = Generation(
                number,
                context.sockets,
                str(self.settings.run_dir / f"g{number}-rc.sock"),
                self.settings.run_dir / f"g{number}" / "rclone.conf",
            )
            private_subdir(generation.config.parent)
            served = tuple(
                d.id for d in context.destinations if d.local and d.id not in self.dropped
            )
            try:
                generation.start(files["rclone.conf"][0], bool(served))
            except RcError as exc:
                generation.stop()
                failed = _UPSTREAM_FAILURE.search(exc.message)
                if failed is None or failed.group(1) in self.dropped:
                    raise Unreachable(f"rclone servers failed to start: {exc.message}") from exc
                self.dropped |= {failed.group(1)}
                log.warning(
                    "destination %s dropped from the gateway: %s",
                    failed.group(1),
                    exc.message.splitlines()[0][:300],
                )
                continue
            generation.served = served
            write_files(self.settings.state_dir, files)
            previous, self.generation = self.generation, generation
            if previous is not None:
                self._retire(previous)
            return context

    def _retire(self, old: Generation) -> None:
        """Stop ``old`` once no HAProxy worker started before this reload is left."""

        def drain() -> None:
            try:
                _wait(
                    lambda: self._stop.is_set() or self._old_workers() == 0,
                    7200,
                    "old haproxy workers to drain",
                )
            except Unreachable:
                log.warning("old haproxy workers still running; stopping generation %d", old.number)
            old.stop()
            log.info("generation %d stopped", old.number)

        thread = threading.Thread(target=drain, name=f"drain-g{old.number}", daemon=True)
        self._drains = [t for t in self._drains if t.is_alive() or not t.ident]
        self._drains.append(thread)
        self._pending_retire = thread

    def _old_workers(self) -> int:
        try:
            answer = haproxy_command(self.settings.master_socket, "show proc", 5)
        except OSError:
            return 0
        section = answer.split("# old workers", 1)
        if len(section) < 2:
            return 0
        return sum(
            1
            for line in section[1].splitlines()
            if line.strip() and not line.startswith("#") and line.split()[0].isdigit()
        )

    def _reload_haproxy(self) -> None:
        self._check_haproxy()
        assert self.haproxy is not None
        before = self._worker_pids()
        os.kill(self.haproxy.pid, signal.SIGUSR2)
        _wait(lambda: bool(self._worker_pids() - before), 60, "the new haproxy worker")
        _wait(self._haproxy_ready, 30, "haproxy")

    def _worker_pids(self) -> set[int]:
        try:
            answer = haproxy_command(self.settings.master_socket, "show proc", 5)
        except OSError:
            return set()
        current = answer.split("# old workers", 1)[0]
        pids = set()
        for line in current.splitlines():
            words = line.split()
            if len(words) > 1 and words[0].isdigit() and words[1] == "worker":
                pids.add(int(words[0]))
        return pids

    # -- keeping up with Redis ------------------------------------------------------------
    def reconcile(self) -> str:
        """Bring the gateway in line with Redis; return what was done
        (``nothing``, ``maps``, ``generation``)."""
        with self._lock:
            state = self.store.load()
            assert self.generation is not None
            _, files = self._render(state, self.generation.number)
            current = {name: _read(self.settings.state_dir / name) for name in files}
            changed = {name for name, (text, _) in files.items() if current[name] != text}
            if not changed:
                return "nothing"
            if changed <= set(MAP_FILES) | {"rclone-gateway.env"}:
                write_files(self.settings.state_dir, files)
                for name in sorted(changed & set(MAP_FILES)):
                    self._replace_map(name, files[name][0])
                self.reloads["maps"] += 1
                return "maps"
            self._new_generation(state)
            self._reload_haproxy()
            if self._pending_retire is not None:
                self._pending_retire.start()
                self._pending_retire = None
            self.reloads["generations"] += 1
            return "generation"

    def _replace_map(self, name: str, text: str) -> None:
        """Swap a map's whole content atomically inside the running HAProxy."""
        path = str(self.settings.state_dir / name)
        admin = self.settings.admin_socket
        answer = haproxy_command(admin, f"prepare map {path}")
        m = re.search(r"New version created: (\d+)", answer)
        if m is None:
            raise NsbackupError(f"haproxy refused to prepare {name}: {answer.strip()}")
        version = m.group(1)
        entries = [line.split(None, 1) for line in text.splitlines() if line.strip()]
        for start in range(0, len(entries), 100):
            # Several commands per connection, separated by ';' (keys hold no ';').
            chunk = entries[start : start + 100]
            command = ";".join(f"add map @{version} {path} {k} {v.strip()}" for k, v in chunk)
            haproxy_command(admin, command)
        answer = haproxy_command(admin, f"commit map @{version} {path}")
        if answer.strip():
            raise NsbackupError(f"haproxy refused to commit {name}: {answer.strip()}")

    def serve_forever(self) -> None:
        """Follow Redis events until :meth:`request_stop`."""
        channels = [EVENT_DESTINATION_CHANGED, EVENT_ACL_CHANGED]
        while not self._stop.is_set():
            try:
                pubsub = self.store.reader.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(*channels)
                self._safe_reconcile("subscribed")  # catch up on what happened meanwhile
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    # Act at once; events already queued are covered by the same snapshot.
                    while pubsub.get_message(timeout=0) is not None:
                        pass
                    self._safe_reconcile(str(message.get("channel")))
                pubsub.close()
            except Exception as exc:  # Redis down: keep serving what we have, retry
                if self._stop.is_set():
                    break
                log.warning("Redis events unavailable (%s); retrying", type(exc).__name__)
                self._stop.wait(2)

    def _safe_reconcile(self, why: str) -> None:
        try:
            done = self.reconcile()
        except NsbackupError as exc:
            log.warning("reload after %s failed, previous configuration kept: %s", why, exc)
            return
        if done != "nothing":
            log.info("%s: %s reloaded", why, done)
        if self.on_event is not None:
            self.on_event(done)

    def request_stop(self) -> None:
        self._stop.set()


MIN_MAXCONN = 64


def fit_maxconn(wanted: int) -> int:
    """The ``maxconn`` HAProxy can have with the open files this process may give it.

    HAProxy raises its own soft limit to what ``maxconn`` needs but cannot pass the hard limit
    it inherits (and refuses to start). Raise the hard limit when allowed; otherwise run with
    fewer slots, with a warning, rather than no gateway at all.
    """
    needed = FILES_PER_CONNECTION * wanted + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= needed:
        return wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, needed))
        return wanted
    except (OSError, ValueError):
        pass
    fit = (hard - RESERVED_FILES) // FILES_PER_CONNECTION
    if fit < MIN_MAXCONN:
        raise NsbackupError(
            f"HAProxy needs at least {FILES_PER_CONNECTION * MIN_MAXCONN + RESERVED_FILES} "
            f"open files but the hard limit is {hard}: raise it (systemd LimitNOFILE=, "
            "ulimit -Hn)"
        )
    log.warning(
        "the hard limit of open files is %d: HAProxy gets maxconn %d instead of %d "
        "(raise LimitNOFILE to %d)",
        hard,
        fit,
        wanted,
        needed,
    )
    return fit


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None
