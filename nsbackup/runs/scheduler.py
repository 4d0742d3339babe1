"""``nsbackup scheduler``: a foreground scheduler for hosts where systemd is not PID 1
(containers), doing the work of the node's backup timers (ref §6.1).

- Each enabled schedule with a calendar elapses as systemd computes it
  (:mod:`nsbackup.runs.calendar`: ``systemd-analyze calendar``, the process's time zone). At an
  elapse the scheduler starts ``nsbackup backup run <id>`` as a child process with the node's
  settings (:mod:`nsbackup.runs.command`). A schedule runs at most once at a time: an elapse
  that finds the previous run still going is skipped and logged (as a systemd timer does);
  different schedules run concurrently. Elapses missed while the process was busy or the
  machine asleep are coalesced into one run.
- Like a timer with ``Persistent=true``, the time of each trigger is kept in
  ``<state dir>/scheduler/backup<id>.stamp``: when the scheduler starts, a schedule whose next
  elapse after its last trigger has passed runs at once (a run missed while the node was down
  happens at start). A schedule added, re-enabled or changed while the scheduler runs starts
  from the moment of the change.
- Schedule changes arrive as ``cluster/event/backup-schedule-changed``. Every event, and every
  (re)subscription (catching up on what happened while Redis was away), reads the schedules
  afresh, recomputes each next elapse and purges the metrics of schedules no longer enabled
  (``cluster.runs.purge_metrics``). The node's own Redis user subscribes; where it may not
  (NS8's node ACL has no ``SUBSCRIBE``: Redis answers ``NOPERM``), a connection without
  credentials to the same Redis subscribes as NS8's ``default`` user, which may subscribe to
  every channel (ref §1.3; :mod:`nsbackup.events`, shared with the gateway). If neither may,
  the schedules are re-read every minute.
- :meth:`Scheduler.request_stop` (the CLI calls it on SIGTERM/SIGINT) ends the loop; each
  running backup gets SIGTERM — the whole process tree of the run, frozen first so that nothing
  escapes — then SIGKILL after the grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from nsbackup.errors import NsbackupError, ValidationFailed
from nsbackup.events import SUBSCRIBE_TIMEOUT
from nsbackup.files import write_atomic
from nsbackup.model import ClusterState
from nsbackup.runs.calendar import next_elapse, systemd_analyze
from nsbackup.runs.command import (
    DEFAULT_JOBS,
    DEFAULT_WAIT,
    check_run_options,
    check_seconds,
    child_environment,
    node_environment,
    run_argv,
)
from nsbackup.store import EVENT_SCHEDULE_CHANGED, identity

if TYPE_CHECKING:
    from nsbackup.api import Cluster

log = logging.getLogger(__name__)

DEFAULT_GRACE = 30.0
TICK = 1.0
"""The longest the loop sleeps: a change of the wall clock is noticed this soon."""
RECONNECT = 2.0
RELOAD_RETRY = 5.0
POLL_WITHOUT_EVENTS = 60.0
STAMP_DIR = "scheduler"

_PRCTL: Any = None
# Resolved here: a child between fork and exec must not import or load anything.
with contextlib.suppress(OSError, AttributeError):  # not Linux
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In a run before exec: SIGTERM when the thread that started it (the scheduler's loop)
    dies, so no run outlives a scheduler killed with SIGKILL."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _when(moment: float | None) -> str:
    if moment is None:
        return "never"
    return datetime.fromtimestamp(moment).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


@attrs.define
class _Entry:
    """One enabled schedule: its calendar, the time its next elapse is counted from (the last
    trigger, or the moment it was scheduled) and that elapse."""

    id: int
    name: str
    calendar: str
    base: float
    next_elapse: float | None = None
    problem: str = ""


@attrs.define
class _Run:
    id: int
    name: str
    proc: subprocess.Popen[str]
    started: float
    elapse: float
    stdout: str = ""
    stderr: str = ""


class Scheduler:
    """Runs this node's backups at their schedules' elapses until stopped.

    ``jobs`` and ``wait`` go to each ``backup run`` (modules at once, seconds to wait for a
    busy module); ``grace`` is how long runs may take to end after SIGTERM when the
    scheduler stops. Drive it with :meth:`run` (blocks until :meth:`request_stop`, then stops
    the runs), or :meth:`start`, :meth:`serve_forever` and :meth:`stop`. :meth:`status` may be
    called from any thread; :meth:`request_stop` also from a signal handler.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        jobs: int = DEFAULT_JOBS,
        wait: float = DEFAULT_WAIT,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.cluster = cluster
        self.jobs = DEFAULT_JOBS
        self.wait = DEFAULT_WAIT
        self.grace = DEFAULT_GRACE
        self.configure(jobs=jobs, wait=wait, grace=grace)
        self.events_user: str | None = None
        """The Redis user the schedule events are received as, once subscribed."""
        self._stop = threading.Event()
        self._stopping = False  # set by request_stop without a lock (signal handlers)
        self._wakeups: queue.SimpleQueue[str] = queue.SimpleQueue()  # reentrant put()
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._runs: dict[int, _Run] = {}
        self._finished: queue.SimpleQueue[_Run] = queue.SimpleQueue()
        self._watchers: list[threading.Thread] = []
        self._events: threading.Thread | None = None
        self._reload_wanted = False
        self._reload_after = 0.0
        self._reload_failing = False
        self._redis_up = False
        self._node_env: dict[str, str] = {}
        self._stamps_warned = False
        self._counts = {"started": 0, "finished": 0, "skipped": 0, "reloads": 0}

    def configure(
        self, *, jobs: int | None = None, wait: float | None = None, grace: float | None = None
    ) -> Scheduler:
        """Change the options of the runs (before :meth:`start`); returns the scheduler."""
        check_run_options(self.jobs if jobs is None else jobs, self.wait if wait is None else wait)
        if grace is not None:
            check_seconds("grace", grace)
        self.jobs = self.jobs if jobs is None else jobs
        self.wait = self.wait if wait is None else float(wait)
        self.grace = self.grace if grace is None else float(grace)
        return self

    def __repr__(self) -> str:
        return f"Scheduler(node_id={self.cluster.node_id!r}, schedules={len(self._entries)})"

    # -- driving --------------------------------------------------------------------------
    def run(self) -> int:
        """Start, serve until :meth:`request_stop`, stop the runs; return 0."""
        self.start()
        try:
            self.serve_forever()
        finally:
            self.stop()
        return 0

    def start(self) -> None:
        """Read the schedules (Redis must answer now: :class:`~nsbackup.errors.Unreachable`
        otherwise), compute their next elapses, purge stale metrics and start following
        schedule events."""
        if not self.cluster.node_id:
            raise ValidationFailed.one(
                "node", None, "required", "the local node id is required (--node or NODE_ID)"
            )
        systemd_analyze()
        self._node_env = node_environment(self.cluster)
        state = self.cluster.store.load()
        with self._lock:
            messages = self._apply(state, initial=True)
            count = len(self._entries)
        log.info(
            "scheduler of node %s started: %d schedule(s) enabled; runs with --jobs %d --wait %g",
            self.cluster.node_id,
            count,
            self.jobs,
            self.wait,
        )
        for message in messages:
            log.info("%s", message)
        self._purge(state)
        self._events = threading.Thread(
            target=self._follow_events, name="scheduler-events", daemon=True
        )
        self._events.start()

    def serve_forever(self) -> None:
        """Start due runs, collect finished ones and apply schedule changes until
        :meth:`request_stop`."""
        while not self._stopping:
            self._collect()
            if self._reload_wanted and time.time() >= self._reload_after:
                self._reload_wanted = False
                self._reload()
            with self._lock:
                self._fire_due(time.time())
                upcoming = [
                    e.next_elapse for e in self._entries.values() if e.next_elapse is not None
                ]
            timeout = TICK
            if upcoming:
                timeout = max(0.0, min(TICK, min(upcoming) - time.time()))
            with contextlib.suppress(queue.Empty):
                self._wakeups.get(timeout=timeout)

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe in a signal handler)."""
        self._stopping = True
        self._wakeups.put("stop")

    def stop(self) -> None:
        """Stop following events and end every running backup (SIGTERM to its whole process
        tree, SIGKILL after ``grace`` seconds)."""
        self._stopping = True
        self._stop.set()
        with self._lock:
            running = list(self._runs.values())
        if running:
            log.info(
                "stopping: terminating %d running backup(s): %s",
                len(running),
                ", ".join(f"backup {r.id} (pid {r.proc.pid})" for r in running),
            )
            terminate_trees([r.proc.pid for r in running], self.grace)
        for watcher in self._watchers:
            watcher.join(timeout=self.grace + 10)
        self._collect()
        if self._events is not None:
            self._events.join(timeout=SUBSCRIBE_TIMEOUT + 5)
        log.info("scheduler stopped")

    def status(self) -> dict[str, Any]:
        """What the scheduler is doing, as JSON: ``{"node_id", "events_user",
        "redis_connected", "schedules": [{"id", "name", "schedule", "next_elapse",
        "last_trigger", "problem", "running_pid"}], "running": [id, ...], "runs":
        {"started", "finished", "skipped", "reloads"}}``; times are epoch seconds,
        ``last_trigger`` the time the next elapse is counted from."""
        with self._lock:
            return {
                "node_id": self.cluster.node_id,
                "events_user": self.events_user,
                "redis_connected": self._redis_up,
                "schedules": [
                    {
                        "id": e.id,
                        "name": e.name,
                        "schedule": e.calendar,
                        "next_elapse": e.next_elapse,
                        "last_trigger": e.base,
                        "problem": e.problem,
                        "running_pid": self._runs[e.id].proc.pid if e.id in self._runs else None,
                    }
                    for e in sorted(self._entries.values(), key=lambda e: e.id)
                ],
                "running": sorted(self._runs),
                "runs": dict(self._counts),
            }

    # -- schedules ------------------------------------------------------------------------
    def _reload(self) -> None:
        try:
            state = self.cluster.store.load()
        except NsbackupError as exc:
            if not self._reload_failing:
                log.warning("cannot read the schedules (%s): keeping the current ones", exc)
            self._reload_failing = True
            self._reload_wanted = True
            self._reload_after = time.time() + RELOAD_RETRY
            return
        self._reload_failing = False
        with self._lock:
            self._counts["reloads"] += 1
            messages = self._apply(state)
        for message in messages:
            log.info("%s", message)
        self._purge(state)

    def _purge(self, state: ClusterState) -> None:
        try:
            self.cluster.runs.purge_metrics(state)
        except NsbackupError as exc:
            log.warning("stale metrics not purged: %s", exc)

    def _apply(self, state: ClusterState, *, initial: bool = False) -> list[str]:
        """Make the entries match ``state`` (called with the lock held); return what changed,
        for the log."""
        messages = []
        now = time.time()
        wanted = {bid: s for bid, s in state.schedules.items() if s.enabled and s.schedule.strip()}
        for bid in sorted(self._entries.keys() - wanted.keys()):
            gone = self._entries.pop(bid)
            current = state.schedules.get(bid)
            why = (
                "removed"
                if current is None
                else "disabled"
                if not current.enabled
                else "left without a calendar"
            )
            self._forget_stamp(bid)
            messages.append(f"backup {bid} ({gone.name}) {why}: no longer scheduled")
        for bid, schedule in sorted(wanted.items()):
            old = self._entries.get(bid)
            if old is not None and old.calendar == schedule.schedule:
                old.name = schedule.name
                self._compute(old)  # same answer unless systemd's view of time changed
                continue
            stamp = self._read_stamp(bid) if initial else None
            entry = _Entry(bid, schedule.name, schedule.schedule, stamp or now)
            self._entries[bid] = entry
            self._compute(entry)
            if entry.problem:
                continue
            if old is not None:
                what = f"schedule changed from {old.calendar!r} to {entry.calendar!r}"
            elif initial:
                what = f"schedule {entry.calendar!r}"
            else:
                what = f"scheduled {entry.calendar!r}"
            late = stamp is not None and (entry.next_elapse or now + 1) <= now
            catch_up = " (missed while stopped: runs now)" if late else ""
            messages.append(
                f"backup {bid} ({entry.name}) {what}, next elapse "
                f"{_when(entry.next_elapse)}{catch_up}"
            )
        if initial:
            # Stamps of schedules that no longer exist or are disabled are stale.
            for bid in self._stamped_ids() - wanted.keys():
                self._forget_stamp(bid)
        return messages

    def _compute(self, entry: _Entry) -> None:
        try:
            entry.next_elapse = next_elapse(entry.calendar, entry.base)
            entry.problem = ""
        except NsbackupError as exc:
            if entry.problem != str(exc):
                log.error("backup %d (%s) not scheduled: %s", entry.id, entry.name, exc)
            entry.next_elapse = None
            entry.problem = str(exc)
            return
        if entry.next_elapse is None and not entry.problem:
            entry.problem = "no future elapse"
            log.warning(
                "backup %d (%s): schedule %r has no future elapse",
                entry.id,
                entry.name,
                entry.calendar,
            )

    # -- stamps (Persistent=true) ---------------------------------------------------------
    def _stamp_dir(self) -> Path:
        return Path(self.cluster.settings.state_dir) / STAMP_DIR

    def _stamp(self, bid: int) -> Path:
        return self._stamp_dir() / f"backup{bid}.stamp"

    def _read_stamp(self, bid: int) -> float | None:
        try:
            value = float(self._stamp(bid).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None
        return value if 0 < value <= time.time() else None

    def _write_stamp(self, bid: int, moment: float) -> None:
        path = self._stamp(bid)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, f"{moment:.6f}\n")
        except OSError as exc:
            if not self._stamps_warned:
                log.warning(
                    "cannot keep the time of the last runs in %s (%s): runs missed while the "
                    "scheduler is stopped will not be caught up",
                    path.parent,
                    exc.strerror,
                )
            self._stamps_warned = True

    def _forget_stamp(self, bid: int) -> None:
        with contextlib.suppress(OSError):
            self._stamp(bid).unlink(missing_ok=True)

    def _stamped_ids(self) -> set[int]:
        ids = set()
        with contextlib.suppress(OSError):
            for path in self._stamp_dir().glob("backup*.stamp"):
                number = path.name[len("backup") : -len(".stamp")]
                if number.isdigit():
                    ids.add(int(number))
        return ids

    # -- runs -----------------------------------------------------------------------------
    def _fire_due(self, now: float) -> None:
        """Start the run of each schedule whose elapse has come (lock held)."""
        due = [e for e in self._entries.values() if e.next_elapse is not None]
        for entry in sorted(due, key=lambda e: (e.next_elapse or 0, e.id)):
            assert entry.next_elapse is not None
            if entry.next_elapse > now:
                continue
            elapse = entry.next_elapse
            entry.base = now
            self._write_stamp(entry.id, now)
            self._compute(entry)
            running = self._runs.get(entry.id)
            if running is not None:
                self._counts["skipped"] += 1
                log.warning(
                    "backup %d (%s): elapse of %s skipped: the run started at %s (pid %d) "
                    "is still going; next elapse %s",
                    entry.id,
                    entry.name,
                    _when(elapse),
                    _when(running.started),
                    running.proc.pid,
                    _when(entry.next_elapse),
                )
                continue
            self._spawn(entry, elapse)

    def _spawn(self, entry: _Entry, elapse: float) -> None:
        argv = [*run_argv(entry.id, ns8=False, jobs=self.jobs, wait=self.wait), "--json"]
        env = child_environment(self._node_env, os.environ)
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # a Ctrl-C on the scheduler's terminal is its own
                preexec_fn=_child_setup,
            )
        except OSError as exc:
            log.error("backup %d (%s): the run could not start: %s", entry.id, entry.name, exc)
            return
        run = _Run(entry.id, entry.name, proc, time.time(), elapse)
        self._runs[entry.id] = run
        self._counts["started"] += 1
        log.info(
            "backup %d (%s): run started (pid %d) for the elapse of %s; next elapse %s",
            entry.id,
            entry.name,
            proc.pid,
            _when(elapse),
            _when(entry.next_elapse),
        )

        def watch() -> None:
            # Ends when the run ends: stop() bounds that (SIGTERM, then SIGKILL).
            run.stdout, run.stderr = proc.communicate()
            self._finished.put(run)
            self._wakeups.put("finished")

        watcher = threading.Thread(target=watch, name=f"run-{entry.id}", daemon=True)
        self._watchers = [w for w in self._watchers if w.is_alive()]
        self._watchers.append(watcher)
        watcher.start()

    def _collect(self) -> None:
        """Log each finished run; purge again when its schedule is gone (a run that was
        going when the schedule was disabled has just written its metrics)."""
        purge = False
        while True:
            try:
                run = self._finished.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                if self._runs.get(run.id) is run:
                    del self._runs[run.id]
                self._counts["finished"] += 1
                purge |= run.id not in self._entries
            code = run.proc.returncode
            summary = _summary(run.stdout, run.stderr, code)
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(
                level,
                "backup %d (%s): run finished, exit %s in %.1f s%s",
                run.id,
                run.name,
                code,
                time.time() - run.started,
                f": {summary}" if summary else "",
            )
        if purge and not self._stopping:
            with contextlib.suppress(NsbackupError):
                self._purge(self.cluster.store.load())

    # -- events ---------------------------------------------------------------------------
    def _request_reload(self) -> None:
        self._reload_wanted = True
        self._reload_after = 0.0
        self._wakeups.put("reload")

    def _follow_events(self) -> None:
        from nsbackup.errors import PermissionDenied
        from nsbackup.events import Subscription

        subscription = Subscription(self.cluster.store.reader, [EVENT_SCHEDULE_CHANGED])
        lost = False
        polling = False
        try:
            while not self._stop.is_set():
                try:
                    pubsub = subscription.open()
                except PermissionDenied as exc:
                    if not polling:
                        log.warning(
                            "schedule changes cannot be followed (%s): re-reading the "
                            "schedules every %g s",
                            exc,
                            POLL_WITHOUT_EVENTS,
                        )
                    polling = True
                    self._redis_up = True
                    self._request_reload()
                    self._stop.wait(POLL_WITHOUT_EVENTS)
                    continue
                except Exception as exc:
                    if not lost:
                        self._redis_lost(exc)
                    lost = True
                    self._stop.wait(RECONNECT)
                    continue
                user = subscription.user
                if lost:
                    log.warning("Redis reconnected: reading the schedules again")
                if user != self.events_user or lost or polling:
                    note = "" if user == self._node_user() else f" ({self._node_user()} may not)"
                    log.info("following schedule changes as Redis user %s%s", user, note)
                lost = polling = False
                self.events_user = user
                self._redis_up = True
                self._request_reload()  # catch up on what happened before the subscription
                try:
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.5)
                        if message is None or message.get("type") != "message":
                            continue
                        log.info("schedule change: %s", _payload(message.get("data")))
                        self._request_reload()
                except Exception as exc:
                    if not self._stop.is_set():
                        self._redis_lost(exc)
                        lost = True
                finally:
                    with contextlib.suppress(Exception):
                        pubsub.close()
                if lost:
                    self._stop.wait(RECONNECT)
        finally:
            subscription.close()

    def _redis_lost(self, exc: BaseException) -> None:
        log.warning(
            "Redis lost (%s): keeping the current schedules, reconnecting every %g s",
            _describe(exc),
            RECONNECT,
        )
        self._redis_up = False

    def _node_user(self) -> str:
        return identity(self.cluster.store.reader)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _payload(data: Any) -> str:
    try:
        value = json.loads(data) if isinstance(data, str | bytes) else data
    except json.JSONDecodeError:
        return repr(data)[:200]
    if isinstance(value, dict) and isinstance(value.get("backup_ids"), list):
        return "backup(s) " + ", ".join(str(i) for i in value["backup_ids"][:20])
    return repr(value)[:200]


def _summary(stdout: str, stderr: str, code: int | None) -> str:
    """One line about a finished run from its ``--json`` report (or error document)."""
    try:
        report = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        report = None
    if isinstance(report, dict) and "outcome" in report:
        modules = report.get("modules") or []
        ok = sum(1 for m in modules if isinstance(m, dict) and m.get("success"))
        text = str(report["outcome"])
        if modules:
            text += f", {ok} of {len(modules)} module(s) ok"
        failed = [
            f"{m.get('module_id')}: {m.get('failure')}"
            for m in modules
            if isinstance(m, dict) and not m.get("success")
        ]
        if failed:
            text += " (" + "; ".join(failed[:5]) + ")"
        return text
    if isinstance(report, dict) and report.get("message"):
        return str(report["message"])[:300]
    if isinstance(report, list) and report and isinstance(report[0], dict):
        return str(report[0].get("message") or report[0].get("error"))[:300]
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# -- process trees ----------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int, str] | None:
    """``(ppid, start time, state)`` of ``pid`` from ``/proc/<pid>/stat``, or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    try:
        return int(fields[1]), int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def _process_table() -> dict[int, tuple[int, int, str]]:
    table = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat is not None:
                    table[int(entry.name)] = stat
    return table


