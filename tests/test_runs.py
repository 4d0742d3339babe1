"""``nsbackup backup run``: real modules backed up through a real gateway, with each identity's
own credentials (modules via the ``local`` runner, the node for stats, retention, status and
metadata), under restic 0.14 and 0.18."""

from __future__ import annotations

import filecmp
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import nsbackup
from nsbackup import Cluster
from tests import restic_versions
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.redis_server import RedisServer
from tests.restic_versions import Restic
from tests.run_world import RunWorld, module_password
from tests.servers import RcloneS3Server
from tests.test_store import Events

restic_bin = restic_versions.restic_bin


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunWorld]:
    redis_server.flush()
    world = RunWorld(redis_server, tmp_path_factory.mktemp("runs"), {}).start()
    try:
        yield world
    finally:
        world.stop()
        redis_server.flush()


def snapshots(world: RunWorld, mid: str, **kwargs: Any) -> list[dict[str, Any]]:
    listed = world.restic_as_node(mid, "snapshots", "--json", **kwargs)
    assert listed.returncode == 0, listed.stderr
    result: list[dict[str, Any]] = json.loads(listed.stdout)
    return result


def restore_equal(world: RunWorld, mid: str, target: Path, **kwargs: Any) -> None:
    """The latest snapshot, restored as the node, equals the module's state/ byte for byte."""
    done = world.restic_as_node(mid, "restore", "latest", "--target", str(target), **kwargs)
    assert done.returncode == 0, done.stderr
    state = world.modules_dir / mid / "state"
    restored = target / "state"  # paths are relative to the module's directory
    for path in state.rglob("*"):
        if path.is_file() and path.name != ".module-backup.lock" and path.suffix != ".tmp":
            twin = restored / path.relative_to(state)
            assert twin.is_file() and filecmp.cmp(path, twin, shallow=False), path


def status_of(world: RunWorld, bid: int) -> dict[str, Any]:
    client = world.server.client()
    try:
        raw = client.hgetall(f"node/1/backup_status/{bid}")
    finally:
        client.close()
    return {mid: json.loads(value) for mid, value in raw.items()}


def node_get(world: RunWorld, path: str) -> requests.Response:
    assert world.gateway is not None
    return requests.get(
        f"{world.gateway.url}/{path}", auth=("node/1", PASSWORDS["node/1"]), timeout=10
    )


# -- the main job -------------------------------------------------------------------------------


