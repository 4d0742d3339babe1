"""``nsbackup migrate`` on a real Redis seeded by hand in NS8's pre-3.20 layout (ref §1.1, §9):
destinations of every legacy provider with their secrets as flat fields, Restic colon URLs,
``module/<id>/backups`` sets, legacy statuses, a removed module, and node and module users
with NS8's old ACL lines. Everything is checked through what the rest of nsbackup reads
(destination list, backup list, gateway render) and with real Redis users and subscribers."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from nsbackup import Cluster, NsbackupError, acl, cli, ini
from nsbackup.dr import migrate as migration
from nsbackup.obscure import reveal
from nsbackup.plugins import PluginHost
from tests.cluster_seed import PASSWORDS, module_uuid, seed
from tests.ns8_acl import dump_all
from tests.ns8_acl import module_rules as ns8_module_rules
from tests.ns8_acl import node_rules as ns8_node_rules
from tests.redis_server import RedisServer

CANARY = "Canary-7f3e9a1c"
"""In every legacy secret: it must never appear in a report, an error, stderr or a log."""


def legacy_id(url: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, url))  # what NS8 < 3.20 did


B2 = legacy_id("b2:legacy-bucket:nightly/ns8")
AWS = legacy_id("s3:s3.amazonaws.com/aws-bucket/sub")
WASABI = legacy_id("s3:s3.eu-central-1.wasabisys.com/wbucket")
AZURE = legacy_id("azure:ns8container:/deep/path")
SMB = legacy_id("smb:backups/ns8")
LOCAL = legacy_id("webdav:http://10.5.4.1:4694")
FTP = legacy_id("ftp:host/x")
BROKEN = legacy_id("b2:")
CONVERTIBLE = sorted([B2, AWS, WASABI, AZURE, SMB, LOCAL])

LEGACY_DESTINATIONS: dict[str, dict[str, str]] = {
    B2: {
        "provider": "backblaze",
        "name": "B2 legacy",
        "url": "b2:legacy-bucket:nightly/ns8",
        "password": f"{CANARY}-restic-b2",
        "b2_account_id": "0012ab",
        "b2_account_key": f"{CANARY}-b2",
    },
    AWS: {
        "provider": "aws",
        "name": "",
        "url": "s3:s3.amazonaws.com/aws-bucket/sub",
        "password": f"{CANARY}-restic-aws",
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": f"{CANARY}-aws",
        "aws_default_region": "eu-west-1",
    },
    WASABI: {
        "provider": "generic-s3",
        "name": "Wasabi",
        "url": "s3:s3.eu-central-1.wasabisys.com/wbucket",
        "password": f"{CANARY}-restic-wasabi",
        "aws_access_key_id": "WASABIKEY",
        "aws_secret_access_key": f"{CANARY}-wasabi",
    },
    AZURE: {
        "provider": "azure",
        "name": "",
        "url": "azure:ns8container:/deep/path",
        "password": f"{CANARY}-restic-azure",
        "azure_account_name": "ns8account",
        "azure_account_key": f"{CANARY}-azure",
    },
    SMB: {
        "provider": "smb",
        "name": "NAS",
        "url": "smb:backups/ns8",
        "password": f"{CANARY}-restic-smb",
        "smb_host": "nas.example.org",
        "smb_user": "backup",
        "smb_pass": f"{CANARY}-smb",
        "smb_domain": "WORKGROUP",
    },
    LOCAL: {
        "provider": "cluster",
        "name": "",
        "url": "webdav:http://10.5.4.1:4694",
        "password": f"{CANARY}-restic-local",
    },
    FTP: {
        "provider": "ftp",
        "name": "FTP",
        "url": "ftp:host/x",
        "password": f"{CANARY}-restic-ftp",
        "ftp_pass": f"{CANARY}-ftp",
    },
    BROKEN: {
        "provider": "backblaze",
        "name": "",
        "url": "b2:",
        "password": f"{CANARY}-restic-broken",
        "b2_account_id": "0012ab",
        "b2_account_key": f"{CANARY}-broken",
    },
}

STATUS_MAIL1 = {
    "start": "1700000000",
    "end": "1700000100",
    "errors": "0",
    "total_size": "1234",
    "total_file_count": "12",
    "snapshots_count": "1",
}
NEWER_DOKUWIKI = {"start": 1800000000, "end": 1800000050, "errors": 0}


def old_rules(user: str) -> list[str]:
    """NS8's lines before 3.20: no read-only (``%R~``) patterns."""
    kind, ident = user.split("/", 1)
    rules = ns8_node_rules(ident) if kind == "node" else ns8_module_rules(ident)
    return [r for r in rules if not r.startswith("%R~")]


