"""Faults during a running ``nsbackup backup run``, against the real components: Redis
stopped. Each run hit by a fault must end within a bound with a clear status and exit code, and
lose nothing the next run cannot make good (``restic check`` as the node stays clean).

The moment of each fault is found from the processes and the repository (the module's
``restic backup`` running and holding its lock), never from sleeps.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nsbackup.runs.report import MODULE_FAILURES
from tests.redis_server import RedisServer
from tests.run_world import RunWorld

MEGABYTES = 24
"""Per module: the backup takes seconds, so a fault finds it running."""
RUN_BOUND = 90.0
"""A run hit by a fault ends within this (restic 0.14 retries a dead server for ~1 minute)."""


def add_modules(world: RunWorld, *mids: str) -> None:
    client = world.server.client()
    try:
        for mid in mids:
            world.add_module(client, mid)
    finally:
        client.close()


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


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        time.sleep(0.05)


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
    add_modules(world, *mids)
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