def test_run_backs_up_every_local_module(
    world: RunWorld, restic_bin: Restic, tmp_path: Path
) -> None:
    tag = restic_bin.name.rsplit(".", 1)[1]  # "14" or "18"
    mids = [f"mail{tag}", f"webtop{tag}", f"nextcloud{tag}"]
    world.add_modules(*mids)
    (world.modules_dir / mids[0] / "etc").mkdir()
    (world.modules_dir / mids[0] / "extra").mkdir()
    (world.modules_dir / mids[0] / "extra" / "kept.txt").write_text("included\n")
    (world.modules_dir / mids[0] / "etc" / "state-include.conf").write_text("extra\n")
    (world.modules_dir / mids[0] / "etc" / "state-exclude.conf").write_text("*.tmp\n")
    (world.modules_dir / mids[0] / "state" / "scratch.tmp").write_text("excluded\n")
    bid = world.add_schedule(mids, retention=1, name=f"Restic {tag}")
    env = {"NSBACKUP_RESTIC": restic_bin.binary}
    events = Events(world.server.client())

    code, report, err = world.run(bid, extra=env)
    assert code == 0, err
    assert report["outcome"] == "success" and report["exit_code"] == 0
    assert [m["module_id"] for m in report["modules"]] == mids
    for module in report["modules"]:
        assert module["success"] and module["restic_exit_code"] == 0, module
        assert module["added_bytes"] > 1_000_000 and module["metadata_uploaded"]
    kw = {"binary": restic_bin.binary}
    for mid in mids:
        listed = snapshots(world, mid, **kw)
        assert len(listed) == 1
        restore_equal(world, mid, tmp_path / f"restore-{mid}", **kw)
    # include and exclude lists were honoured, and ui_name travelled as a DUMP payload
    paths = world.restic_as_node(mids[0], "ls", "latest", **kw).stdout
    assert "/extra/kept.txt" in paths and "scratch.tmp" not in paths
    assert "/state/ui_name.dump" in paths

    status = status_of(world, bid)
    assert set(status) == set(mids)
    for entry in status.values():
        assert entry["errors"] == 0 and entry["exit_code"] == 0
        assert entry["snapshots_count"] == 1 and entry["total_file_count"] > 30
        assert entry["end"] >= entry["start"] > time.time() - 300
    messages = events.collect(3)
    assert sorted(messages, key=lambda m: m[1]["module_id"]) == sorted(
        (
            ("node/1/event/backup-status-changed", {"node_id": 1, "backup_id": bid, "module_id": m})
            for m in mids
        ),
        key=lambda m: m[1]["module_id"],
    )
    for mid in mids:
        app = mid.rstrip("0123456789")
        meta = node_get(world, f"{world.destination}/{app}/{module_uuid(mid)}.json").json()
        assert set(meta) == {
            "module_id",
            "module_ui_name",
            "node_fqdn",
            "cluster_uuid",
            "uuid",
            "timestamp",
            "success",
        }
        assert meta["module_id"] == mid and meta["uuid"] == module_uuid(mid)
        assert meta["module_ui_name"] == f"UI {mid}" and meta["success"] is True
    listed = world.nsbackup("--json", "backup", "list", user="cluster")[1]
    item = next(b for b in listed["backups"] if b["id"] == bid)
    assert all(i["status"]["success"] for i in item["instances"])

    # a second run keeps one snapshot (retention 1), a new one
    first = snapshots(world, mids[1], **kw)[0]["id"]
    (world.modules_dir / mids[1] / "state" / "docs" / "note0.txt").write_text("changed\n")
    code, report, err = world.run(bid, "--jobs", "2", extra=env)
    assert code == 0, err
    after = snapshots(world, mids[1], **kw)
    assert len(after) == 1 and after[0]["id"] != first
    assert all(m["retention_applied"] for m in report["modules"])
    restore_equal(world, mids[1], tmp_path / "second", **kw)


def test_run_on_an_s3_destination(world: RunWorld, tmp_path: Path) -> None:
    (tmp_path / "s3" / "bucket").mkdir(parents=True)
    with RcloneS3Server(tmp_path / "s3", "AKRUNS", "secret-runs") as s3:
        uid = world.add_destination(
            {
                "provider": "generic-s3",
                "url": f"s3:{s3.endpoint}/bucket/ns8",
                "parameters": {
                    "aws_access_key_id": s3.access_key,
                    "aws_secret_access_key": s3.secret_key,
                },
            }
        )
        world.add_modules("roundcube1")
        bid = world.add_schedule(["roundcube1"], repository=uid)
        code, report, err = world.run(bid)
        assert code == 0, err
        assert report["modules"][0]["success"]
        assert len(snapshots(world, "roundcube1", destination=uid)) == 1
        stored = list((tmp_path / "s3" / "bucket" / "ns8" / "roundcube").rglob("config"))
        assert len(stored) == 1  # the data really is in the bucket
        restore_equal(world, "roundcube1", tmp_path / "r", destination=uid)
    # the destination is down now: every module fails at once, with a clear message
    started = time.monotonic()
    code, report, err = world.run(bid)
    assert time.monotonic() - started < 60
    assert code == 1 and report["outcome"] == "failure"
    module = report["modules"][0]
    assert module["failure"] == "unreachable" and uid in module["message"]
    status = status_of(world, bid)["roundcube1"]
    assert status["errors"] >= 1 and status["failure"] == "unreachable"


# -- identities ---------------------------------------------------------------------------------