def set_old_user(client: redis.Redis, user: str, password: str, *, on: bool = True) -> str:
    """Make ``user`` an NS8 < 3.20 user; return its ``cluster/acls`` line (NS8's format)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    state = "on" if on else "off"
    client.execute_command("ACL", "SETUSER", user, "reset", state, f"#{digest}", *old_rules(user))
    return " ".join(["user", user, state, f"#{digest}", *old_rules(user)])


def seed_legacy(server: RedisServer) -> redis.Redis:
    """The test cluster (tests/cluster_seed.py: nodes 1, 2, 12; mail1@1, nextcloud3@2,
    dokuwiki1@12, traefik1@1) in NS8's pre-3.20 layout. Return a ``cluster`` client."""
    client = server.client()
    seed(client)
    lines = [
        set_old_user(client, user, password, on=user != "module/traefik1")
        for user, password in PASSWORDS.items()
    ]
    pipe = client.pipeline(transaction=True)
    pipe.delete("cluster/acls")
    pipe.sadd("cluster/acls", *lines)
    # module UUIDs: nextcloud3's only in its environment, dokuwiki1's nowhere, ghost1 removed
    pipe.hdel("cluster/module_uuid", "nextcloud3", "dokuwiki1")
    pipe.hset("module/nextcloud3/environment", "MODULE_UUID", module_uuid("nextcloud3"))
    pipe.hset("cluster/module_uuid", "ghost1", module_uuid("ghost1"))
    for uid, fields in LEGACY_DESTINATIONS.items():
        pipe.hset(f"cluster/backup_repository/{uid}", mapping=fields)
    schedule = {"schedule": "*-*-* 01:00:00", "retention": "3", "enabled": "1"}
    pipe.hset("cluster/backup/1", mapping={"name": "Nightly", "repository": B2, **schedule})
    pipe.hset(
        "cluster/backup/2",
        mapping={"name": "Local", "repository": LOCAL, "instances": "ghost1", **schedule},
    )
    pipe.hset("cluster/backup/3", mapping={"name": "FTP", "repository": FTP, **schedule})
    pipe.set("cluster/backup_sequence", "3")
    pipe.sadd("module/mail1/backups", "1", "2")
    pipe.sadd("module/nextcloud3/backups", "1")
    pipe.sadd("module/dokuwiki1/backups", "2", "7")
    pipe.sadd("module/ghost1/backups", "1")
    pipe.hset("module/mail1/backup_status/1", mapping=STATUS_MAIL1)
    pipe.hset("module/nextcloud3/backup_status/1", mapping={**STATUS_MAIL1, "errors": "1"})
    pipe.hset("module/ghost1/backup_status/1", mapping=STATUS_MAIL1)
    pipe.hset("module/dokuwiki1/backup_status/2", mapping=STATUS_MAIL1)
    pipe.hset("module/mail1/backup_status/9", mapping=STATUS_MAIL1)
    pipe.hset("node/12/backup_status/2", "dokuwiki1", json.dumps(NEWER_DOKUWIKI))
    pipe.hset("node/2/backup_status/1", "ghost1", json.dumps({"errors": 0}))
    pipe.execute()
    return client


def acl_list(server: RedisServer) -> list[str]:
    client = server.client()
    try:
        return sorted(client.acl_list())
    finally:
        client.close()


