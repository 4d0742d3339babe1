"""A node on NS8's pre-3.20 layout migrated, then backing up through a real gateway: the legacy
``cluster`` destination (``webdav:http://<node ip>:<port>``, Restic password in its public
hash), membership in ``module/<id>/backups`` sets, a module UUID only in its environment, and
every node and module user on NS8's old ACL lines. Before the migration a module cannot even
read its schedule; after it, ``nsbackup backup run`` works with the very same passwords."""

from __future__ import annotations

import io
import json
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nsbackup import cli
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import NODE_IPS, GatewayProcess, seed_loopback_cluster
from tests.redis_server import RedisServer
from tests.run_world import RunWorld, module_password
from tests.servers import free_port
from tests.test_migrate import set_old_user

RESTIC_PASSWORD = "legacy-restic-" + "q" * 50
MODULES = {"mail1": "1", "dokuwiki1": "1"}


@pytest.fixture()
def world(redis_db: RedisServer, tmp_path: Path) -> Iterator[RunWorld]:
    world = RunWorld(redis_db, tmp_path, MODULES, ns8_acls=True, megabytes=0.5)
    yield world
    world.stop()


def seed_legacy_node(world: RunWorld, port: int) -> tuple[str, dict[str, str]]:
    """RunWorld's modules on node 1, then NS8's pre-3.20 layout; return the legacy
    destination's id and the users' passwords."""
    client = world.server.client()
    seed_loopback_cluster(client)
    pipe = client.pipeline(transaction=True)
    for mid in client.hkeys("cluster/module_node"):
        pipe.hdel("cluster/module_node", mid)
        pipe.hdel("cluster/module_uuid", mid)
    pipe.execute()
    for mid, node in MODULES.items():
        world.add_module(client, mid, node)
    passwords = {u: p for u, p in PASSWORDS.items() if u.startswith("node/")}
    passwords.update({f"module/{mid}": module_password(mid) for mid in MODULES})
    url = f"webdav:http://{NODE_IPS['1']}:{port}"
    uid = str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, url))
    pipe = client.pipeline(transaction=True)
    pipe.delete("cluster/acls")
    pipe.sadd("cluster/acls", *(set_old_user(client, u, p) for u, p in passwords.items()))
    pipe.hdel("cluster/module_uuid", "dokuwiki1")
    pipe.hset("module/dokuwiki1/environment", "MODULE_UUID", module_uuid("dokuwiki1"))
    pipe.hset(
        f"cluster/backup_repository/{uid}",
        mapping={"provider": "cluster", "name": "", "url": url, "password": RESTIC_PASSWORD},
    )
    pipe.hset(
        "cluster/backup/1",
        mapping={
            "name": "Nightly",
            "repository": uid,
            "schedule": "*-*-* 01:00:00",
            "retention": "3",
            "enabled": "1",
        },
    )
    pipe.set("cluster/backup_sequence", "1")
    for mid in MODULES:
        pipe.sadd(f"module/{mid}/backups", "1")
    pipe.execute()
    client.close()
    return uid, passwords


def test_a_migrated_node_backs_up_through_its_gateway(
    world: RunWorld, redis_db: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port(NODE_IPS["1"])
    uid, passwords = seed_legacy_node(world, port)
    as_module = redis_db.client("module/mail1", module_password("mail1"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_module.hgetall("cluster/backup/1")  # NS8 < 3.20: modules could not read schedules

    monkeypatch.setenv("NSBACKUP_REDIS_URL", f"redis://{redis_db.host}:{redis_db.port}/0")
    monkeypatch.setenv("REDIS_USER", "cluster")
    monkeypatch.setenv("REDIS_PASSWORD", redis_db.admin_password)
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--json", "migrate"], out, err) == 0, err.getvalue()
    report = json.loads(out.getvalue())
    assert [d["id"] for d in report["destinations"]] == [uid]
    assert set(passwords) <= {u["user"] for u in report["acl_users"] if u["rules"]}
    assert as_module.hget("cluster/backup/1", "instances") == "dokuwiki1 mail1"
    as_module.close()

    world.gateway = GatewayProcess(redis_db, "1", port, world.base).start()
    world.destination = uid
    code, result, stderr = world.run(1)
    assert code == 0, (result, stderr, world.gateway.log())
    client = redis_db.client()
    statuses = {
        mid: json.loads(value) for mid, value in client.hgetall("node/1/backup_status/1").items()
    }
    client.close()
    assert sorted(statuses) == ["dokuwiki1", "mail1"]
    assert all(s["errors"] == 0 and s["exit_code"] == 0 for s in statuses.values())
    for mid in MODULES:  # the repositories are where NS8 put them, with the legacy password
        listed = world.restic_as_node(mid, "snapshots", "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == 1
    assert world.restic_password() == RESTIC_PASSWORD