def test_the_module_side_uses_the_modules_own_credentials(world: RunWorld) -> None:
    world.add_modules("sogo1", "ejabberd1")
    bid = world.add_schedule(["sogo1"])
    agent = world.modules_dir / "sogo1" / "state" / "agent.env"
    original = agent.read_text()
    try:
        # sogo1's directory holding ejabberd1's credentials: the gateway lets ejabberd1
        # touch only its own repository, so sogo1's backup is refused
        agent.write_text(
            f"REDIS_USER=module/ejabberd1\nREDIS_PASSWORD={module_password('ejabberd1')}\n"
        )
        code, report, err = world.run(bid)
        assert code == 1, err
        module = report["modules"][0]
        assert not module["success"] and module["restic_exit_code"] not in (None, 0)
        assert "403" in module["message"] or "Forbidden" in module["message"], module
        config = f"{world.destination}/sogo/{module_uuid('sogo1')}/config"
        assert node_get(world, config).status_code == 404  # nothing was created
        # and the credentials file must be private
        agent.write_text(original)
        os.chmod(agent, 0o644)
        code, report, err = world.run(bid)
        assert code == 1 and "chmod 600" in report["modules"][0]["message"]
    finally:
        agent.write_text(original)
        os.chmod(agent, 0o600)
    code, report, err = world.run(bid)
    assert code == 0, err
    assert len(snapshots(world, "sogo1")) == 1


# -- failures -----------------------------------------------------------------------------------


def test_failing_modules_are_reported_and_the_others_succeed(world: RunWorld) -> None:
    world.add_modules("fine1", "partial1", "badpw1", "locked1")
    # partial1: a source that cannot be read -> restic exit 3
    etc = world.modules_dir / "partial1" / "etc"
    etc.mkdir()
    (etc / "state-include.conf").write_text("/proc/self/mem\n")
    # badpw1: its agent.env holds a wrong password -> it cannot even log in
    agent = world.modules_dir / "badpw1" / "state" / "agent.env"
    agent.write_text("REDIS_USER=module/badpw1\nREDIS_PASSWORD=not-the-password\n")
    # locked1: a repository made with another Restic password -> restic 12 / "wrong password"
    from nsbackup.restic import restic_env, run_restic

    assert world.gateway is not None
    other = restic_env(
        repository_path=f"{world.destination}/locked/{module_uuid('locked1')}",
        user="node/1",
        password=PASSWORDS["node/1"],
        restic_password="another-restic-password",
        gateway_url=world.gateway.url,
    )
    assert run_restic(["init"], other).returncode == 0
    bid = world.add_schedule(["fine1", "partial1", "badpw1", "locked1"])
    code, report, err = world.run(bid)
    assert code == 3, err
    assert report["outcome"] == "partial"
    by_id = {m["module_id"]: m for m in report["modules"]}
    assert by_id["fine1"]["success"]
    assert by_id["partial1"]["failure"] == "partial" and by_id["partial1"]["restic_exit_code"] == 3
    assert "could not be read" in by_id["partial1"]["message"]
    assert by_id["badpw1"]["failure"] in ("fatal", "runner")
    assert "authentication" in by_id["badpw1"]["message"].lower()
    assert by_id["locked1"]["failure"] == "wrong_password"
    status = status_of(world, bid)
    assert status["fine1"]["errors"] == 0
    for mid in ("partial1", "badpw1", "locked1"):
        assert status[mid]["errors"] >= 1 and status[mid]["failure"] == by_id[mid]["failure"]
        meta = node_get(
            world, f"{world.destination}/{mid.rstrip('0123456789')}/{module_uuid(mid)}.json"
        )
        assert meta.status_code == 200 and meta.json()["success"] is False


class RaisingSink:
    name = "raising"

    def record(self, report: Any) -> None:
        raise RuntimeError("the sink is broken")


class RaisingSinkPlugin:
    __name__ = "raising-sink"

    @nsbackup.hookimpl
    def nsbackup_register_metric_sinks(self, register: Any) -> None:
        register(RaisingSink())