class Subscriber:
    """A real subscriber on ``cluster/event/*``; :meth:`until_marker` returns every event
    published before a marker it publishes itself (so "nothing published" can be asserted
    without waiting for a timeout)."""

    def __init__(self, server: RedisServer) -> None:
        self.client = server.client()
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe("cluster/event/*")
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the subscription was never confirmed"
            message = self.pubsub.get_message(timeout=1)
            if message and message["type"] == "psubscribe":
                break

    def until_marker(self) -> list[tuple[str, str]]:
        marker = f"marker-{uuidlib.uuid4()}"
        self.client.publish("cluster/event/test-marker", marker)
        got: list[tuple[str, str]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.5)
            if not message or message["type"] != "pmessage":
                continue
            if message["data"] == marker:
                return got
            got.append((message["channel"], message["data"]))
        raise AssertionError(f"the marker never arrived; got {got}")

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture()
def legacy(redis_db: RedisServer) -> Iterator[RedisServer]:
    seed_legacy(redis_db).close()
    yield redis_db


def run_cli(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, *args: str, user: str = "cluster"
) -> tuple[int, str, str]:
    monkeypatch.setenv("NSBACKUP_REDIS_URL", f"redis://{server.host}:{server.port}/0")
    monkeypatch.setenv("REDIS_USER", user)
    password = server.admin_password if user == "cluster" else PASSWORDS[user]
    monkeypatch.setenv("REDIS_PASSWORD", password)
    monkeypatch.setenv("NODE_ID", "1")
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(args), out, err)
    return code, out.getvalue(), err.getvalue()


def cluster_of(server: RedisServer, user: str = "cluster") -> Cluster:
    password = server.admin_password if user == "cluster" else PASSWORDS[user]
    return Cluster(server.client(user, password), node_id="1")


# -- the whole migration ----------------------------------------------------------------------


