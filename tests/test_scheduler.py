"""``nsbackup scheduler`` with real components: Redis (nsbackup's ACL rules and NS8's own
lines), a real gateway, real ``backup run`` children backing modules up with restic, and
``systemd-analyze`` for the elapses. Conditions are waited for with deadlines; the few real
backups dominate the time (each ~3-6 s)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from nsbackup import Cluster, Settings, hookimpl
from nsbackup.model import Schedule
from nsbackup.runs.locks import file_lock
from nsbackup.runs.scheduler import Scheduler, process_tree, terminate_trees
from nsbackup.store import Store
from tests import ns8_acl
from tests.cluster_seed import PASSWORDS, seed
from tests.redis_server import RedisServer
from tests.run_world import NSBACKUP, RunWorld

T = TypeVar("T")
EVERY_SECOND = "*-*-* *:*:*"
FAR_AWAY = "2099-01-01 00:00:00"  # valid, and never due during a test


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something true; return it, or fail at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` and not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[19]) == start and fields[0] not in ("Z", "X")


def ignores_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Log:
    """The standard error of a process, collected line by line in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self.thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self.thread.start()

    def matching(self, text: str) -> list[str]:
        return [line for line in list(self.lines) if text in line]

    def wait(self, text: str, count: int = 1, timeout: float = 30) -> list[str]:
        return wait_until(
            lambda: (found := self.matching(text))[count - 1 :] and found,
            timeout,
            f"{count} log line(s) with {text!r}; log so far:\n{''.join(self.lines)}",
        )

    def text(self) -> str:
        return "".join(self.lines)


def statuses_start(world: RunWorld, bid: int, mid: str) -> int | None:
    client = world.server.client()
    try:
        raw = client.hget(f"node/1/backup_status/{bid}", mid)
    finally:
        client.close()
    return json.loads(raw)["start"] if isinstance(raw, str) else None


def alter(world: RunWorld, bid: int, **fields: Any) -> None:
    request = {
        "id": bid,
        "name": "Every ten seconds",
        "instances": ["mail1"],
        "schedule": "*-*-* *:*:00/10",
        "retention": 3,
        "enabled": True,
        **fields,
    }
    code, _, err = world.nsbackup(
        "--json", "backup", "alter", "--data", json.dumps(request), user="cluster"
    )
    assert code == 0, err


def prometheus_installed() -> bool:
    from nsbackup.plugins import plugin_host

    return "prometheus" in plugin_host().metric_sinks


@pytest.fixture()
def world(redis_db: RedisServer, tmp_path: Path) -> Iterator[RunWorld]:
    world = RunWorld(redis_db, tmp_path, {"mail1": "1"}).start()
    try:
        yield world
    finally:
        world.stop()


# -- the daemon, as a subprocess ----------------------------------------------------------------
def test_a_schedule_runs_twice_in_25_s_and_sigterm_ends_the_daemon_and_its_run(
    world: RunWorld,
) -> None:
    bid = world.add_schedule(["mail1"], schedule="*-*-* *:*:00/10", name="Every ten seconds")
    proc = world.popen("--json", "scheduler", "--jobs", "1", "--wait", "30", "--grace", "10")
    log = Log(proc)
    try:
        started = time.time()
        log.wait("scheduler of node 1 started: 1 schedule(s) enabled; runs with --jobs 1 --wait 30")
        log.wait(f"backup {bid} (Every ten seconds) schedule '*-*-* *:*:00/10', next elapse")
        log.wait("following schedule changes as Redis user node/1")
        # Two real backups, each recorded by its status timestamp.
        starts: set[int] = set()

        def two_runs() -> bool:
            start = statuses_start(world, bid, "mail1")
            if start:
                starts.add(start)
            return len(starts) >= 2

        # Both runs start within 25 s (the first elapse comes within 10 s); the deadline
        # leaves the second backup time to finish on a busy machine.
        wait_until(two_runs, 45, "two status timestamps")
        first, second = sorted(starts)
        assert second - started <= 25
        assert 8 <= second - first <= 12  # consecutive elapses, ten seconds apart
        finished = log.wait("run finished, exit 0", count=2)
        assert all("success, 1 of 1 module(s) ok" in line for line in finished)

        # A third run with new data to upload, so that SIGTERM finds restic at work; the
        # schedule changed to every second (an event) starts it without waiting ten seconds.
        bulk = world.modules_dir / "mail1" / "state" / "more.bin"
        bulk.write_bytes(os.urandom(40 * 1024 * 1024))
        alter(world, bid, schedule=EVERY_SECOND)
        log.wait(f"schedule changed from '*-*-* *:*:00/10' to '{EVERY_SECOND}'")
        line = log.wait("run started (pid", count=3, timeout=15)[2]
        run_pid = int(line.split("run started (pid ")[1].split(")")[0])

        def restic_at_work() -> dict[int, int]:
            tree = process_tree([run_pid])
            return tree if any(comm(pid) == "restic" for pid in tree) else {}

        tree = wait_until(restic_at_work, 20, "restic under the third run")
        assert len(tree) >= 3  # backup run -> module side (its own session) -> restic
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log.thread.join(timeout=10)
        assert "terminating 1 running backup(s)" in log.text()
        assert "scheduler stopped" in log.text()
        assert proc.stdout is not None
        last = json.loads(proc.stdout.read())  # --json: one document, its state at the stop
        assert last["runs"]["started"] >= 3 and last["schedules"][0]["id"] == bid
        wait_until(
            lambda: not any(alive(pid, start) for pid, start in tree.items()),
            5,
            "every process of the run to be gone",
        )
        bulk.unlink()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# -- the daemon in-process ------------------------------------------------------------------------