class Recorder:
    __name__ = "recorder"

    def __init__(self) -> None:
        self.reports: list[Any] = []
        self.contexts: list[Any] = []

    @nsbackup.hookimpl
    def nsbackup_before_run(self, context: Any) -> None:
        self.contexts.append(context)
        context.upload("before-run-probe.txt", b"uploaded by a plugin", "text/plain")
        context.note("recorder", {"leader": context.leader})

    @nsbackup.hookimpl
    def nsbackup_after_run(self, report: Any) -> None:
        self.reports.append(report)


def test_a_broken_sink_never_fails_the_run_and_hooks_see_it(world: RunWorld) -> None:
    world.add_modules("sinky1")
    bid = world.add_schedule(["sinky1"])
    recorder = Recorder()
    settings = nsbackup.Settings.from_env(world.env())
    cluster = Cluster.from_settings(settings, plugins=[RaisingSinkPlugin(), recorder])
    report = cluster.runs.run(bid)
    assert report["exit_code"] == 0 and report["modules"][0]["success"]
    assert report["sink_failures"] == {"raising": "RuntimeError: the sink is broken"}
    assert report["notes"]["recorder"] == {"leader": True}
    assert [r.backup_id for r in recorder.reports] == [bid]
    assert recorder.reports[0].sink_failures == {"raising": "RuntimeError: the sink is broken"}
    assert recorder.contexts[0].schedule.id == bid and recorder.contexts[0].node_id == "1"
    uploaded = node_get(world, f"{world.destination}/before-run-probe.txt")
    assert uploaded.status_code == 200 and uploaded.content == b"uploaded by a plugin"


# -- locks and jobs -----------------------------------------------------------------------------


def wait_for_lock(world: RunWorld, name: str, pid: int, timeout: float = 60) -> None:
    path = world.state_dir / "locks" / name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.read_text().strip() == str(pid):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{name} never held by {pid}")


def test_the_same_backup_never_runs_twice_at_once(world: RunWorld) -> None:
    world.add_modules("twice1")
    bid = world.add_schedule(["twice1"])
    first = world.popen("--json", "backup", "run", str(bid))
    try:
        wait_for_lock(world, f"backup-{bid}.lock", first.pid)
        started = time.monotonic()
        code, out, err = world.run(bid)
        assert code == 4 and time.monotonic() - started < 10
        assert f"pid {first.pid}" in err and out["error"] == "busy"
    finally:
        assert first.wait(120) == 0


def test_a_module_held_by_another_schedule_is_waited_for_and_taken_at_once(world: RunWorld) -> None:
    world.add_modules("shared1")
    one = world.add_schedule(["shared1"], name="one")
    two = world.add_schedule(["shared1"], name="two")
    first = world.popen("--json", "backup", "run", str(one))
    try:
        wait_for_lock(world, "module-shared1.lock", first.pid)
        code, second, err = world.run(two)
    finally:
        out, _ = first.communicate(timeout=120)
    assert code == 0, err
    held = json.loads(out)["modules"][0]
    waited = second["modules"][0]
    assert waited["waited"] > 0.5  # it really waited for the first run
    handover = waited["locked_at"] - held["unlocked_at"]
    assert 0 <= handover < 1.0, handover


def test_a_module_still_locked_at_the_deadline_fails_like_any_failure(world: RunWorld) -> None:
    from nsbackup.runs.locks import file_lock

    world.add_modules("stuck1", "free1")
    bid = world.add_schedule(["stuck1", "free1"])
    with file_lock(world.state_dir / "locks" / "module-stuck1.lock"):
        code, report, err = world.run(bid, "--wait", "2")
    assert code == 3, err
    stuck = next(m for m in report["modules"] if m["module_id"] == "stuck1")
    assert stuck["failure"] == "still_locked"
    assert "still locked after 2 s" in stuck["message"] and f"pid {os.getpid()}" in stuck["message"]
    assert status_of(world, bid)["stuck1"]["failure"] == "still_locked"
    meta = node_get(world, f"{world.destination}/stuck/{module_uuid('stuck1')}.json")
    assert meta.json()["success"] is False


