"""The product's main job on a cluster whose Redis users carry NS8's own ACL lines (ref §1.3),
not the ones nsbackup writes: nodes and modules exactly as NS8 3.20 sets them up, and NS8's
password-less ``default`` user. An existing NS8 cluster must work unchanged, so the gateway
(which may not subscribe as its node and falls back to ``default``), a run, a check, the
listings and a restore into a new module all run here as NS8 runs them: a cluster action as
``cluster``, a node action as ``node/1``, a module side as ``module/<id>``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests import ns8_acl
from tests.cluster_seed import module_uuid
from tests.redis_server import RedisServer
from tests.run_world import RunWorld
from tests.servers import RcloneWebdavServer

MODULES = {"mail1": "1", "dokuwiki1": "1"}


@pytest.fixture()
def world(redis_db: RedisServer, tmp_path: Path) -> Iterator[RunWorld]:
    client = redis_db.client()
    client.execute_command("ACL", "SETUSER", "default", "reset", *ns8_acl.DEFAULT_RULES)
    client.close()
    world = RunWorld(redis_db, tmp_path, MODULES, ns8_acls=True, megabytes=0.3)
    try:
        yield world.start()
    finally:
        world.stop()
        ns8_acl.reset_default(redis_db)


def test_backup_check_listings_and_restore_under_ns8_acl_lines(world: RunWorld) -> None:
    client = world.server.client()
    rules = client.execute_command("ACL", "GETUSER", "node/1")
    assert "+@write" in rules["commands"], "node/1 must carry NS8's lines here"
    bid = world.add_schedule(sorted(MODULES))  # a cluster action, as cluster

    code, report, err = world.run(bid)  # a node action, as node/1; module sides as module/<id>
    assert code == 0, (report, err)
    statuses = {
        mid: json.loads(value)
        for mid, value in client.hgetall(f"node/1/backup_status/{bid}").items()
    }
    assert sorted(statuses) == sorted(MODULES)
    assert all(s["exit_code"] == 0 and s["errors"] == 0 for s in statuses.values()), statuses

    code, check, err = world.nsbackup("--json", "backup", "check", str(bid))
    assert code == 0 and check["ok"] is True, (check, err)

    for mid in MODULES:
        request = {"repository": world.destination, "path": f"{mid[:-1]}/{module_uuid(mid)}"}
        code, snapshots, err = world.nsbackup(
            "--json", "backup", "snapshots", "--data", json.dumps(request)
        )
        assert code == 0 and len(snapshots) == 1, (snapshots, err)
    code, repositories, err = world.nsbackup("--json", "destination", "repositories")
    assert code == 0, err
    assert {module_uuid(mid) for mid in MODULES} <= {r["uuid"] for r in repositories}

    # A new module joins (a cluster action publishing acl-changed): the gateway, subscribed as
    # NS8's default user, lets it in without a restart.
    assert world.gateway is not None
    assert "following cluster events as Redis user default" in world.gateway.log(None)
    started = time.monotonic()
    world.add_module(client, "mail2")  # waits until the gateway authenticates module/mail2
    assert time.monotonic() - started < 2, "the gateway did not follow the event"
    (world.modules_dir / "mail2" / "state" / "bulk.bin").unlink()
    code, result, err = world.nsbackup(
        "--json",
        "restore",
        "run",
        "--data",
        json.dumps(
            {
                "repository": world.destination,
                "path": f"mail/{module_uuid('mail1')}",
                "snapshot": "",
                "module": "mail2",
            }
        ),
        user="cluster",
    )
    assert code == 0 and result["granted"] is True, (result, err)
    restored = world.modules_dir / "mail2" / "state" / "bulk.bin"
    original = world.modules_dir / "mail1" / "state" / "bulk.bin"
    assert restored.read_bytes() == original.read_bytes()
    assert client.hgetall("private/nodes/restore_uuid") == {}
    client.close()


def test_destinations_added_and_removed_by_the_cluster_reach_the_gateway(
    world: RunWorld, tmp_path: Path
) -> None:
    with RcloneWebdavServer(tmp_path / "dav", "davuser", "dav-pw") as dav:
        request = {
            "provider": "webdav",
            "name": "Offsite",
            "url": f"webdav:{dav.url.rstrip('/')}/ns8",
            "parameters": {
                "webdav_user": "davuser",
                "webdav_pass": "dav-pw",
                "webdav_vendor": "rclone",
            },
        }
        code, added, err = world.nsbackup(
            "--json", "destination", "add", "--data", json.dumps(request), user="cluster"
        )
        assert code == 0, err
        uid = added["id"]
        assert world.gateway is not None
        probe = f"{world.gateway.url}/{uid}/_probe_rest_404"
        started = time.monotonic()
        while requests.get(probe, timeout=5).status_code != 404:
            assert time.monotonic() - started < 5, "the gateway did not follow destination-changed"
            time.sleep(0.05)

        bid = world.add_schedule(["mail1"], repository=uid)
        code, report, err = world.run(bid)  # node/1 and module/mail1, through the new backend
        assert code == 0, (report, err)
        code, repositories, err = world.nsbackup("--json", "destination", "repositories")
        assert code == 0, err
        assert (uid, module_uuid("mail1")) in {
            (r["repository_id"], r["uuid"]) for r in repositories
        }

        code, removed, err = world.nsbackup("--json", "destination", "remove", uid, user="cluster")
        assert code == 0 and removed["removed_backups"] == [bid], (removed, err)
        started = time.monotonic()
        while requests.get(probe, timeout=5).status_code == 404:
            assert time.monotonic() - started < 5, "the gateway still serves a removed destination"
            time.sleep(0.05)
