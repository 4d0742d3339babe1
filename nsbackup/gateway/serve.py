"""``nsbackup gateway serve``: rclone rcd + restic/WebDAV servers + HAProxy, kept in step with
Redis and kept alive.

Each *generation* (:mod:`nsbackup.gateway.generation`) is one ``rclone rcd`` with its servers on
its own unix sockets. HAProxy (master-worker) sits in front. Changes arrive as Redis events,
received as the node's Redis user or, where NS8's ACLs do not let a node subscribe, as the
``default`` user (:mod:`nsbackup.events`):

- ACL or restore-grant change (only ``auth.map``/``modrepo.map`` differ): the maps are
  replaced inside the running HAProxy through its admin socket (prepare/add/commit, atomic);
  rclone is not touched.
- destination change: a new generation starts on new sockets, HAProxy reloads onto it
  (seamless: listening sockets are passed over), and the old generation stops once the old
  HAProxy worker has drained its connections.

A destination whose backend cannot be created, or does not answer in time, is dropped from the
generation and reported; the others keep being served (and peers take over the dropped one,
ref §3.5). Dropped destinations are tried again every :data:`RETRY_DROPPED` seconds.

The main thread supervises: a dead rclone is replaced by a new generation (HAProxy reloaded
onto it), a dead HAProxy master (a worker that dies takes its master along) is started again
with the current files, each after a growing delay (:class:`Backoff`); when a child keeps
failing, :meth:`Gateway.serve_forever` gives up with :class:`GiveUp` (exit 5) so that systemd
restarts the whole gateway. Children are started from the main thread only: they get SIGTERM
when the thread that started them ends (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from nsbackup import rclone
from nsbackup.errors import NsbackupError, PermissionDenied, Unreachable
from nsbackup.gateway.access import AccessLog, AccessLogWriter
from nsbackup.gateway.changes import (
    cluster_changes,
    destination_changes,
    fingerprints,
    map_changes,
)
from nsbackup.gateway.context import (
    FILES_PER_CONNECTION,
    RESERVED_FILES,
    GatewaySettings,
    RenderContext,
    parse_listen,
)
from nsbackup.gateway.dirs import ensure_run_dir, ensure_state_dir, private_subdir
from nsbackup.gateway.generation import (
    DestinationsFailed,
    Generation,
    Stopped,
    child_setup,
    describe_exit,
    relay_output,
    wait_for,
)
from nsbackup.gateway.logs import HaproxyRelay, describe
from nsbackup.gateway.rc import haproxy_command
from nsbackup.gateway.render import Problem, build_context, render_files, write_files
from nsbackup.gateway.status import STATUS_VERSION, StatusFile, process_start
from nsbackup.model import ClusterState
from nsbackup.plugins import PluginHost
from nsbackup.store import EVENT_ACL_CHANGED, EVENT_DESTINATION_CHANGED, Store, identity

log = logging.getLogger("nsbackup.gateway")

MAP_FILES = ("auth.map", "modrepo.map")
TICK = 0.2
"""How often the main thread looks at its children: a death is noticed this soon."""
RECONNECT = 2.0
"""Seconds between attempts to reach Redis again."""
POLL_WITHOUT_EVENTS = 60.0
"""Where no Redis user may subscribe, the configuration is re-read this often."""
RETRY_DROPPED = 60.0
HAPROXY_READY = 30.0
HAPROXY_STOP = 10.0
GROUP_EXIT = 2.0
"""How long the workers of a dead HAProxy master get to exit before SIGKILL."""


class GiveUp(Unreachable):
    """A child of the gateway keeps dying: the gateway stops (exit 5) for systemd to restart
    it."""


@attrs.define
class Backoff:
    """Delays before restarting a child: 0.5 s after its first failure, then 1, 2, 4, capped
    at ``cap``; the ``limit``-th failure within ``window`` seconds gives up (``None``)."""

    first: float = 0.5
    cap: float = 8.0
    window: float = 60.0
    limit: int = 5
    failures: list[float] = attrs.field(factory=list)

    def failed(self, now: float) -> float | None:
        self.failures = [t for t in self.failures if now - t < self.window] + [now]
        if len(self.failures) >= self.limit:
            return None
        return float(min(self.cap, self.first * 2 ** (len(self.failures) - 1)))


@attrs.define
class Child:
    """Restart bookkeeping of rclone or HAProxy."""

    name: str
    backoff: Backoff = attrs.field(factory=Backoff)
    due: float | None = None
    """When the pending restart is to be tried (``time.monotonic()``); ``None``: none."""
    failed_at: float = 0.0
    restarts: int = 0

    def fail(self, now: float, what: str) -> float:
        """Record a failure (``what`` happened); the delay before the next attempt, or
        :class:`GiveUp`."""
        if self.due is None:
            self.failed_at = now
        delay = self.backoff.failed(now)
        if delay is None:
            raise GiveUp(
                f"{what}; {self.name} failed {len(self.backoff.failures)} times within "
                f"{self.backoff.window:g} s: giving up (systemd restarts the gateway)"
            )
        self.due = now + delay
        return delay


@attrs.define
class RedisLink:
    connected: bool | None = None
    """``None`` until the first attempt."""
    user: str | None = None
    """The Redis user the events are received as."""
    mode: str = "events"
    """``events``, or ``polling`` where no user may subscribe."""
    since: float = 0.0


class Gateway:
    """The running gateway of one node."""

    def __init__(
        self,
        store: Store,
        host: PluginHost,
        node_id: str,
        settings: GatewaySettings,
        *,
        access_log: str | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self.node_id = node_id
        if access_log is not None and not settings.access_log:
            settings = attrs.evolve(settings, access_log=True)
        self.settings = settings
        self.access_log_target = access_log
        self.generation: Generation | None = None
        self.context: RenderContext | None = None
        self.state: ClusterState | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.dropped: dict[str, str] = {}
        """Destination id -> why its backend could not be started."""
        self.problems: tuple[Problem, ...] = ()
        self.redis = RedisLink()
        self.reloads = {"maps": 0, "generations": 0}
        self.on_event = on_event
        self.started_at = 0.0
        self._next = 0
        self._stop = threading.Event()
        self._queue: queue.Queue[str] = queue.Queue()
        self._drains: list[threading.Thread] = []
        self._pending_retire: list[threading.Thread] = []
        """Drains of generations HAProxy still serves from: started once it has reloaded."""
        self._events: threading.Thread | None = None
        self._relay = HaproxyRelay()
        self._haproxy_output: threading.Thread | None = None
        self._rclone = Child("rclone")
        self._haproxy_child = Child("haproxy")
        self._probe: threading.Thread | None = None
        self._next_probe = 0.0
        self._status = StatusFile(settings.status_file)
        self._access: AccessLog | None = None
        self._status_enabled = False
        """Set once started: a gateway that could not start writes no status."""
        self._probe_ok: list[str] = []
        self._run_dir_ours = False
        """Set once the run dir is verified: only then does :meth:`stop` clean it."""

    # -- start and stop -------------------------------------------------------------------
    def start(self) -> None:
        if shutil.which("haproxy") is None:
            raise Unreachable("haproxy not found (scripts/setup installs it)")
        ensure_state_dir(self.settings.state_dir)
        check_listen_free(self.settings.listen)
        run = self.settings.run_dir
        ensure_run_dir(run)
        self._run_dir_ours = True
        try:
            Path(self.settings.repo_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise PermissionDenied(
                f"--repo-dir {self.settings.repo_dir} cannot be created: {exc.strerror or exc}"
            ) from None
        maxconn = fit_maxconn(self.settings.maxconn)
        if maxconn != self.settings.maxconn:
            self.settings = attrs.evolve(self.settings, maxconn=maxconn)
        self.started_at = time.time()
        self.state = self.store.load(details=False)
        if self.access_log_target is not None:
            try:
                writer = AccessLogWriter(self.access_log_target)
            except OSError as exc:
                raise PermissionDenied(
                    f"the access log {self.access_log_target} cannot be opened: "
                    f"{exc.strerror or exc}"
                ) from None
            self._access = AccessLog(self.settings.access_socket, writer)
            self._access.start()
        self._new_generation(self.state)
        self._check_haproxy()
        self._start_haproxy()
        assert self.generation is not None
        served = self.generation.served
        log.info(
            "gateway of node %s started: listening on %s, generation %d serving %d "
            "destination(s)%s%s",
            self.node_id,
            self.settings.listen,
            self.generation.number,
            len(served),
            f": {describe(served)}" if served else "",
            f"; dropped: {describe(sorted(self.dropped))}" if self.dropped else "",
        )
        if self.access_log_target is not None:
            log.info("access log: %s", self.access_log_target)
        self._status_enabled = True
        self._write_status("serving")
        self._events = threading.Thread(
            target=self._follow_events, name="gateway-events", daemon=True
        )
        self._events.start()

    def stop(self) -> None:
        started = self._status_enabled
        self._stop.set()
        self._relay.stopping = True
        self._write_status("stopping")
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(timeout=HAPROXY_STOP)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(timeout=HAPROXY_STOP)
        for thread in self._pending_retire:
            thread.start()  # stopping: they stop their generations at once
        for thread in self._drains:
            if thread.is_alive():
                thread.join(timeout=5)
        if self.generation is not None:
            self.generation.stop()
        if self._probe is not None:
            self._probe.join(timeout=1)
        if self._events is not None:
            self._events.join(timeout=1)
        if self._access is not None:
            self._access.stop()
        if self._haproxy_output is not None:
            self._haproxy_output.join(timeout=1)
        if not self._run_dir_ours:
            return  # a refused run dir is someone else's: leave it alone
        if self._status_enabled:
            self._status.remove()
            self._status_enabled = False
        # HAProxy leaves its sockets behind; nothing of this gateway stays in the run dir.
        for path in (
            self.settings.admin_socket,
            self.settings.master_socket,
            str(self.settings.run_dir / "haproxy.pid"),
        ):
            Path(path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.settings.run_dir.rmdir()
        if started:
            log.info("gateway of node %s stopped", self.node_id)

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe in a signal handler)."""
        self._stop.set()

    # -- HAProxy --------------------------------------------------------------------------
    def _start_haproxy(self) -> None:
        self._relay.reset()
        try:
            self.haproxy = subprocess.Popen(
                [
                    "haproxy",
                    "-W",
                    "-db",
                    "-f",
                    str(self.settings.state_dir / "haproxy.cfg"),
                    "-p",
                    str(self.settings.run_dir / "haproxy.pid"),
                    "-S",
                    f"{self.settings.master_socket},mode,600",
                ],
                env=rclone.clean_env(),  # no Redis credentials in HAProxy's environment
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=child_setup,
            )
        except OSError as exc:
            raise Unreachable(f"haproxy cannot be started: {exc.strerror or exc}") from None
        self._haproxy_output = relay_output(self.haproxy.stdout, "haproxy", self._relay)
        wait_for(self._haproxy_ready, HAPROXY_READY, "haproxy", self._stop)

    def _haproxy_ready(self) -> bool:
        if self.haproxy is not None and self.haproxy.poll() is not None:
            if self._haproxy_output is not None:
                self._haproxy_output.join(timeout=2)  # its last words are relayed
            last = self._relay.last_alert
            raise Unreachable(
                f"haproxy exited ({describe_exit(self.haproxy.returncode)})"
                + (f": {last}" if last else "")
            )
        try:
            return "Pid:" in haproxy_command(self.settings.admin_socket, "show info", 2)
        except OSError:
            return False

    def _haproxy_alive(self) -> bool:
        return self.haproxy is not None and self.haproxy.poll() is None

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

    def _reload_haproxy(self) -> None:
        self._check_haproxy()
        assert self.haproxy is not None
        before = self._worker_pids()
        os.kill(self.haproxy.pid, signal.SIGUSR2)

        def reloaded() -> bool:
            if not self._haproxy_alive():
                raise Unreachable("haproxy exited during a reload")
            return bool(self._worker_pids() - before)

        wait_for(reloaded, 60, "the new haproxy worker", self._stop)
        wait_for(self._haproxy_ready, HAPROXY_READY, "haproxy", self._stop)

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

    def _drained(self) -> bool:
        """No HAProxy worker from before the last reload is left. The master's CLI does not
        answer while the master re-executes itself for a reload: that is no answer, not zero
        (an old generation stopped then would cut the requests still in flight)."""
        try:
            answer = haproxy_command(self.settings.master_socket, "show proc", 5)
        except OSError:
            return not self._haproxy_alive()  # a dead master took its workers along
        section = answer.split("# old workers", 1)
        if len(section) < 2:
            return "# workers" in answer
        return not any(
            line.split()[0].isdigit()
            for line in section[1].split("# programs", 1)[0].splitlines()
            if line.strip() and not line.startswith("#")
        )

    # -- generations ----------------------------------------------------------------------
    def _render(
        self, state: ClusterState, generation: int, dropped: frozenset[str]
    ) -> tuple[RenderContext, dict[str, tuple[str, bool]]]:
        context, problems = build_context(
            state, self.host, self.node_id, self.settings, generation, dropped
        )
        for problem in problems:
            if problem not in self.problems:
                log.warning("%s", problem)
        self.problems = problems
        return context, render_files(self.host, context)

    def _new_generation(self, state: ClusterState) -> RenderContext:
        """Start rclone for ``state`` on new sockets, dropping destinations that fail; write
        the files; retire the previous generation. The caller reloads HAProxy."""
        dropped: dict[str, str] = {}
        while True:
            number = self._next
            self._next += 1
            context, files = self._render(state, number, frozenset(dropped))
            generation = Generation(
                number,
                context.sockets,
                str(self.settings.run_dir / f"g{number}-rc.sock"),
                self.settings.run_dir / f"g{number}" / "rclone.conf",
            )
            private_subdir(generation.config.parent)
            fs = upstreams(context)
            try:
                generation.start(files["rclone.conf"][0], fs, stop=self._stop)
            except DestinationsFailed as exc:
                generation.stop()
                new = {uid: why for uid, why in exc.failed.items() if uid not in dropped}
                if not new:
                    raise Unreachable(f"rclone servers failed to start: {exc}") from None
                dropped.update(new)
                continue
            except BaseException:
                generation.stop()
                raise
            generation.served = tuple(sorted(fs))
            generation.started = time.time()
            write_files(self.settings.state_dir, files, "state_dir")
            self._report_drops(dropped, fs)
            self.context = context
            previous, self.generation = self.generation, generation
            if previous is not None:
                if previous.alive():
                    self._retire(previous)
                else:
                    previous.stop()
            return context

    def _report_drops(self, dropped: dict[str, str], served: Iterable[str]) -> None:
        for uid, why in sorted(dropped.items()):
            if self.dropped.get(uid) != why:
                log.warning("destination %s dropped from the gateway: %s", uid, why)
        recovered = sorted(set(self.dropped) & set(served))
        for uid in recovered:
            log.info("destination %s recovered: served again", uid)
        self.dropped = dropped
        self._relay.dropped = frozenset(dropped)
        self._next_probe = time.monotonic() + RETRY_DROPPED

    def _retire(self, old: Generation) -> None:
        """Stop ``old`` once no HAProxy worker started before this reload is left."""

        def drain() -> None:
            try:
                wait_for(
                    lambda: self._stop.is_set() or self._drained(),
                    7200,
                    "old haproxy workers to drain",
                )
            except Unreachable:
                log.warning("old haproxy workers still running; stopping generation %d", old.number)
            old.stop()
            log.debug("generation %d stopped", old.number)

        thread = threading.Thread(target=drain, name=f"drain-g{old.number}", daemon=True)
        self._drains = [t for t in self._drains if t.is_alive() or not t.ident]
        self._drains.append(thread)
        self._pending_retire.append(thread)

    def _switch(self) -> None:
        """HAProxy onto the current generation (when it runs: a restarted one reads the
        files), then the previous generation drains."""
        if self._haproxy_alive() and self._haproxy_child.due is None:
            self._reload_haproxy()
        for thread in self._pending_retire:
            thread.start()
        self._pending_retire = []

    # -- keeping up with Redis ------------------------------------------------------------
    def reconcile(self, why: str = "reconcile") -> str:
        """Bring the gateway in line with Redis; return what was done
        (``nothing``, ``maps``, ``generation``)."""
        state = self.store.load(details=False)
        self.state = state
        assert self.generation is not None
        _, files = self._render(state, self.generation.number, frozenset(self.dropped))
        current = {name: _read(self.settings.state_dir / name) for name in files}
        changed = {name for name, (text, _) in files.items() if current[name] != text}
        if not changed and self._rclone.due is None:
            return "nothing"
        new_texts = {name: text for name, (text, _) in files.items()}
        maps = map_changes(current, new_texts)
        if changed <= set(MAP_FILES) | {"rclone-gateway.env"} and self._rclone.due is None:
            write_files(self.settings.state_dir, files, "state_dir")
            if self._haproxy_alive() and self._haproxy_child.due is None:
                for name in sorted(changed & set(MAP_FILES)):
                    self._replace_map(name, files[name][0])
            self.reloads["maps"] += 1
            log.info("maps reloaded (%s): %s", why, "; ".join(maps) or "no user or module changed")
            return "maps"
        before, old_context = fingerprints(self.context), self.context
        context = self._new_generation(state)
        self._switch()
        self._rclone.due = None
        self.reloads["generations"] += 1
        assert self.generation is not None
        parts = (
            destination_changes(before, fingerprints(context))
            + cluster_changes(old_context, context)
            + maps
        )
        log.info(
            "generation reloaded (%s): generation %d serves %d destination(s)%s",
            why,
            self.generation.number,
            len(self.generation.served),
            "; " + "; ".join(parts) if parts else "",
        )
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
        """Apply Redis events and keep rclone and HAProxy running until
        :meth:`request_stop`; :class:`GiveUp` when a child cannot be kept running."""
        try:
            while not self._stop.is_set():
                reasons = self._take_events(TICK)
                if reasons:
                    self._safe_reconcile(reasons)
                self._supervise()
                self._retry_dropped()
                self._write_status("serving")
        except GiveUp as exc:
            log.error("%s", exc)
            raise
        except Stopped:
            pass

    def _take_events(self, timeout: float) -> list[str]:
        try:
            reasons = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:  # a burst is one reload: one snapshot covers it
                reasons.append(self._queue.get_nowait())
        return reasons

    def _safe_reconcile(self, reasons: list[str]) -> None:
        why = ", ".join(dict.fromkeys(r.rsplit("/", 1)[-1] for r in reasons))
        try:
            done = self.reconcile(why)
        except Stopped:
            return
        except (NsbackupError, OSError) as exc:
            log.warning("reload after %s failed, previous configuration kept: %s", why, exc)
            return
        if self.on_event is not None:
            self.on_event(done)

    def _follow_events(self) -> None:
        """The events thread: subscribe (as the node, else as ``default``), post each event
        to the main thread, reconnect when Redis goes away, catch up after each
        (re)subscription."""
        from nsbackup.events import Subscription

        subscription = Subscription(
            self.store.reader, [EVENT_DESTINATION_CHANGED, EVENT_ACL_CHANGED]
        )
        node_user = identity(self.store.reader)
        lost_since: float | None = None
        polling = False
        try:
            while not self._stop.is_set():
                try:
                    pubsub = subscription.open()
                except PermissionDenied as exc:
                    if not polling:
                        log.warning(
                            "cluster events cannot be followed (%s): re-reading Redis every %g s",
                            exc,
                            POLL_WITHOUT_EVENTS,
                        )
                    polling = True
                    self._set_redis(True, None, "polling")
                    self._queue.put("poll")
                    self._stop.wait(POLL_WITHOUT_EVENTS)
                    continue
                except Exception as exc:
                    if lost_since is None:
                        lost_since = time.monotonic()
                        self._redis_lost(exc)
                    self._stop.wait(RECONNECT)
                    continue
                note = "" if subscription.user == node_user else f" ({node_user} may not subscribe)"
                if lost_since is not None:
                    log.info(
                        "Redis reconnected after %.0f s: following cluster events as Redis user "
                        "%s%s; catching up",
                        time.monotonic() - lost_since,
                        subscription.user,
                        note,
                    )
                else:
                    log.info("following cluster events as Redis user %s%s", subscription.user, note)
                lost_since, polling = None, False
                self._set_redis(True, subscription.user, "events")
                self._queue.put("subscribed")  # catch up on what happened meanwhile
                try:
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.5)
                        if message is not None and message.get("type") == "message":
                            self._queue.put(str(message.get("channel")))
                except Exception as exc:
                    if not self._stop.is_set():
                        lost_since = time.monotonic()
                        self._redis_lost(exc)
                finally:
                    with contextlib.suppress(Exception):
                        pubsub.close()
                if lost_since is not None:
                    self._stop.wait(RECONNECT)
        finally:
            subscription.close()

    def _redis_lost(self, exc: BaseException) -> None:
        log.warning(
            "Redis lost (%s): serving the current configuration, reconnecting every %g s",
            _describe(exc),
            RECONNECT,
        )
        self._set_redis(False, None, "events")

    def _set_redis(self, connected: bool, user: str | None, mode: str) -> None:
        if (self.redis.connected, self.redis.user, self.redis.mode) != (connected, user, mode):
            self.redis = RedisLink(connected, user, mode, time.time())

    # -- supervision ----------------------------------------------------------------------
    def _supervise(self) -> None:
        """Notice a dead rclone or HAProxy and restart it when its delay has passed."""
        if self._stop.is_set():
            return
        now = time.monotonic()
        generation = self.generation
        if generation is not None and not generation.alive() and self._rclone.due is None:
            assert generation.proc is not None
            what = (
                f"rclone rcd of generation {generation.number} (pid {generation.proc.pid}) "
                f"died ({describe_exit(generation.proc.returncode)})"
            )
            generation.stop()
            delay = self._rclone.fail(now, what)
            log.warning("%s: a new generation starts in %g s", what, delay)
        master = self.haproxy
        if master is not None and master.poll() is not None and self._haproxy_child.due is None:
            why = self._relay.last_worker_exit
            what = (
                f"haproxy (master pid {master.pid}) exited ({describe_exit(master.returncode)})"
                + (f" after: {why}" if why else "")
            )
            delay = self._haproxy_child.fail(now, what)
            log.warning("%s: restarting it in %g s", what, delay)
        if self._rclone.due is not None and now >= self._rclone.due:
            self._restart_rclone()
        if self._haproxy_child.due is not None and time.monotonic() >= self._haproxy_child.due:
            self._restart_haproxy()

    def _restart_rclone(self) -> None:
        assert self.state is not None
        failed_at = self._rclone.failed_at
        try:
            self._new_generation(self.state)
            self._switch()
            error = None
        except Stopped:
            raise
        except (NsbackupError, OSError) as exc:
            error = exc
        if error is not None:  # outside the handler: a GiveUp carries no chained traceback
            delay = self._rclone.fail(time.monotonic(), f"rclone could not be restarted: {error}")
            log.warning("rclone could not be restarted (%s): trying again in %g s", error, delay)
            return
        self._rclone.due = None
        self._rclone.restarts += 1
        assert self.generation is not None
        log.info(
            "rclone restarted: generation %d serves %d destination(s), %.1f s after the failure",
            self.generation.number,
            len(self.generation.served),
            time.monotonic() - failed_at,
        )

    def _restart_haproxy(self) -> None:
        failed_at = self._haproxy_child.failed_at
        try:
            if self.haproxy is not None:
                end_process_group(self.haproxy.pid, GROUP_EXIT)
            self._check_haproxy()
            self._start_haproxy()
            error = None
        except Stopped:
            raise
        except (NsbackupError, OSError) as exc:
            error = exc
        if error is not None:
            if self.haproxy is not None and self.haproxy.poll() is None:
                self.haproxy.kill()
                self.haproxy.wait(timeout=HAPROXY_STOP)
            delay = self._haproxy_child.fail(
                time.monotonic(), f"haproxy could not be restarted: {error}"
            )
            log.warning("haproxy could not be restarted (%s): trying again in %g s", error, delay)
            return
        self._haproxy_child.due = None
        self._haproxy_child.restarts += 1
        assert self.haproxy is not None
        log.info(
            "haproxy restarted (master pid %d, workers %s), %.1f s after the failure",
            self.haproxy.pid,
            describe(sorted(self._worker_pids())) or "none yet",
            time.monotonic() - failed_at,
        )

    def _retry_dropped(self) -> None:
        """Every :data:`RETRY_DROPPED` s, a throwaway rclone tries the dropped destinations
        (in a thread: one that does not answer takes its time there); when one can be served
        again, a new generation takes it in."""
        if self._probe is not None and not self._probe.is_alive():
            self._probe = None
            if self._probe_ok and self.state is not None and self._rclone.due is None:
                why = f"dropped destination(s) {describe(self._probe_ok)} answer again"
                try:
                    self._new_generation(self.state)
                    self._switch()
                except Stopped:
                    raise
                except (NsbackupError, OSError) as exc:
                    log.warning("%s, but the new generation failed: %s", why, exc)
                else:
                    self.reloads["generations"] += 1
                    assert self.generation is not None
                    log.info(
                        "generation reloaded (%s): generation %d serves %d destination(s)",
                        why,
                        self.generation.number,
                        len(self.generation.served),
                    )
        if (
            not self.dropped
            or self._probe is not None
            or time.monotonic() < self._next_probe
            or self.context is None
        ):
            return
        self._next_probe = time.monotonic() + RETRY_DROPPED
        number = self._next
        self._next += 1
        ids = set(self.dropped)
        context = attrs.evolve(
            self.context,
            destinations=tuple(d for d in self.context.destinations if d.id in ids),
            dropped=frozenset(),
            sockets=self.settings.sockets(number, ids),
        )
        config = render_files(self.host, context)["rclone.conf"][0]
        probe = Generation(
            number,
            context.sockets,
            str(self.settings.run_dir / f"g{number}-rc.sock"),
            self.settings.run_dir / f"g{number}" / "rclone.conf",
        )
        private_subdir(probe.config.parent)
        self._probe_ok = []

        def run() -> None:
            try:
                probe.start(config, upstreams(context), combined=False, stop=self._stop)
                self._probe_ok = sorted(ids)
            except DestinationsFailed as exc:
                self._probe_ok = sorted(ids - set(exc.failed))
            except Exception as exc:
                log.debug("dropped destinations not tried again: %s", exc)
            finally:
                probe.stop()

        self._probe = threading.Thread(target=run, name="probe-dropped", daemon=True)
        self._probe.start()

    # -- status ---------------------------------------------------------------------------
    def status(self, state: str = "serving") -> dict[str, Any]:
        """What ``gateway status`` shows (without the live figures)."""
        generation = self.generation
        return {
            "version": STATUS_VERSION,
            "state": state,
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "node_id": self.node_id,
            "listen": self.settings.listen,
            "state_dir": str(self.settings.state_dir),
            "started": self.started_at,
            "generation": None
            if generation is None
            else {
                "number": generation.number,
                "started": generation.started,
                "rclone_pid": generation.proc.pid if generation.proc else None,
                "served": list(generation.served),
            },
            "dropped": [{"id": k, "reason": v} for k, v in sorted(self.dropped.items())],
            "skipped": [{"id": p.destination, "reason": p.reason} for p in self.problems],
            "haproxy": {
                "master_pid": self.haproxy.pid if self.haproxy else None,
                "restarts": self._haproxy_child.restarts,
                "restarting": self._haproxy_child.due is not None,
            },
            "rclone": {
                "restarts": self._rclone.restarts,
                "restarting": self._rclone.due is not None,
            },
            "redis": attrs.asdict(self.redis),
            "reloads": dict(self.reloads),
            "access_log": self.access_log_target,
            "sockets": {
                "admin": self.settings.admin_socket,
                "master": self.settings.master_socket,
                "rc": generation.rc_socket if generation else None,
            },
        }

    def _write_status(self, state: str) -> None:
        if not self._status_enabled:
            return
        try:
            self._status.write(self.status(state))
        except OSError as exc:
            log.debug("status file not written: %s", exc)


def upstreams(context: RenderContext) -> dict[str, str]:
    """Destination id -> its rclone path, as the combined remote names it, for every
    destination this generation serves."""
    return {
        d.id: f"{d.id}:{d.basepath.rstrip('/')}"
        for d in context.destinations
        if d.id in context.sockets.destinations
    }


def check_listen_free(listen: str) -> None:
    """Refuse an address another process listens on: bind it once without ``SO_REUSEPORT``
    (HAProxy's own bind would share it with another HAProxy)."""
    address, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno == 98:  # EADDRINUSE
                raise Unreachable(
                    f"--listen {listen}: address in use (another gateway, or another program, "
                    "listens there)"
                ) from None
            raise Unreachable(f"--listen {listen}: {exc.strerror or exc}") from None


def end_process_group(pgid: int, grace: float) -> None:
    """Wait up to ``grace`` seconds for the processes of group ``pgid`` (the workers of a
    dead HAProxy master) to exit, then SIGKILL those left: they hold the listening socket."""
    deadline = time.monotonic() + grace
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.05)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


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
