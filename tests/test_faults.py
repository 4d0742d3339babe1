"""Faults during a running ``nsbackup backup run``, against the real components: a gateway child
killed (rclone rcd, an HAProxy worker, the HAProxy master), Redis stopped, a destination that
hangs. Each run hit by a fault must end within a bound with a clear status and exit code, and
lose nothing the next run cannot make good (``restic check`` as the node stays clean).

The moment of each fault is found from the processes and the repository (the module's
``restic backup`` running and holding its lock), never from sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from nsbackup.gateway.context import REST_ACCEPT
from nsbackup.runs.report import MODULE_FAILURES
from tests.cluster_seed import module_uuid
from tests.gateway_fixture import GatewayProcess
from tests.redis_server import RedisServer
from tests.run_world import GatewayProcesses, RunWorld, module_password, process_table
from tests.servers import RcloneWebdavServer

MEGABYTES = 24
"""Per module: the backup takes seconds, so a fault finds it running."""
HEAL_TIMEOUT = 10.0
"""The gateway serves again this long after one of its children died (it restarts a child
within seconds)."""
RUN_BOUND = 90.0
"""A run hit by a fault ends within this (restic 0.14 retries a dead server for ~1 minute)."""
HEALTH_CHECK_BOUND = 30.0
"""The run's health check of the destination (nsbackup.runs.node: 30 s to answer)."""


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunWorld]:
    redis_server.flush()
    world = RunWorld(redis_server, tmp_path_factory.mktemp("faults"), {}, megabytes=MEGABYTES)
    world.start()
    try:
        yield world
    finally:
        world.stop()
        redis_server.flush()


def status_of(world: RunWorld, bid: int) -> dict[str, Any]:
    client = world.server.client()
    try:
        raw = client.hgetall(f"node/1/backup_status/{bid}")
    finally:
        client.close()
    return {str(mid): json.loads(value) for mid, value in raw.items()}


def check_clean(world: RunWorld, *mids: str) -> None:
    """``restic check`` as the node finds every repository sound."""
    for mid in mids:
        checked = world.restic_as_node(mid, "check")
        assert checked.returncode == 0, f"{mid}: {checked.stdout[-1500:]}{checked.stderr[-1500:]}"
        assert "no errors were found" in checked.stdout, checked.stdout


def serves(world: RunWorld, mid: str) -> bool:
    """The whole path answers: HAProxy authenticates ``mid`` and rclone answers for its
    repository (200, or 404 before its first backup)."""
    assert world.gateway is not None
    url = f"{world.gateway.url}/{world.destination}/{mid.rstrip('0123456789')}/"
    url += f"{module_uuid(mid)}/config"
    try:
        answer = requests.get(
            url,
            auth=(f"module/{mid}", module_password(mid)),
            headers={"Accept": REST_ACCEPT},
            timeout=(2, 5),
        )
    except requests.RequestException:
        return False
    return answer.status_code in (200, 404)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        time.sleep(0.05)


def restart_gateway_if_broken(world: RunWorld, mid: str) -> None:
    """Leave a serving gateway for the next test: start it again when a fault broke it."""
    assert world.gateway is not None
    processes = world.gateway_processes()
    whole = processes.rclone and processes.haproxy_master and processes.haproxy_workers
    if whole and serves(world, mid):
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        world.gateway.stop()
    world.gateway = GatewayProcess(world.server, "1", world.gateway.port, world.base).start()
    wait_until(lambda: serves(world, mid), 30, f"the restarted gateway to serve {mid}")


class Run:
    """``nsbackup --json backup run`` in the background, its output read as it comes."""

    def __init__(self, world: RunWorld, bid: int, *args: str, extra: dict[str, str]) -> None:
        self.proc = world.popen("--json", "backup", "run", str(bid), *args, extra=extra)
        self.started = time.monotonic()
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return "".join(self.err)

    def finish(self, timeout: float) -> tuple[int, dict[str, Any], float]:
        """Wait for the run (at most ``timeout`` seconds): exit code, report, duration."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the run still runs after {timeout:g} s:\n{self.stderr()[-2000:]}"
            ) from None
        elapsed = time.monotonic() - self.started
        for reader in self._readers:
            reader.join(timeout=10)
        text = "".join(self.out)
        assert text.strip(), f"no report (exit {code}):\n{self.stderr()[-2000:]}"
        report: dict[str, Any] = json.loads(text)
        return code, report, elapsed

    def stop(self) -> None:
        """End the run if it still runs (SIGTERM stops its module sides too)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def assert_clear(world: RunWorld, bid: int, code: int, report: dict[str, Any]) -> None:
    """The run's outcome says what happened: its exit code is the report's, every failed
    module says why, and every module's status in Redis is this run's."""
    assert code == report["exit_code"] and code in (0, 1, 3), report
    statuses = status_of(world, bid)
    for module in report["modules"]:
        if not module["success"]:
            assert module["failure"] in MODULE_FAILURES and module["message"], module
        status = statuses[module["module_id"]]
        assert status["start"] == module["start"] and status["failure"] == module["failure"]
        assert (status["errors"] == 0) == module["success"]


