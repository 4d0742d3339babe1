"""Destinations and schedules in a real Redis (ACLs on, default user off), NS8 key layout."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from nsbackup import hookimpl
from nsbackup.destinations import DestinationService
from nsbackup.errors import PermissionDenied, ValidationFailed
from nsbackup.model import NodeValidation
from nsbackup.plugins import PluginHost
from nsbackup.schedules import ScheduleService
from nsbackup.store import Store
from tests.cluster_seed import PASSWORDS, module_uuid, seed
from tests.redis_server import RedisServer
from tests.servers import RcloneWebdavServer

PASSWORD = "dav-pw%1"


@pytest.fixture(scope="module")
def dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneWebdavServer]:
    with RcloneWebdavServer(tmp_path_factory.mktemp("dav"), "davuser", PASSWORD) as server:
        yield server


@pytest.fixture()
def cluster(redis_db: RedisServer) -> redis.Redis:
    admin = redis_db.client()
    seed(admin)
    return admin


def store_for(server: RedisServer, user: str = "cluster") -> Store:
    password = None if user == "cluster" else PASSWORDS[user]
    return Store(server.client(user, password))


def service(server: RedisServer, host: PluginHost, user: str = "cluster") -> DestinationService:
    return DestinationService(store_for(server, user), host, node_id="1")


def dav_payload(
    dav: RcloneWebdavServer, password: str = PASSWORD, path: str = "bk"
) -> dict[str, Any]:
    return {
        "provider": "webdav",
        "name": "",
        "url": f"webdav:{dav.url.rstrip('/')}/{path}",
        "password": "",
        "parameters": {"webdav_user": dav.user, "webdav_pass": password, "webdav_vendor": "rclone"},
    }


def all_keys(client: redis.Redis) -> dict[str, Any]:
    """Every key with its value (for 'nothing was written' checks)."""
    out: dict[str, Any] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        out[key] = {"hash": client.hgetall, "string": client.get, "set": client.smembers}[kind](key)
    return out


class Events:
    """A real subscriber on the event channels."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client  # redis-py closes a collected client's connections, ours too
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe("cluster/event/*", "node/*/event/*")
        confirmed = 0
        deadline = time.monotonic() + 10
        while confirmed < 2:  # both subscriptions active before anything is published
            assert time.monotonic() < deadline, "the subscriptions were never confirmed"
            message = self.pubsub.get_message(timeout=1)
            if message and message["type"] == "psubscribe":
                confirmed += 1

    def collect(self, count: int, timeout: float = 5) -> list[tuple[str, Any]]:
        got: list[tuple[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "pmessage":
                got.append((msg["channel"], json.loads(msg["data"])))
        return got


# -- destinations -----------------------------------------------------------------------------


def test_add_writes_ns8_keys_and_event(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, dav: RcloneWebdavServer
) -> None:
    events = Events(cluster)
    result = service(redis_db, host).add(dav_payload(dav))
    uid = result["id"]
    assert re.fullmatch(r"[0-9a-f]{64}", result["password"])
    assert cluster.hgetall(f"cluster/backup_repository/{uid}") == {
        "url": f"webdav:{dav.url.rstrip('/')}/bk",
        "name": f"webdav {uid[:4]}",
        "provider": "webdav",
        "basepath": "",
    }
    conf = cluster.hget("private/nodes/backup_destination/rclone_conf", uid)
    assert conf is not None and conf.startswith(f"[{uid}]\ntype = webdav\n")
    assert PASSWORD not in conf  # stored obscured
    assert (
        cluster.hget("private/agents/backup_destination/restic_password", uid) == result["password"]
    )
    assert events.collect(1) == [
        ("cluster/event/backup-destination-changed", {"destination_ids": [uid]})
    ]


def test_failed_validation_writes_nothing(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, dav: RcloneWebdavServer
) -> None:
    before = all_keys(cluster)
    events = Events(cluster)
    with pytest.raises(ValidationFailed) as info:
        service(redis_db, host).add(dav_payload(dav, password="wrong"))
    error = info.value.errors[0]
    assert (error.field, error.error) == ("parameters", "no_read_permission")
    assert all_keys(cluster) == before
    assert events.collect(1, timeout=0.5) == []


def test_add_twice_and_concurrently(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, dav: RcloneWebdavServer
) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(5)

    def add() -> None:
        svc = service(redis_db, host)
        barrier.wait()
        try:
            svc.add(dav_payload(dav, path="concurrent"))
            outcomes.append("added")
        except ValidationFailed as exc:
            outcomes.append(exc.errors[0].error)

    threads = [threading.Thread(target=add) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(outcomes) == ["added"] + ["backup_repository_exists"] * 4
    assert len(cluster.hkeys("private/nodes/backup_destination/rclone_conf")) == 1
    assert len(cluster.hkeys("private/agents/backup_destination/restic_password")) == 1
    with pytest.raises(ValidationFailed) as info:  # and once more, sequentially
        service(redis_db, host).add(dav_payload(dav, path="concurrent"))
    assert info.value.errors[0].error == "backup_repository_exists"


def test_alter_keeps_secret_uuid_and_password(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, dav: RcloneWebdavServer
) -> None:
    svc = service(redis_db, host)
    added = svc.add({**dav_payload(dav), "name": "Mine"})
    uid = added["id"]
    conf_before = cluster.hget("private/nodes/backup_destination/rclone_conf", uid)
    events = Events(cluster)
    svc.alter(
        {
            "id": uid,
            "provider": "webdav",
            "name": "Renamed",
            "parameters": {"webdav_user": dav.user, "webdav_pass": ""},
        }
    )
    public = cluster.hgetall(f"cluster/backup_repository/{uid}")
    assert public["url"] == dav_payload(dav)["url"] and public["name"] == "Renamed"
    assert (
        cluster.hget("private/agents/backup_destination/restic_password", uid) == added["password"]
    )
    conf_after = cluster.hget("private/nodes/backup_destination/rclone_conf", uid)
    assert conf_after is not None and conf_before is not None
    assert conf_after.split("pass = ")[0] == conf_before.split("pass = ")[0]
    assert events.collect(1) == [
        ("cluster/event/backup-destination-changed", {"destination_ids": [uid]})
    ]
    with pytest.raises(ValidationFailed) as info:
        svc.alter({"id": uid, "provider": "smb", "parameters": {}})
    assert info.value.errors[0].error == "backup_provider_mismatch"
    # the location never changes under a UUID: the old location's repositories would be
    # orphaned and it could be added again with a second Restic password (issue 13)
    before = all_keys(cluster)
    for moved, error in (
        ({"url": f"webdav:{dav.url.rstrip('/')}/moved"}, "backup_location_immutable"),
        ({"url": "webdav:http://127.0.0.9:1/bk"}, "backup_location_immutable"),
        # other credentials for the same location: allowed, and validated like an add
        ({"parameters": {"webdav_user": "someone-else", "webdav_pass": ""}}, "no_read_permission"),
    ):
        with pytest.raises(ValidationFailed) as info:
            svc.alter(
                {
                    "id": uid,
                    "provider": "webdav",
                    "url": dav_payload(dav)["url"],
                    "parameters": {"webdav_user": dav.user, "webdav_pass": ""},
                    **moved,
                }
            )
        assert info.value.errors[0].error == error
    assert all_keys(cluster) == before
    with pytest.raises(ValidationFailed) as info:  # and the location is still taken
        svc.add(dav_payload(dav))
    assert info.value.errors[0].error == "backup_repository_exists"
    with pytest.raises(ValidationFailed) as info:
        svc.alter({"id": "nope", "provider": "webdav"})
    assert info.value.errors[0].error == "backup_repository_not_found"
    with pytest.raises(ValidationFailed) as info:  # a bad new password is validated
        svc.alter(
            {
                "id": uid,
                "provider": "webdav",
                "parameters": {"webdav_user": dav.user, "webdav_pass": "wrong"},
            }
        )
    assert info.value.errors[0].error == "no_read_permission"
    assert cluster.hget("private/nodes/backup_destination/rclone_conf", uid) == conf_after


def test_remove_takes_schedules_and_status_along(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, dav: RcloneWebdavServer
) -> None:
    svc = service(redis_db, host)
    uid = svc.add(dav_payload(dav, path="rm"))["id"]
    other = svc.add(dav_payload(dav, path="keep"))["id"]
    schedules = ScheduleService(store_for(redis_db))
    bid = schedules.add(schedule_payload(uid))
    kept = schedules.add(schedule_payload(other))
    cluster.hset(f"node/1/backup_status/{bid}", "mail1", json.dumps({"errors": 0}))
    cluster.hset(f"node/2/backup_status/{bid}", "nextcloud3", json.dumps({"errors": 1}))
    events = Events(cluster)
    assert svc.remove(uid) == {"id": uid, "removed_backups": [bid]}
    assert not cluster.exists(
        f"cluster/backup_repository/{uid}",
        f"cluster/backup/{bid}",
        f"node/1/backup_status/{bid}",
        f"node/2/backup_status/{bid}",
    )
    assert not cluster.hexists("private/nodes/backup_destination/rclone_conf", uid)
    assert not cluster.hexists("private/agents/backup_destination/restic_password", uid)
    assert cluster.exists(f"cluster/backup/{kept}", f"cluster/backup_repository/{other}") == 2
    assert events.collect(2) == [
        ("cluster/event/backup-schedule-changed", {"backup_ids": [str(bid)]}),
        ("cluster/event/backup-destination-changed", {"destination_ids": [uid]}),
    ]
    with pytest.raises(ValidationFailed) as info:
        svc.remove(uid)
    assert info.value.errors[0].error == "backup_repository_not_found"


def test_list_hides_secrets_unless_node_privileged(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, dav: RcloneWebdavServer
) -> None:
    added = service(redis_db, host).add(dav_payload(dav, path="list"))
    listed = service(redis_db, host, "module/mail1").list()
    assert listed["password_exists"] is False
    (item,) = listed["repositories"]
    assert item["id"] == added["id"] and "password" not in item
    assert PASSWORD not in json.dumps(listed) and added["password"] not in json.dumps(listed)
    with pytest.raises(PermissionDenied):
        service(redis_db, host, "module/mail1").list(show_secrets=True)
    shown = service(redis_db, host, "node/2").list(show_secrets=True)
    assert shown["repositories"][0]["password"] == added["password"]
    assert shown["repositories"][0]["parameters"]["webdav_pass"] == PASSWORD
    hidden = service(redis_db, host, "node/2").list()
    assert hidden["repositories"][0]["parameters"] == {
        "webdav_user": "davuser",
        "webdav_pass": "",
        "webdav_vendor": "rclone",
    }


def test_cluster_destination_is_validated_on_its_node(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    import http.server
    import threading

    from tests.servers import free_port

    port = free_port("127.0.0.2")
    cluster.hset("node/1/vpn", "ip_address", "127.0.0.2")
    payload = {
        "provider": "cluster",
        "name": "Local",
        "url": f"webdav:http://127.0.0.2:{port}",
        "parameters": {},
    }
    repo = tmp_path / "repo"
    svc = DestinationService(store_for(redis_db), host, node_id="1", repo_dir=str(repo))
    # validation has no side effect: a missing repository directory is not created
    with pytest.raises(ValidationFailed) as info:
        svc.validate(payload)
    assert "does not exist on this node" in info.value.errors[0].message
    assert not repo.exists()
    repo.mkdir()
    # and the gateway the URL names must answer: nothing listens there yet
    with pytest.raises(ValidationFailed) as info:
        svc.validate(payload)
    assert "no gateway answers" in info.value.errors[0].message
    server = http.server.HTTPServer(("127.0.0.2", port), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uid = svc.add(payload)["id"]
    finally:
        server.shutdown()
        server.server_close()
    assert (
        cluster.hget("private/nodes/backup_destination/rclone_conf", uid)
        == f"[{uid}]\ntype = local\n"
    )
    assert list(repo.iterdir()) == []  # the probe cleaned up after itself
    elsewhere = DestinationService(store_for(redis_db, "node/2"), host, node_id="2")
    with pytest.raises(ValidationFailed) as info:
        elsewhere.validate({**payload, "url": "webdav:http://10.5.4.12:4694"})
    assert info.value.errors[0].error == "backup_repository_not_accessible"
    assert "node 12" in info.value.errors[0].message  # not nodes 1 and 2 (ref §14.10)
    with pytest.raises(ValidationFailed) as info:
        svc.validate({**payload, "url": "webdav:http://10.9.9.9:4694"})
    assert "no node has the address" in info.value.errors[0].message


def test_validation_fan_out_hook(
    cluster: redis.Redis, redis_db: RedisServer, fresh_host: PluginHost
) -> None:
    calls: list[list[str]] = []

    class FanOut:
        @hookimpl
        def nsbackup_validate_destination(
            self, prepared: Any, node_ids: Any, basepath: Any
        ) -> list[NodeValidation]:
            calls.append(list(node_ids))
            return [
                NodeValidation(n, n == "12", None if n == "12" else "no_write_permission")
                for n in node_ids
            ]

    fresh_host.register_plugin(FanOut(), "fan-out")
    svc = DestinationService(store_for(redis_db), fresh_host, node_id="1")
    b2 = {
        "provider": "backblaze",
        "name": "",
        "url": "b2:mybucket",
        "parameters": {"b2_account_id": "id", "b2_account_key": "k"},
    }
    svc.add(b2)  # one node of three succeeds: accepted (NS8's rule)
    assert calls == [["1", "2", "12"]]

    class AllFail(FanOut):
        @hookimpl(tryfirst=True)
        def nsbackup_validate_destination(
            self, prepared: Any, node_ids: Any, basepath: Any
        ) -> list[NodeValidation]:
            reasons = [
                "no_read_permission",
                "no_delete_permission",
                "backup_repository_not_accessible",
            ]
            return [NodeValidation(n, False, r) for n, r in zip(node_ids, reasons, strict=True)]

    fresh_host.register_plugin(AllFail(), "all-fail")
    with pytest.raises(ValidationFailed) as info:
        svc.add({**b2, "url": "b2:otherbucket"})
    assert info.value.errors[0].as_dict()["error"] == "no_delete_permission"
    assert info.value.errors[0].as_dict()["field"] == "parameters"


# -- schedules --------------------------------------------------------------------------------


def schedule_payload(repository: str, **change: Any) -> dict[str, Any]:
    return {
        "name": "Daily",
        "repository": repository,
        "schedule": "*-*-* 01:00:00",
        "schedule_hint": {"interval": "daily", "time": "01:00"},
        "retention": 7,
        "instances": ["mail1", "nextcloud3"],
        "enabled": True,
        **change,
    }


def add_b2(redis_db: RedisServer, host: PluginHost) -> str:
    """A destination written directly through the store (no live server needed)."""
    from nsbackup.destinations import prepare
    from nsbackup.model import DestinationRequest

    prepared = prepare(
        host,
        DestinationRequest.from_payload(
            {
                "provider": "backblaze",
                "url": "b2:schedbucket",
                "parameters": {"b2_account_id": "id", "b2_account_key": "k"},
            }
        ),
    )
    store_for(redis_db).add_destination(prepared, "p" * 64)
    return prepared.id


def test_schedule_lifecycle(cluster: redis.Redis, redis_db: RedisServer, host: PluginHost) -> None:
    dest = add_b2(redis_db, host)
    svc = ScheduleService(store_for(redis_db))
    events = Events(cluster)
    bid = svc.add(schedule_payload(dest, name=""))
    assert bid == 1 and cluster.get("cluster/backup_sequence") == "1"
    assert cluster.hgetall("cluster/backup/1") == {
        "name": "Backup 1",
        "repository": dest,
        "schedule": "*-*-* 01:00:00",
        "schedule_hint": json.dumps({"interval": "daily", "time": "01:00"}),
        "retention": "7",
        "enabled": "1",
        "instances": "mail1 nextcloud3",
    }
    assert events.collect(1) == [("cluster/event/backup-schedule-changed", {"backup_ids": ["1"]})]
    svc.alter(
        {"id": 1, **schedule_payload(dest, enabled=False, instances=["dokuwiki1"], retention=2)}
    )
    stored = cluster.hgetall("cluster/backup/1")
    assert (stored["enabled"], stored["instances"], stored["retention"]) == ("", "dokuwiki1", "2")
    assert svc.add(schedule_payload(dest)) == 2
    svc.remove(1)
    assert not cluster.exists("cluster/backup/1") and cluster.exists("cluster/backup/2")
    assert events.collect(3)[-1] == ("cluster/event/backup-schedule-changed", {"backup_ids": ["1"]})


@pytest.mark.parametrize(
    ("change", "field", "error"),
    [
        ({"schedule": "every tuesday-ish"}, "schedule", "bad_schedule_format"),
        ({"schedule": "x" * 65}, "schedule", "maxLength"),
        ({"retention": 0}, "retention", "minimum"),
        ({"retention": "7d"}, "retention", "type"),
        ({"instances": ["ghost9"]}, "instances", "module_not_found"),
        ({"repository": "nope"}, "repository", "backup_repository_not_found"),
        ({"enabled": "yes"}, "enabled", "type"),
        ({"extra": 1}, "extra", "additionalProperties"),
    ],
)
def test_schedule_validation(
    cluster: redis.Redis,
    redis_db: RedisServer,
    host: PluginHost,
    change: dict[str, Any],
    field: str,
    error: str,
) -> None:
    dest = add_b2(redis_db, host)
    before = all_keys(cluster)
    with pytest.raises(ValidationFailed) as info:
        ScheduleService(store_for(redis_db)).add({**schedule_payload(dest), **change})
    assert any(e.field == field and e.error == error for e in info.value.errors), info.value.errors
    assert all_keys(cluster) == before


def test_alter_validates_instances_and_keeps_destination(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost
) -> None:
    dest = add_b2(redis_db, host)
    svc = ScheduleService(store_for(redis_db))
    bid = svc.add(schedule_payload(dest))
    with pytest.raises(ValidationFailed) as info:
        svc.alter({"id": bid, **schedule_payload(dest, instances=["ghost1"])})
    assert info.value.errors[0].error == "module_not_found"  # NS8 did not check (ref §14.17)
    with pytest.raises(ValidationFailed) as info:
        svc.alter({"id": bid, **schedule_payload("other")})
    assert info.value.errors[0].error == "backup_repository_immutable"
    with pytest.raises(ValidationFailed) as info:
        svc.alter({"id": 99, **schedule_payload(dest)})
    assert info.value.errors[0].error == "backup_object_not_found"
    with pytest.raises(ValidationFailed) as info:
        svc.remove(99)
    assert info.value.errors[0].error == "backup_not_found"


def test_backup_list_with_status_in_constant_round_trips(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost
) -> None:
    dest = add_b2(redis_db, host)
    svc = ScheduleService(store_for(redis_db))
    bid = svc.add(schedule_payload(dest))
    cluster.hset(
        f"node/1/backup_status/{bid}",
        "mail1",
        json.dumps({"start": 1, "end": 2, "errors": 0, "total_size": 10}),
    )
    cluster.hset(
        f"node/2/backup_status/{bid}", "nextcloud3", json.dumps({"start": 1, "end": 2, "errors": 2})
    )
    listed = svc.list()
    (backup,) = listed["backups"]
    assert backup["enabled"] is True and backup["retention"] == 7
    assert backup["schedule_hint"] == {"interval": "daily", "time": "01:00"}
    by_id = {i["module_id"]: i for i in backup["instances"]}
    assert by_id["mail1"]["status"] == {"start": 1, "end": 2, "success": True, "total_size": 10}
    assert by_id["nextcloud3"]["status"]["success"] is False
    assert by_id["mail1"]["repository_path"] == f"mail/{module_uuid('mail1')}"
    assert listed["unconfigured_instances"] == [{"id": "dokuwiki1", "ui_name": "UI dokuwiki1"}]

    store = store_for(redis_db)
    ScheduleService(store).list()
    small = store.round_trips
    many = {f"app{i}": str(i % 3 + 1) for i in range(300)}
    seed(cluster, modules=many)
    for _ in range(5):
        svc.add(schedule_payload(dest))
    store = store_for(redis_db)
    ScheduleService(store).list()
    # two, plus one for the flags of the modules no schedule names (there are some here)
    assert store.round_trips == small == 3
    gateway = store_for(redis_db)
    gateway.load(details=False)
    assert gateway.round_trips == 2


# -- replicas, ACLs, secrets ------------------------------------------------------------------


def test_reads_from_replica_writes_to_leader(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost
) -> None:
    with RedisServer(replica_of=redis_db) as replica:
        store = Store(replica.client(), redis_db.client())
        svc = ScheduleService(store)
        dest = add_b2(redis_db, host)
        deadline = time.monotonic() + 10
        while dest not in store.load().destinations:  # replication is asynchronous
            assert time.monotonic() < deadline
            time.sleep(0.05)
        bid = svc.add(schedule_payload(dest))
        assert cluster.hget(f"cluster/backup/{bid}", "name") == "Daily"
        with pytest.raises(redis.ReadOnlyError):
            replica.client().set("x", "1")
        deadline = time.monotonic() + 10
        while bid not in store.load().schedules:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_module_user_cannot_read_rclone_configs_or_enumerate(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost
) -> None:
    dest = add_b2(redis_db, host)
    module = redis_db.client("module/mail1", PASSWORDS["module/mail1"])
    for command in (
        lambda: module.hget("private/nodes/backup_destination/rclone_conf", dest),
        lambda: module.hgetall("private/nodes/restore_uuid"),
        lambda: module.keys("*"),
        lambda: module.scan(0),
        lambda: module.set("cluster/backup/9", "x"),
        lambda: module.hset("node/1/backup_status/1", "mail1", "{}"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            command()
    assert module.hgetall(f"cluster/backup_repository/{dest}")["provider"] == "backblaze"
    module.set("module/mail1/scratch", "ok")  # its own keys stay writable
    node = redis_db.client("node/2", PASSWORDS["node/2"])
    assert node.hget("private/nodes/backup_destination/rclone_conf", dest)
    node.hset("node/2/backup_status/1", "nextcloud3", "{}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        node.hset("node/1/backup_status/1", "mail1", "{}")
    # a module-user snapshot works, without secrets and without enumerating keys
    state = Store(module).load()
    assert not state.privileged and list(state.destinations) == [dest]
    assert state.destinations[dest].rclone_conf is None
    assert state.destinations[dest].restic_password is None


def test_acl_lines_are_what_the_gateway_reads(cluster: redis.Redis) -> None:
    lines = cluster.smembers("cluster/acls")
    node1 = next(line for line in lines if line.startswith("user node/1 "))
    assert re.match(r"user node/1 on sanitize-payload #[0-9a-f]{64} ~node/1/\* ", node1)