def test_migrate_converts_the_legacy_layout(
    legacy: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = Subscriber(legacy)
    try:
        code, out, err = run_cli(legacy, monkeypatch, "-v", "-v", "--json", "migrate")
        published = events.until_marker()
    finally:
        events.close()
    report = json.loads(out)
    assert code == 3, err  # two destinations could not be converted (and are named)
    assert report["dry_run"] is False and report["changed"] is True
    for text in (out, err, caplog.text):
        assert CANARY not in text
    client = legacy.client()

    # cluster/module_uuid: filled from MODULE_UUID, or random with a warning; ghost1 pruned
    uuids = client.hgetall("cluster/module_uuid")
    assert uuids["nextcloud3"] == module_uuid("nextcloud3")
    assert uuidlib.UUID(uuids["dokuwiki1"]).version == 4
    assert "ghost1" not in uuids and set(uuids) == set(client.hkeys("cluster/module_node"))
    assert report["module_uuids"] == [
        {"module_id": "dokuwiki1", "uuid": uuids["dokuwiki1"], "source": "generated"},
        {"module_id": "nextcloud3", "uuid": module_uuid("nextcloud3"), "source": "environment"},
    ]
    assert report["pruned_modules"] == ["ghost1"]
    assert any("dokuwiki1" in w and "random UUID" in w for w in report["warnings"])

    # destinations: secrets moved, public hash cleaned, UUIDs kept, colon URLs fixed
    assert sorted(d["id"] for d in report["destinations"]) == CONVERTIBLE
    assert sorted(client.hkeys("private/nodes/backup_destination/rclone_conf")) == CONVERTIBLE
    passwords = client.hgetall("private/agents/backup_destination/restic_password")
    assert passwords == {uid: LEGACY_DESTINATIONS[uid]["password"] for uid in CONVERTIBLE}
    for uid in CONVERTIBLE:
        assert sorted(client.hkeys(f"cluster/backup_repository/{uid}")) == [
            "basepath",
            "name",
            "provider",
            "url",
        ]
    assert client.hgetall(f"cluster/backup_repository/{B2}") == {
        "url": "b2:legacy-bucket/nightly/ns8",
        "name": "B2 legacy",
        "provider": "backblaze",
        "basepath": "",
    }
    assert (
        client.hget(f"cluster/backup_repository/{AZURE}", "url") == "azure:ns8container/deep/path"
    )
    by_id = {d["id"]: d for d in report["destinations"]}
    assert by_id[B2]["legacy_url"] == "b2:legacy-bucket:nightly/ns8"
    assert by_id[B2]["basepath"] == "legacy-bucket/nightly/ns8"
    assert by_id[AZURE]["basepath"] == "ns8container/deep/path"
    assert by_id[SMB]["removed_fields"] == [
        "password",
        "smb_domain",
        "smb_host",
        "smb_pass",
        "smb_user",
    ]

    # the two it cannot convert: reported, left exactly as they were
    failed = {f["id"]: f for f in report["unconverted_destinations"]}
    assert set(failed) == {FTP, BROKEN}
    assert "no provider plugin 'ftp'" in failed[FTP]["reason"]
    assert "url" in failed[BROKEN]["reason"]
    for uid in (FTP, BROKEN):
        assert client.hgetall(f"cluster/backup_repository/{uid}") == LEGACY_DESTINATIONS[uid]
        assert f"destination {uid} not converted" in err

    # schedules: legacy sets merged (existing schedules only), removed module pruned, sorted
    assert client.hget("cluster/backup/1", "instances") == "mail1 nextcloud3"
    assert client.hget("cluster/backup/2", "instances") == "dokuwiki1 mail1"
    assert report["schedules"] == [
        {
            "id": 1,
            "instances": ["mail1", "nextcloud3"],
            "added": ["mail1", "nextcloud3"],
            "removed": [],
        },
        {
            "id": 2,
            "instances": ["dokuwiki1", "mail1"],
            "added": ["dokuwiki1", "mail1"],
            "removed": ["ghost1"],
        },
    ]
    assert any("module/dokuwiki1/backups names backup 7" in w for w in report["warnings"])
    assert f"warning: backup 3 uses destination {FTP}, which is not converted" in err
    assert list(client.scan_iter("module/*/backups")) == []
    assert report["legacy_sets"] == [
        "module/dokuwiki1/backups",
        "module/ghost1/backups",
        "module/mail1/backups",
        "module/nextcloud3/backups",
    ]

    # statuses: copied as int-cast JSON, the newer one kept, the others dropped; all deleted
    assert list(client.scan_iter("module/*/backup_status/*")) == []
    assert json.loads(client.hget("node/1/backup_status/1", "mail1") or "") == {
        k: int(v) for k, v in STATUS_MAIL1.items()
    }
    assert json.loads(client.hget("node/2/backup_status/1", "nextcloud3") or "")["errors"] == 1
    assert json.loads(client.hget("node/12/backup_status/2", "dokuwiki1") or "") == NEWER_DOKUWIKI
    assert "ghost1" not in client.hkeys("node/2/backup_status/1")
    assert {(s["module_id"], s["backup_id"]): s["action"] for s in report["statuses"]} == {
        ("dokuwiki1", 2): "kept_newer",
        ("ghost1", 1): "dropped",
        ("mail1", 1): "copied",
        ("mail1", 9): "dropped",
        ("nextcloud3", 1): "copied",
    }
    assert report["pruned_statuses"] == [{"node_id": "2", "backup_id": 1, "module_ids": ["ghost1"]}]

    # events: what was converted, once each, as a real subscriber receives them
    assert published == [
        ("cluster/event/backup-destination-changed", json.dumps({"destination_ids": CONVERTIBLE})),
        ("cluster/event/backup-schedule-changed", json.dumps({"backup_ids": ["1", "2"]})),
        ("cluster/event/acl-changed", "cluster/acls"),
    ]
    assert [(e["channel"], e["payload"]) for e in report["events"]] == published
    client.close()


def test_after_migrate_listings_and_gateway_work(
    legacy: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    migration.run(cluster_of(legacy).store, host)
    cluster = cluster_of(legacy)

    listed = {d["id"]: d for d in cluster.destinations.list()["repositories"]}
    assert sorted(listed) == CONVERTIBLE
    assert listed[B2]["parameters"] == {"b2_account_id": "0012ab", "b2_account_key": ""}
    assert listed[AWS]["name"] == "AWS aws-bucket/sub"
    assert listed[SMB]["parameters"]["smb_pass"] == ""
    assert CANARY not in json.dumps(listed)

    backups = {b["id"]: b for b in cluster.schedules.list()["backups"]}
    one = {i["module_id"]: i for i in backups[1]["instances"]}
    assert sorted(one) == ["mail1", "nextcloud3"]
    assert one["mail1"]["status"]["success"] is True
    assert one["mail1"]["status"]["total_size"] == 1234
    assert one["nextcloud3"]["status"]["success"] is False
    two = {i["module_id"]: i for i in backups[2]["instances"]}
    assert sorted(two) == ["dokuwiki1", "mail1"]
    assert two["dokuwiki1"]["status"]["start"] == NEWER_DOKUWIKI["start"]

    # gateway render as node 1, with the node's own credentials
    rendered = cluster_of(legacy, "node/1").gateway.render(tmp_path / "gw", repo_dir="/srv/repo")
    assert rendered["skipped"] == []
    sections = ini.parse((tmp_path / "gw" / "rclone.conf").read_text())
    assert sections[B2] == {"type": "b2", "account": "0012ab", "key": f"{CANARY}-b2"}
    assert sections[AWS] == {
        "type": "s3",
        "provider": "AWS",
        "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": f"{CANARY}-aws",
        "endpoint": "s3.amazonaws.com",
        "region": "eu-west-1",
    }
    assert sections[WASABI]["provider"] == "Wasabi"
    assert sections[WASABI]["endpoint"] == "s3.eu-central-1.wasabisys.com"
    assert sections[AZURE] == {
        "type": "azureblob",
        "account": "ns8account",
        "key": f"{CANARY}-azure",
    }
    smb = sections[SMB]
    assert (smb["type"], smb["host"], smb["user"], smb["domain"]) == (
        "smb",
        "nas.example.org",
        "backup",
        "WORKGROUP",
    )
    assert reveal(smb["pass"]) == f"{CANARY}-smb"
    assert sections[LOCAL] == {"type": "local"}  # 10.5.4.1 is node 1: served from its disk
    upstreams = sections["combined"]["upstreams"]
    for uid, path in (
        (B2, "legacy-bucket/nightly/ns8"),
        (AZURE, "ns8container/deep/path"),
        (SMB, "backups/ns8"),
        (LOCAL, "/srv/repo"),
    ):
        assert f'"{uid}={uid}:{path}"' in upstreams
    assert FTP not in sections and BROKEN not in sections


def test_users_get_nsbackups_rules_and_keep_passwords_and_state(
    legacy: RedisServer, host: PluginHost
) -> None:
    admin = legacy.client()
    before = {u: admin.acl_getuser(u) for u in PASSWORDS}
    report = migration.run(cluster_of(legacy).store, host)
    assert sorted(u["user"] for u in report["acl_users"]) == sorted(PASSWORDS)
    assert all(u["rules"] and u["entry"] for u in report["acl_users"])

    entries = admin.smembers("cluster/acls")
    for user, password in PASSWORDS.items():
        kind, ident = user.split("/")
        rules = acl.node_rules(ident) if kind == "node" else acl.module_rules(ident)
        got = admin.acl_getuser(user)
        assert got["passwords"] == before[user]["passwords"]
        assert ("on" in got["flags"]) == (user != "module/traefik1")
        assert got["keys"] == [r for r in rules if r.startswith(("~", "%"))]
        assert got["channels"] == [r for r in rules if r.startswith("&")]
        digest = hashlib.sha256(password.encode()).hexdigest()
        own = [e for e in entries if e.split()[1] == user]
        if user == "module/traefik1":
            assert own == [f"user {user} off sanitize-payload #{digest} " + " ".join(rules)]
            continue
        assert own == [acl.acl_line(user, digest, rules)]
        as_user = legacy.client(user, password)
        assert as_user.ping() is True  # the password still works
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_user.flushall()
        if kind == "module":
            assert as_user.hget(f"cluster/backup_repository/{B2}", "provider") == "backblaze"
            with pytest.raises(redis.exceptions.NoPermissionError):
                as_user.hget("private/nodes/backup_destination/rclone_conf", B2)
        else:
            assert as_user.hget("private/nodes/backup_destination/rclone_conf", B2)
        as_user.close()
    off = redis.Redis(
        host=legacy.host,
        port=legacy.port,
        username="module/traefik1",
        password=PASSWORDS["module/traefik1"],
        retry=None,  # redis-py retries a refused login for seconds
    )
    with pytest.raises(redis.AuthenticationError):
        off.ping()  # still off
    admin.close()


# -- idempotence, dry run, interruptions --------------------------------------------------------


@pytest.mark.parametrize(
    ("claimed", "holders"),
    [("mail1", ["mail1"]), ("ghost1", ["ghost1"]), ("nextcloud3", ["nextcloud3"])],
    ids=["held-by-a-module", "held-by-a-removed-module", "claimed-by-another-too"],
)
def test_a_module_cannot_claim_another_modules_uuid(
    legacy: RedisServer, monkeypatch: pytest.MonkeyPatch, claimed: str, holders: list[str]
) -> None:
    """``MODULE_UUID`` is in ``module/<id>/environment``, which the module writes itself
    under NS8's rules: claiming another module's UUID would give it that module's repository
    (and the Restic password opens it). A UUID that another module has, had, or claims too is
    given to nobody, with a warning."""
    module = legacy.client("module/dokuwiki1", PASSWORDS["module/dokuwiki1"])
    module.hset("module/dokuwiki1/environment", "MODULE_UUID", module_uuid(claimed))
    module.close()
    code, out, err = run_cli(legacy, monkeypatch, "--json", "migrate")
    report = json.loads(out)
    assert code == 3, err
    uuids = legacy.client().hgetall("cluster/module_uuid")
    assert "dokuwiki1" not in uuids
    assert module_uuid(claimed) not in [u["uuid"] for u in report["module_uuids"]]
    if claimed == "mail1":
        assert uuids["mail1"] == module_uuid("mail1")
    assert any(
        w.startswith(f"module dokuwiki1 claims MODULE_UUID {module_uuid(claimed)}")
        and f"which {', '.join(holders)} also has" in w
        for w in report["warnings"]
    ), report["warnings"]


def test_a_second_run_changes_nothing_and_says_so(
    legacy: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(legacy, monkeypatch, "migrate")
    assert code == 3, err
    keys, users = dump_all(legacy), acl_list(legacy)
    events = Subscriber(legacy)
    try:
        code, out, err = run_cli(legacy, monkeypatch, "migrate")
        published = events.until_marker()
    finally:
        events.close()
    assert code == 3  # the two unconvertible destinations are still reported, once
    assert f"destination {FTP} not converted" not in err  # stdout names it already
    assert out.splitlines() == [
        f"destination {BROKEN} (backblaze) not converted, left as it was: "
        "url: bucket '' is not valid (must match [A-Za-z0-9-]{6,50}); "
        "expected b2:<bucket>[/<path>]",
        f"destination {FTP} (ftp) not converted, left as it was: "
        "no provider plugin 'ftp' is installed",
        "nothing to migrate: the layout is current; 2 destination(s) cannot be converted",
    ]
    assert dump_all(legacy) == keys
    assert acl_list(legacy) == users
    assert published == []
    code, out, _ = run_cli(legacy, monkeypatch, "--json", "migrate")
    report = json.loads(out)
    assert report["changed"] is False and report["events"] == []
    assert [report[k] for k in ("module_uuids", "acl_users", "destinations", "schedules")] == [
        [],
        [],
        [],
        [],
    ]


def test_dry_run_writes_and_publishes_nothing_and_reports_the_plan(
    legacy: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, users = dump_all(legacy), acl_list(legacy)
    events = Subscriber(legacy)
    try:
        code, out, err = run_cli(legacy, monkeypatch, "--json", "migrate", "--dry-run")
        published = events.until_marker()
        text_code, text, _ = run_cli(legacy, monkeypatch, "migrate", "--dry-run")
        published += events.until_marker()
    finally:
        events.close()
    assert (code, text_code) == (3, 3), err
    assert dump_all(legacy) == keys
    assert acl_list(legacy) == users
    assert published == []
    planned = json.loads(out)
    assert planned["dry_run"] is True and planned["changed"] is True
    lines = text.splitlines()
    changes = [line for line in lines if line.startswith("would: ")]
    assert len(changes) == 28 and lines[: len(changes)] == changes
    assert lines[-4:-1] == [
        f"would publish cluster/event/backup-destination-changed "
        f"{json.dumps({'destination_ids': CONVERTIBLE})}",
        'would publish cluster/event/backup-schedule-changed {"backup_ids": ["1", "2"]}',
        "would publish cluster/event/acl-changed cluster/acls",
    ]
    assert lines[-1] == (
        "dry run: 28 change(s) would be made; nothing written; 2 destination(s) cannot be converted"
    )
    assert CANARY not in out + text + err

    code, out, _ = run_cli(legacy, monkeypatch, "--json", "migrate")
    done = json.loads(out)

    def comparable(report: dict[str, Any]) -> dict[str, Any]:
        # the only difference allowed: dokuwiki1's random UUID (and what names it)
        shown = json.loads(
            json.dumps(report).replace(
                next(m["uuid"] for m in report["module_uuids"] if m["source"] == "generated"), "*"
            )
        )
        return {k: v for k, v in shown.items() if k != "dry_run"}

    assert comparable(planned) == comparable(done)


def test_a_run_interrupted_after_the_acl_step_is_completed_by_the_next(
    legacy: RedisServer, host: PluginHost
) -> None:
    store = cluster_of(legacy).store
    plan = migration.make_plan(migration.read(store), host)
    migration._apply_acl(store, plan)  # then the process dies: no data written, no event
    client = legacy.client()
    assert client.hget(f"cluster/backup_repository/{B2}", "b2_account_key") == f"{CANARY}-b2"
    assert not any("%R~" in line for line in client.smembers("cluster/acls"))  # still NS8's
    assert "&cluster/event/*" in client.acl_getuser("node/1")["channels"]  # live: nsbackup's
    saved = (legacy.tmp / "users.acl").read_text()  # ACL SAVE ran: the rules survive a restart
    assert "user node/1 on" in saved and "&cluster/event/*" in saved
    client.close()
    events = Subscriber(legacy)
    try:
        report = migration.run(store, host)
        published = events.until_marker()
    finally:
        events.close()
    # the users are done, their cluster/acls entries are not: rewritten and announced now
    assert report["acl_users"] and all(not u["rules"] and u["entry"] for u in report["acl_users"])
    assert sorted(d["id"] for d in report["destinations"]) == CONVERTIBLE
    assert ("cluster/event/acl-changed", "cluster/acls") in published
    assert migration.run(store, host)["changed"] is False


def test_a_concurrent_change_aborts_the_data_transaction(
    legacy: RedisServer, host: PluginHost
) -> None:
    store = cluster_of(legacy).store
    reading = migration.read(store)
    plan = migration.make_plan(reading, host)
    client = legacy.client()
    client.hset("node/1/backup_status/1", "mail1", json.dumps({"errors": 0, "start": 2}))
    keys = dump_all(legacy)
    watched = sorted({*reading.snapshot.keys, *(op.key for op in plan.ops)})
    with pytest.raises(NsbackupError, match="changed while the migration ran"):
        migration._execute_data(store, plan.ops, watched, reading.snapshot)
    assert dump_all(legacy) == keys  # nothing written, the newer status kept
    report = migration.run(store, host)  # a new run plans from what is there now
    assert {(s["module_id"], s["backup_id"]): s["action"] for s in report["statuses"]}[
        ("mail1", 1)
    ] == "kept_newer"
    assert json.loads(client.hget("node/1/backup_status/1", "mail1") or "")["start"] == 2
    client.close()


def test_only_the_cluster_user_may_migrate_and_a_refusal_changes_nothing(
    legacy: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, users = dump_all(legacy), acl_list(legacy)
    code, out, err = run_cli(legacy, monkeypatch, "--json", "migrate", user="node/1")
    assert code == 5, err
    assert json.loads(out)["error"] == "permission_denied" and "'node/1'" in err
    assert dump_all(legacy) == keys and acl_list(legacy) == users


def test_secrets_never_reach_the_report_logs_or_errors(
    legacy: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs = []
    for args in (
        ("migrate", "--dry-run"),
        ("--json", "migrate", "--dry-run"),
        ("-v", "-v", "migrate"),
    ):
        code, out, err = run_cli(legacy, monkeypatch, *args)
        assert code == 3
        outputs += [out, err]
    text = "\n".join([*outputs, caplog.text])
    assert "destination" in text and "b2_account_key" in text  # names are shown...
    assert CANARY not in text  # ...values never