# -- a gateway child killed ---------------------------------------------------------------------


def kill_during_a_run(world: RunWorld, tag: str, pick: Callable[[GatewayProcesses], int]) -> None:
    """Kill the gateway child ``pick`` chooses while a backup is under way: the gateway
    serves again, the run ends within its bound with a clear outcome (the backup under way
    completes), the next run succeeds and every repository checks clean."""
    mids = [f"{tag}mail1", f"{tag}web1"]
    world.add_modules(*mids)
    bid = world.add_schedule(mids, name=f"fault {tag}")
    before = world.gateway_processes()
    victim = pick(before)
    # HAProxy's workers end with their master: the gateway is down once they are gone
    gone = [victim, *(before.haproxy_workers if victim == before.haproxy_master else [])]
    run = Run(world, bid, "--jobs", "2", extra={})
    try:
        restic = world.wait_backing_up(run.pid, mids[0])
        os.kill(victim, signal.SIGKILL)
        assert Path(f"/proc/{restic}").exists(), "the backup ended before the fault"
        wait_until(
            lambda: not set(gone) & set(process_table()), 10, f"{gone} to be gone after the kill"
        )
        wait_until(lambda: serves(world, mids[0]), HEAL_TIMEOUT, "the gateway to serve again")
        code, report, _ = run.finish(RUN_BOUND)
        assert_clear(world, bid, code, report)
        # restic retried across the restart: the backup under way at the fault completed
        assert report["modules"][0]["success"], report["modules"][0]
    finally:
        run.stop()
        restart_gateway_if_broken(world, mids[0])
    code, report, _ = Run(world, bid, "--jobs", "2", extra={}).finish(RUN_BOUND)
    assert code == 0 and all(m["success"] for m in report["modules"]), report
    check_clean(world, *mids)


def test_rclone_killed_during_a_run_ends_it_cleanly_and_the_next_run_is_sound(
    world: RunWorld,
) -> None:
    kill_during_a_run(world, "rcd", lambda p: p.rclone[0])


def test_an_haproxy_worker_killed_during_a_run_ends_it_cleanly_and_the_next_run_is_sound(
    world: RunWorld,
) -> None:
    kill_during_a_run(world, "worker", lambda p: p.haproxy_workers[0])


def test_the_haproxy_master_killed_during_a_run_ends_it_cleanly_and_the_next_run_is_sound(
    world: RunWorld,
) -> None:
    def master(processes: GatewayProcesses) -> int:
        assert processes.haproxy_master is not None
        return processes.haproxy_master

    kill_during_a_run(world, "master", master)


# -- a destination that hangs -------------------------------------------------------------------