class PurgeRecorder:
    """A metric sink that records the ids it is told are enabled."""

    name = "purge-recorder"

    def __init__(self) -> None:
        self.purges: list[list[int]] = []

    def record(self, report: Any) -> None:
        pass

    def purge(self, enabled_ids: list[int]) -> None:
        self.purges.append(sorted(enabled_ids))


class RecorderPlugin:
    def __init__(self, sink: PurgeRecorder) -> None:
        self.sink = sink

    @hookimpl
    def nsbackup_register_metric_sinks(self, register: Any) -> None:
        register(self.sink)


class Running:
    """A scheduler running in a thread (``run()``), stopped at the end. An exception of the
    thread (e.g. at start) fails the test at the next :meth:`status`, with its message."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.result: list[int] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.result.append(self.scheduler.run())
        except BaseException as exc:
            self.error = exc
            raise

    def __enter__(self) -> Scheduler:
        self.thread.start()
        return self.scheduler

    def __exit__(self, *exc: object) -> None:
        self.scheduler.request_stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()

    def status(self) -> dict[str, Any]:
        if self.error is not None:
            raise AssertionError(f"the scheduler failed: {self.error!r}") from self.error
        return self.scheduler.status()


def test_a_run_still_going_is_skipped_and_disabling_stops_the_schedule_and_purges(
    world: RunWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="nsbackup.runs.scheduler")
    bid = world.add_schedule(["mail1"], schedule=EVERY_SECOND, name="Every second")
    sink = PurgeRecorder()
    cluster = Cluster.from_env(world.env(), plugins=[RecorderPlugin(sink)])
    prom = world.metrics_dir / f"backup{bid}.prom"
    running = Running(cluster.scheduler().configure(wait=60, grace=10))
    # The module is locked by "another run": the scheduler's run waits for it.
    locked = contextlib.ExitStack()
    locked.enter_context(file_lock(world.state_dir / "locks" / "module-mail1.lock"))
    with locked, running:

        def first_run() -> dict[str, Any]:
            status = running.status()
            return status if status["running"] else {}

        status = wait_until(first_run, 15, "the first run")
        assert sink.purges[0] == [bid]  # at start
        assert status["runs"]["started"] == 1
        wait_until(lambda: running.status()["runs"]["skipped"] >= 2, 10, "two skipped elapses")
        assert running.status()["runs"]["started"] == 1  # never twice at once
        skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert "is still going" in skipped[0]

        # Disabled by the cluster: the event reaches the scheduler, which drops the schedule
        # and purges the metrics of schedules no longer enabled.
        if prometheus_installed():  # the real sink removes the file (the recorder sees it)
            prom.parent.mkdir(parents=True, exist_ok=True)
            prom.write_text(f'node_backup_status{{id="{bid}",name="Every second"}} 1\n')
        purges = len(sink.purges)
        alter(world, bid, schedule=EVERY_SECOND, enabled=False, name="Every second")
        wait_until(lambda: running.status()["schedules"] == [], 10, "the schedule to go")
        wait_until(lambda: len(sink.purges) > purges, 10, "a purge")
        assert sink.purges[-1] == []
        if prometheus_installed():
            assert not prom.exists()
        assert any(
            f"backup {bid} (Every second) disabled: no longer scheduled" in r.getMessage()
            for r in caplog.records
        )

        # The lock is released: the waiting run backs up; its metrics, written after the
        # purge, are purged again when it ends; no other run starts (3+ elapses pass).
        purges = len(sink.purges)
        locked.close()
        wait_until(lambda: running.status()["runs"]["finished"] == 1, 60, "the run to end")
        finished = [r.getMessage() for r in caplog.records if "run finished" in r.getMessage()]
        assert "exit 0" in finished[0] and "success, 1 of 1 module(s) ok" in finished[0]
        wait_until(lambda: len(sink.purges) > purges, 10, "a purge after the run")
        assert sink.purges[-1] == []
        if prometheus_installed():
            assert not prom.exists()
        status = running.status()
        assert status["runs"]["started"] == 1 and status["running"] == []
    assert running.result == [0]
    assert statuses_start(world, bid, "mail1")  # the run really backed mail1 up


def seed_schedule(client: redis.Redis, calendar: str, **fields: Any) -> Schedule:
    schedule = Schedule(
        id=0,
        name=fields.pop("name", "Nightly"),
        repository="93ab8116-adc3-5458-a411-d6080ce5db2b",
        schedule=calendar,
        retention=1,
        enabled=fields.pop("enabled", True),
        instances=tuple(fields.pop("instances", ("mail1",))),
    )
    return Store(client).add_schedule(schedule)


def node_cluster(server: RedisServer, state_dir: Path, node: str = "1") -> Cluster:
    return Cluster.from_url(
        f"redis://{server.host}:{server.port}/0",
        username=f"node/{node}",
        password=PASSWORDS[f"node/{node}"],
        node_id=node,
        settings=Settings(state_dir=str(state_dir), metrics_dir=str(state_dir / "metrics")),
    )


@pytest.mark.parametrize("acls", ["nsbackup", "ns8"])
def test_schedule_events_arrive_under_both_acl_sets(
    redis_db: RedisServer, tmp_path: Path, acls: str
) -> None:
    """nsbackup's rules let a node subscribe; NS8's do not (NOPERM), and the scheduler then
    subscribes as NS8's ``default`` user, which may."""
    if acls == "ns8":
        client = ns8_acl.seed_ns8(redis_db)
    else:
        client = redis_db.client()
        seed(client)
    try:
        node = redis_db.client("node/1", PASSWORDS["node/1"])
        with pytest.raises(redis.exceptions.NoPermissionError) if acls == "ns8" else _nothing():
            pubsub = node.pubsub()
            pubsub.subscribe("cluster/event/backup-schedule-changed")
            pubsub.get_message(timeout=2)
        node.close()
        schedule = seed_schedule(client, FAR_AWAY)
        running = Running(node_cluster(redis_db, tmp_path).scheduler())
        with running:
            expected = "node/1" if acls == "nsbackup" else "default"
            wait_until(lambda: running.status()["events_user"] == expected, 15, "subscribed")
            assert running.status()["schedules"][0]["schedule"] == FAR_AWAY
            Store(client).write_schedule(
                Schedule(**{**_fields(schedule), "schedule": "2099-06-01 00:00:00"})
            )
            wait_until(
                lambda: running.status()["schedules"][0]["schedule"] == "2099-06-01 00:00:00",
                10,
                "the changed schedule",
            )
            Store(client).write_schedule(Schedule(**{**_fields(schedule), "enabled": False}))
            wait_until(lambda: running.status()["schedules"] == [], 10, "the disabled schedule")
        assert running.result == [0]
    finally:
        client.close()
        if acls == "ns8":
            ns8_acl.reset_default(redis_db)


