"""The leader's cluster dump upload before each run, and a restore that backups survive: a
real node (tests/run_world.py) running real backups through a real gateway."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from nsbackup import ini
from nsbackup.restic import restic_binary
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import seed_loopback_cluster
from tests.redis_server import RedisServer
from tests.run_world import NSBACKUP, RunWorld, module_password
from tests.test_dump import GPG, PASSPHRASE, ns8_home, ns8_open

__all__ = ["ns8_home"]  # the fixture, used here too

CLUSTER_UUID = "c3a7a9a8-3e1c-4b68-9d3c-9e0a3f0d1c11"  # tests/cluster_seed.py


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunWorld]:
    if GPG is None:
        pytest.fail("gpg is missing: run scripts/setup (Debian package gnupg)")
    redis_server.flush()
    modules = {"mail1": "1", "webtop2": "2"}
    world = RunWorld(redis_server, tmp_path_factory.mktemp("dump"), modules, megabytes=0.2)
    world.start()
    try:
        yield world
    finally:
        world.stop()
        redis_server.flush()


@pytest.fixture()
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    path.chmod(0o600)
    return path


def get(world: RunWorld, path: str, user: str, password: str) -> requests.Response:
    assert world.gateway is not None
    return requests.get(f"{world.gateway.url}{path}", auth=(user, password), timeout=10)


def test_the_leader_uploads_the_dump_before_each_run(
    world: RunWorld, passphrase_file: Path, tmp_path: Path, ns8_home: Path
) -> None:
    # The upload comes before the modules, whether this node has any: a schedule of a module
    # on node 2 keeps these runs quick (the next test uploads beside a real backup).
    bid = world.add_schedule(["webtop2"], name="With dump")
    env = {"NSBACKUP_DUMP_PASSPHRASE_FILE": str(passphrase_file)}
    code, report, err = world.run(bid, extra=env)
    assert code == 0 and report["outcome"] == "no_local_modules", err
    note = report["notes"]["cluster_dump"]
    remote = f"/{world.destination}/cluster-backup-{CLUSTER_UUID}.json.gz.gpg"
    assert note["status"] == "uploaded" and note["path"] == remote, note

    # On the destination, read as the node through the gateway, opened as NS8 opens it.
    response = get(world, remote, "node/1", PASSWORDS["node/1"])
    assert response.status_code == 200
    dump = tmp_path / "dump.gpg"
    dump.write_bytes(response.content)
    packed, document = ns8_open(dump, PASSPHRASE, ns8_home)
    assert note["digest"] == hashlib.sha256(packed).hexdigest()
    assert document["version"] == 4 and document["cluster"]["uuid"] == CLUSTER_UUID
    assert list(document["cluster"]["backup_repository"]) == [world.destination]
    assert document["cluster"]["backup"][str(bid)]["uinstances"] == module_uuid("webtop2")
    # A module may not read it.
    refused = get(world, remote, "module/mail1", module_password("mail1"))
    assert refused.status_code == 403
    # What was uploaded is recorded in the node's state, privately.
    record = world.state_dir / "cluster-dump" / f"{world.destination}.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700
    assert json.loads(record.read_text())["digest"] == note["digest"]

    # Unchanged cluster: not uploaded again (a new upload would be new ciphertext).
    code, report, err = world.run(bid, extra=env)
    assert code == 0, err
    again = report["notes"]["cluster_dump"]
    assert again["status"] == "skipped" and again["digest"] == note["digest"], again
    second = get(world, remote, "node/1", PASSWORDS["node/1"])
    assert second.content == response.content
    assert second.headers.get("Last-Modified") == response.headers.get("Last-Modified")

    # A new passphrase encrypts the same cluster again.
    passphrase_file.write_text("a new passphrase\n")
    code, report, err = world.run(bid, extra=env)
    assert code == 0 and report["notes"]["cluster_dump"]["status"] == "uploaded", err
    dump.write_bytes(get(world, remote, "node/1", PASSWORDS["node/1"]).content)
    assert ns8_open(dump, "a new passphrase", ns8_home)[0] == packed

    # No passphrase file: a note and a warning, the run succeeds, the file stays.
    before = get(world, remote, "node/1", PASSWORDS["node/1"]).content
    missing = {"NSBACKUP_DUMP_PASSPHRASE_FILE": str(tmp_path / "nowhere")}
    code, report, err = world.run(bid, extra=missing)
    assert code == 0 and report["exit_code"] == 0, err
    assert report["notes"]["cluster_dump"]["status"] == "no_passphrase"
    assert "cluster dump not uploaded" in err
    assert get(world, remote, "node/1", PASSWORDS["node/1"]).content == before


def test_only_the_leader_uploads(world: RunWorld, passphrase_file: Path) -> None:
    bid = world.add_schedule(["webtop2"], name="Not the leader")
    client = world.server.client()
    client.hset("cluster/environment", "NODE_ID", "2")
    try:
        code, report, err = world.run(
            bid, extra={"NSBACKUP_DUMP_PASSPHRASE_FILE": str(passphrase_file)}
        )
    finally:
        client.hset("cluster/environment", "NODE_ID", "1")
        client.close()
    assert code == 0, err
    assert not report["leader"] and "cluster_dump" not in report["notes"]


def test_restore_into_a_new_cluster_keeps_the_gateway_and_the_backups(
    world: RunWorld, passphrase_file: Path, tmp_path: Path
) -> None:
    assert world.gateway is not None
    bid = world.add_schedule(["mail1"], name="Before the disaster")
    code, report, err = world.run(
        bid, extra={"NSBACKUP_DUMP_PASSPHRASE_FILE": str(passphrase_file)}
    )
    assert code == 0 and report["modules"][0]["success"], err
    assert report["notes"]["cluster_dump"]["status"] == "uploaded"
    dump = tmp_path / "dump.json.gz.gpg"
    code, exported, err = world.nsbackup(
        "--json", "dump", "export", "--out", str(dump), "--passphrase-file", str(passphrase_file)
    )
    assert code == 0, err
    repo_dir = str(world.gateway.repo_dir)
    code, _, err = world.nsbackup(
        "gateway", "render", "--out", str(tmp_path / "before"), "--repo-dir", repo_dir
    )
    assert code == 0, err

    with RedisServer() as fresh:
        client = fresh.client()
        seed_loopback_cluster(client)  # a new cluster: nodes and users, no backup keys
        assert not client.hgetall("private/nodes/backup_destination/rclone_conf")
        env = world.env()
        env.update(
            {
                "NSBACKUP_REDIS_URL": f"redis://{fresh.host}:{fresh.port}/0",
                "REDIS_USER": "cluster",
                "REDIS_PASSWORD": fresh.admin_password,
            }
        )

        def nsbackup(*args: str, user: str = "cluster") -> tuple[int, str, str]:
            if user != "cluster":
                env.update({"REDIS_USER": user, "REDIS_PASSWORD": PASSWORDS[user]})
            done = subprocess.run(
                [NSBACKUP, *args], env=env, capture_output=True, text=True, timeout=120
            )
            return done.returncode, done.stdout, done.stderr

        code, out, err = nsbackup(
            "--json", "dump", "restore", str(dump), "--passphrase-file", str(passphrase_file)
        )
        assert code == 0, err
        restored = json.loads(out)
        assert restored["restored_destinations"] == [world.destination]
        assert bid in restored["restored_backups"]
        assert client.get("cluster/backup_sequence") == str(max(restored["restored_backups"]))
        code, _, err = nsbackup(
            "gateway",
            "render",
            "--out",
            str(tmp_path / "after"),
            "--repo-dir",
            repo_dir,
            user="node/1",
        )
        assert code == 0, err
        password = client.hget(
            "private/agents/backup_destination/restic_password", world.destination
        )
        client.close()

    def sections(directory: str) -> dict[str, Any]:
        return ini.parse((tmp_path / directory / "rclone.conf").read_text())

    assert sections("after") == sections("before")
    assert world.destination in sections("after")
    # The restored password opens the module's repository on the destination's disk.
    assert password == world.restic_password()
    repository = Path(repo_dir) / "mail" / module_uuid("mail1")
    listed = subprocess.run(
        [restic_binary(), "--no-cache", "-r", str(repository), "snapshots", "--json"],
        env={**os.environ, "RESTIC_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    snapshots = json.loads(listed.stdout)
    assert len(snapshots) >= 1
    assert exported["digest"]