class StallingProxy:
    """A loopback TCP proxy in front of a real server that can be told to hang: from then on
    it accepts connections and never answers, and forwards nothing more on those it had (a
    NAS that froze, a route that black-holes)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.stalled = 0
        """Requests (or connections) that arrived while hanging: the destination was asked."""
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            if not self.flowing.is_set():
                self.stalled += 1
                continue  # held open, never read, never answered
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.append(server)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.flowing.is_set():
                    self.stalled += 1
                    self.flowing.wait()  # hanging: what arrived is not passed on
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def hang(self) -> None:
        self.flowing.clear()

    def recover(self) -> None:
        """Answer again: the connections held so far are reset, new ones are served."""
        with self._lock:
            held, self._sockets = self._sockets, []
        for sock in held:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                sock.close()
        self.flowing.set()

    def close(self) -> None:
        self.listener.close()
        self.recover()


def test_a_hanging_destination_fails_its_run_within_the_bound_and_the_other_run_succeeds(
    world: RunWorld, tmp_path: Path
) -> None:
    """Two schedules run at once through the one gateway: ``hanging`` backs up to a WebDAV
    destination that stopped answering, ``healthy`` to the node's disk. The hanging one fails
    its module within the health check's bound (not restic's minutes of retries), the healthy
    one is not held up. Once the destination answers again, its next run succeeds."""
    with RcloneWebdavServer(tmp_path / "dav", "davuser", "dav-secret-pw") as dav:
        proxy = StallingProxy((dav.host, dav.port))
        try:
            uid = world.add_destination(
                {
                    "provider": "webdav",
                    "url": f"webdav:http://127.0.0.1:{proxy.port}/nsbackup",
                    "parameters": {"webdav_user": dav.user, "webdav_pass": dav.password},
                }
            )
            world.add_modules("stuckmail1", "freemail1")
            hanging = world.add_schedule(["stuckmail1"], repository=uid, name="hanging")
            healthy = world.add_schedule(["freemail1"], name="healthy")
            proxy.hang()
            stuck = Run(world, hanging, extra={})
            free = Run(world, healthy, extra={})
            try:
                free_code, free_report, free_elapsed = free.finish(RUN_BOUND)
                code, report, elapsed = stuck.finish(HEALTH_CHECK_BOUND + 30)
            finally:
                stuck.stop()
                free.stop()
            assert proxy.stalled > 0  # the destination was asked, and hung
            assert free_code == 0 and free_report["modules"][0]["success"], free_report
            assert free_elapsed < elapsed, "the healthy run waited for the hanging one"
            assert code == 1 and report["outcome"] == "failure", report
            module = report["modules"][0]
            assert module["failure"] == "unreachable" and uid in module["message"], module
            assert elapsed < HEALTH_CHECK_BOUND + 30, elapsed
            status = status_of(world, hanging)["stuckmail1"]
            assert status["failure"] == "unreachable" and status["errors"] >= 1
            # the destination answers again: its next run uses it at once
            proxy.recover()
            code, report, _ = Run(world, hanging, extra={}).finish(RUN_BOUND)
            assert code == 0 and report["modules"][0]["success"], report
            checked = world.restic_as_node("stuckmail1", "check", destination=uid)
            assert checked.returncode == 0, checked.stderr
        finally:
            proxy.close()


# -- Redis stopped ------------------------------------------------------------------------------


class RedisOutage:
    """Redis stopped during a run, then started again with what it held: its data (saved
    just before it stops) and its ACL users."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.users: list[str] = []
        self.down = False

    def stop(self) -> None:
        client = self.server.client()
        try:
            self.users = [str(line) for line in client.acl_list()]
            client.save()
        finally:
            client.close()
        self.server.stop(keep_dir=True)
        self.down = True

    def restore(self) -> None:
        if not self.down:
            return
        self.server.start()  # loads the saved dump.rdb from its directory
        client = self.server.client()
        try:
            for line in self.users:
                _, name, *rules = line.split()
                client.execute_command("ACL", "SETUSER", name, *rules)  # type: ignore[no-untyped-call]
        finally:
            client.close()
        self.down = False


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis of these tests' own: they stop it."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis_world(
    own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunWorld]:
    world = RunWorld(own_redis, tmp_path_factory.mktemp("redis-faults"), {}, megabytes=MEGABYTES)
    world.start()
    try:
        yield world
    finally:
        world.stop()


def stop_redis_during_a_run(
    world: RunWorld, mids: list[str], extra: dict[str, str]
) -> tuple[RedisOutage, Run, int]:
    """Start a run of ``mids`` (one at a time) and stop Redis while the first one's backup
    is under way: the second one starts without Redis."""
    world.add_modules(*mids)
    bid = world.add_schedule(mids, name=f"redis {mids[0]}")
    outage = RedisOutage(world.server)
    run = Run(world, bid, "--jobs", "1", extra=extra)
    try:
        world.wait_backing_up(run.pid, mids[0])
        outage.stop()
    except BaseException:
        run.stop()
        outage.restore()
        raise
    return outage, run, bid