def test_a_run_waiting_for_a_module_stops_at_once_on_sigterm(world: RunWorld) -> None:
    """The wait for a module's lock ends with the run: with the default --wait a stop took
    up to an hour (the lock was waited for in a worker thread the signal did not reach)."""
    import signal

    from nsbackup.runs.locks import file_lock

    world.add_modules("held1")
    bid = world.add_schedule(["held1"])
    with file_lock(world.state_dir / "locks" / "module-held1.lock"):
        run = world.popen("--json", "backup", "run", str(bid))
        try:
            time.sleep(2)  # started, and waiting for the lock
            assert run.poll() is None
            stopped = time.monotonic()
            run.send_signal(signal.SIGTERM)
            _, err = run.communicate(timeout=30)
            assert run.returncode == 130, err
            assert time.monotonic() - stopped < 5
        finally:
            if run.poll() is None:
                run.kill()
    assert status_of(world, bid)["held1"]["failure"] == "still_locked"


def test_jobs_back_up_modules_at_the_same_time(world: RunWorld) -> None:
    mids = ["par1", "par2", "par3"]
    world.add_modules(*mids)
    bid = world.add_schedule(mids)
    code, report, err = world.run(bid, "--jobs", "3")
    assert code == 0, err
    spans = [(m["locked_at"], m["unlocked_at"]) for m in report["modules"]]
    latest_start = max(start for start, _ in spans)
    earliest_end = min(end for _, end in spans)
    assert latest_start < earliest_end, spans  # all three were running together


# -- the edges ----------------------------------------------------------------------------------


def test_disabled_and_foreign_schedules_do_nothing(world: RunWorld) -> None:
    client = world.server.client()
    try:
        world.add_module(client, "remote1", node="2")
    finally:
        client.close()
    disabled = world.add_schedule(["remote1"], enabled=False)
    code, report, err = world.run(disabled)
    assert code == 0 and report["outcome"] == "disabled"
    foreign = world.add_schedule(["remote1"])
    code, report, err = world.run(foreign)
    assert code == 0 and report["outcome"] == "no_local_modules"
    code, out, err = world.nsbackup("backup", "run", str(foreign))
    assert code == 0 and "no module of this node" in err
    code, out, err = world.run(9999)
    assert code == 2 and out[0]["error"] == "backup_not_found"


def test_a_module_cannot_run_the_node_side(world: RunWorld) -> None:
    world.add_modules("nosy1")
    bid = world.add_schedule(["nosy1"])
    started = time.monotonic()
    code, out, err = world.run(
        bid, extra={"REDIS_USER": "module/nosy1", "REDIS_PASSWORD": module_password("nosy1")}
    )
    assert code == 5 and out["error"] == "permission_denied", err
    assert "module/nosy1" in err and time.monotonic() - started < 10
    assert status_of(world, bid) == {}


def test_a_stopped_run_stops_its_module_sides(world: RunWorld) -> None:
    """SIGTERM to ``backup run``: the module side and its restic end too, the run exits 130
    and the module's status says it failed."""
    import signal

    world.add_modules("slow1")
    bid = world.add_schedule(["slow1"])
    # a module side that cannot finish on its own: its dump hook hangs
    hook = world.modules_dir / "slow1" / "bin" / "module-dump-state"
    hook.parent.mkdir()
    hook.write_text("#!/bin/sh\nexec sleep 300\n")
    hook.chmod(0o755)
    run = world.popen("--json", "backup", "run", str(bid))
    try:
        deadline = time.monotonic() + 60
        sleepers: list[int] = []
        while not sleepers:  # the hook of this run's module side (not another test's sleep)
            assert time.monotonic() < deadline, "the module side never started its hook"
            sleepers = [pid for pid in _descendants(run.pid) if _comm(pid) == "sleep"]
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
    finally:
        if run.poll() is None:
            run.kill()
        hook.unlink()
    for pid in sleepers:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), "the module side's hook outlived the run"
    status = status_of(world, bid)
    assert "slow1" in status, err
    assert status["slow1"]["errors"] >= 1


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (whatever session it started)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found