def _fields(schedule: Schedule) -> dict[str, Any]:
    import attrs

    return attrs.asdict(schedule, recurse=False)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def test_the_scheduler_catches_up_after_redis_comes_back(tmp_path: Path) -> None:
    with RedisServer() as server:
        client = server.client()
        seed(client)
        seed_schedule(client, FAR_AWAY)
        client.close()
        running = Running(node_cluster(server, tmp_path).scheduler())
        with running:
            wait_until(lambda: running.status()["events_user"] == "node/1", 15, "subscribed")
            server.stop(keep_dir=True)
            wait_until(lambda: not running.status()["redis_connected"], 30, "Redis lost")
            assert running.status()["schedules"][0]["schedule"] == FAR_AWAY  # kept meanwhile
            server.start()  # an empty database: the cluster is written again, changed
            client = server.client()
            seed(client)
            seed_schedule(client, "2099-06-01 00:00:00")
            client.close()
            wait_until(lambda: running.status()["redis_connected"], 30, "Redis back")
            wait_until(
                lambda: running.status()["schedules"][0]["schedule"] == "2099-06-01 00:00:00",
                10,
                "the change made while Redis was away",
            )
        assert running.result == [0]


def test_a_run_missed_while_stopped_happens_at_start(
    redis_db: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Like a timer with Persistent=true: the last trigger is kept; a schedule whose next
    elapse after it has passed runs at once. Node 2 has no module of the schedule, so its run
    ends at once (exit 0)."""
    caplog.set_level("INFO", logger="nsbackup.runs.scheduler")
    client = redis_db.client()
    seed(client)
    missed = seed_schedule(client, "*-*-* 01:00:00", name="Missed")
    fresh = seed_schedule(client, "*-*-* 02:00:00", name="Never triggered")
    client.close()
    stamps = tmp_path / "scheduler"
    stamps.mkdir()
    two_days_ago = time.time() - 2 * 86400
    (stamps / f"backup{missed.id}.stamp").write_text(f"{two_days_ago}\n")
    (stamps / "backup99.stamp").write_text(f"{two_days_ago}\n")  # a schedule that is gone
    began = time.time()
    running = Running(node_cluster(redis_db, tmp_path, node="2").scheduler())
    with running:
        wait_until(lambda: running.status()["runs"]["finished"] == 1, 30, "the missed run")
        status = running.status()
        assert status["runs"]["started"] == 1
        by_id = {s["id"]: s for s in status["schedules"]}
        assert by_id[missed.id]["last_trigger"] >= began
        assert by_id[fresh.id]["last_trigger"] >= began  # counted from the start
        assert by_id[missed.id]["next_elapse"] > time.time()
    assert float((stamps / f"backup{missed.id}.stamp").read_text()) >= began
    assert not (stamps / f"backup{fresh.id}.stamp").exists()
    assert not (stamps / "backup99.stamp").exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any("missed while stopped: runs now" in m for m in messages)
    assert any(f"backup {missed.id} (Missed): run finished, exit 0" in m for m in messages)


# -- process trees and the command line ----------------------------------------------------------
TREE = """
import subprocess, sys, time
# a child in its own session (like the module side), which starts a grandchild that ignores
# SIGTERM
subprocess.Popen(
    [sys.executable, "-c",
     "import signal, subprocess, sys, time;"
     "subprocess.Popen([sys.executable, '-c', 'import signal, time;"
     " signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']);"
     "time.sleep(120)"],
    start_new_session=True,
)
time.sleep(120)
"""


def test_terminate_trees_ends_every_process_even_in_other_sessions() -> None:
    import sys

    root = subprocess.Popen([sys.executable, "-c", TREE])
    try:

        def ready() -> dict[int, int]:
            tree = process_tree([root.pid])
            return tree if len(tree) == 3 and any(ignores_sigterm(p) for p in tree) else {}

        tree = wait_until(ready, 20, "three processes, one ignoring SIGTERM")
        began = time.monotonic()
        terminate_trees([root.pid], grace=1.0)
        assert root.wait(timeout=10) == -signal.SIGTERM
        wait_until(lambda: not any(alive(pid, start) for pid, start in tree.items()), 5, "all gone")
        assert time.monotonic() - began >= 1.0  # the one ignoring SIGTERM needed SIGKILL
    finally:
        for pid in process_tree([root.pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        root.wait(timeout=10)


def test_the_command_fails_clearly_without_a_node_or_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSBACKUP_", "REDIS_"))}
    env.pop("NODE_ID", None)
    env["NSBACKUP_STATE_DIR"] = str(tmp_path)
    base = [NSBACKUP, "--redis", "redis://127.0.0.1:9/0"]
    no_node = subprocess.run(
        [*base, "scheduler"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert no_node.returncode == 2
    assert "node id is required" in no_node.stderr
    no_redis = subprocess.run(
        [*base, "--node", "1", "scheduler"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert no_redis.returncode == 5
    assert "Redis unreachable" in no_redis.stderr
    bad = subprocess.run(
        [*base, "--node", "1", "scheduler", "--jobs", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