def process_tree(roots: Iterable[int]) -> dict[int, int]:
    """The live processes of the trees under ``roots`` (roots included), as
    ``{pid: start time}`` (the start time tells a process from a later one with its pid)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        _, start, state = table[pid]
        if state not in ("Z", "X"):
            found[pid] = start
        todo.extend(children.get(pid, ()))
    return found


def _alive(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start and stat[2] not in ("Z", "X")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def terminate_trees(roots: Iterable[int], grace: float) -> None:
    """End every process of the trees under ``roots``: freeze them all (SIGSTOP, repeated until
    no new process appears, so none escapes by forking or by losing its parent), send SIGTERM
    and SIGCONT, wait up to ``grace`` seconds, then SIGKILL what is left. Processes that
    started their own session (module sides, restic) are part of the tree all the same."""
    roots = list(roots)
    members: dict[int, int] = {}
    for _ in range(100):
        fresh = {p: s for p, s in process_tree(roots).items() if members.get(p) != s}
        if not fresh:
            break
        for pid in fresh:
            _signal(pid, signal.SIGSTOP)
        members.update(fresh)
    for pid in members:
        _signal(pid, signal.SIGTERM)
        _signal(pid, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(_alive(pid, start) for pid, start in members.items()):
            return
        time.sleep(0.05)
    for pid, start in members.items():
        if _alive(pid, start):
            log.warning("pid %d still running %g s after SIGTERM: SIGKILL", pid, grace)
            _signal(pid, signal.SIGKILL)