def test_redis_stopped_during_a_run_gets_every_status_written_once_it_is_back(
    redis_world: RunWorld,
) -> None:
    world = redis_world
    mids = ["backmail1", "backweb1"]
    outage, run, bid = stop_redis_during_a_run(world, mids, {})
    try:
        wait_until(
            lambda: all(f"status of {mid} not written" in run.stderr() for mid in mids),
            RUN_BOUND,
            "the run to find Redis gone",
        )
        outage.restore()
        code, report, _ = run.finish(RUN_BOUND)
    finally:
        run.stop()
        outage.restore()
    by_id = {m["module_id"]: m for m in report["modules"]}
    assert code == 3 and report["outcome"] == "partial", run.stderr()
    assert by_id[mids[0]]["success"]  # its backup went on through the gateway
    assert by_id[mids[1]]["failure"] == "fatal" and "Redis" in by_id[mids[1]]["message"]
    assert "status_not_written" not in report["notes"], report["notes"]
    assert_clear(world, bid, code, report)
    status = status_of(world, bid)
    assert status[mids[0]]["snapshot_id"] == by_id[mids[0]]["snapshot_id"] != ""
    assert all(m["metadata_uploaded"] for m in report["modules"])
    check_clean(world, mids[0])
    code, report, _ = Run(world, bid, extra={}).finish(RUN_BOUND)
    assert code == 0, report
    assert all(s["errors"] == 0 for s in status_of(world, bid).values())


def test_redis_down_until_the_run_ends_exits_5_and_the_metrics_keep_the_failure(
    redis_world: RunWorld,
) -> None:
    world = redis_world
    mids = ["gonemail1", "goneweb1"]
    outage, run, bid = stop_redis_during_a_run(world, mids, {"NSBACKUP_STATUS_RETRY": "2"})
    try:
        code, report, _ = run.finish(RUN_BOUND)
    finally:
        run.stop()
        outage.restore()
    assert code == 5, run.stderr()
    assert report["notes"]["status_not_written"] == mids
    assert f"status of {', '.join(mids)} not written to Redis (tried for 2 s)" in run.stderr()
    assert status_of(world, bid) == {}  # Redis came back after the run: nothing was written
    # the failure is in the metrics file, and what the gateway kept is sound
    metrics = (world.metrics_dir / f"backup{bid}.prom").read_text()
    assert f'node_backup_status{{id="{bid}",name="redis {mids[0]}"}} 0' in metrics, metrics
    assert report["modules"][0]["success"] and report["modules"][0]["metadata_uploaded"]
    check_clean(world, mids[0])


def test_a_destination_that_hangs_mid_backup_ends_the_module_within_the_stall_bound(
    world: RunWorld, tmp_path: Path
) -> None:
    """The destination answered its health check, then froze in the middle of the upload:
    restic's progress stands still, the module side stops it after the stall bound
    (``NSBACKUP_RESTIC_STALL``, 5 s here), the node does not wait on it for its stats, and the
    run ends with the module failed instead of hanging for hours."""
    with RcloneWebdavServer(tmp_path / "dav", "davuser", "dav-secret-pw") as dav:
        proxy = StallingProxy((dav.host, dav.port))
        try:
            uid = world.add_destination(
                {
                    "provider": "webdav",
                    "url": f"webdav:http://127.0.0.1:{proxy.port}/frozen",
                    "parameters": {"webdav_user": dav.user, "webdav_pass": dav.password},
                }
            )
            world.add_modules("frozenmail1")
            bid = world.add_schedule(["frozenmail1"], repository=uid, name="frozen")
            run = Run(world, bid, extra={"NSBACKUP_RESTIC_STALL": "5"})
            locks = dav.root / "frozen" / "frozenmail" / module_uuid("frozenmail1") / "locks"
            try:
                wait_until(
                    lambda: locks.is_dir() and any(locks.iterdir()),
                    60,
                    "frozenmail1's backup to hold its lock on the destination",
                )
                proxy.hang()
                code, report, elapsed = run.finish(HEALTH_CHECK_BOUND + 60)
            finally:
                run.stop()
            assert proxy.stalled > 0
            assert code == 1 and report["outcome"] == "failure", report
            module = report["modules"][0]
            assert not module["success"]
            assert "no progress for 5 s" in module["message"] or module["failure"] == "unreachable"
            assert elapsed < HEALTH_CHECK_BOUND + 60, elapsed
            assert status_of(world, bid)["frozenmail1"]["errors"] >= 1
        finally:
            proxy.close()
