"""``nsbackup.Cluster`` against a real Redis with NS8's own ACL lines (tests/ns8_acl.py).

Cluster actions run as the ``cluster`` user, node actions as ``node/<n>``, module actions as
``module/<id>`` — each with exactly the rules NS8 gives it — and every result is compared with
what the CLI prints with ``--json``.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import nsbackup
from nsbackup import Cluster, NsbackupError, Settings, ValidationFailed, cli
from nsbackup.errors import NotFound, PermissionDenied, PluginError, Unreachable
from nsbackup.plugins import entry_points, plugin_host
from tests.cluster_seed import PASSWORDS
from tests.ns8_acl import dump_all
from tests.redis_server import RedisServer
from tests.servers import RcloneWebdavServer, free_port

RESTIC_PASSWORD = "r" * 64


@pytest.fixture(scope="module")
def dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneWebdavServer]:
    with RcloneWebdavServer(tmp_path_factory.mktemp("dav"), "davuser", "dav-pw") as server:
        yield server


def destination_request(dav: RcloneWebdavServer, path: str = "bk") -> dict[str, Any]:
    return {
        "provider": "webdav",
        "name": "",
        "url": f"webdav:{dav.url.rstrip('/')}/{path}",
        "password": RESTIC_PASSWORD,
        "parameters": {"webdav_user": dav.user, "webdav_pass": "dav-pw", "webdav_vendor": "rclone"},
    }


def schedule_request(repository: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Nightly",
        "repository": repository,
        "schedule": "*-*-* 01:00:00",
        "retention": 7,
        "instances": ["mail1", "nextcloud3"],
        "enabled": True,
        **extra,
    }


def client_as(server: RedisServer, user: str, *, decode: bool = True) -> redis.Redis:
    password = server.admin_password if user == "cluster" else PASSWORDS[user]
    return redis.Redis(
        host=server.host,
        port=server.port,
        username=user,
        password=password,
        decode_responses=decode,
        socket_timeout=10,
    )


def lifecycle(
    dav: RcloneWebdavServer,
    call: Callable[[str, Any], Any],
) -> list[Any]:
    """The same destination and schedule lifecycle, through ``call(step, argument)``."""
    results = []
    added = call("destination add", destination_request(dav))
    results.append(added)
    uid = added["id"]
    results.append(call("destination list", None))
    results.append(call("destination validate", destination_request(dav, "other")))
    results.append(
        call(
            "destination alter",
            {**destination_request(dav), "id": uid, "name": "Renamed", "password": None},
        )
    )
    bid = call("backup add", schedule_request(uid))
    results.append(bid)
    results.append(call("backup alter", {**schedule_request(uid), "id": bid, "retention": 3}))
    results.append(call("backup list", None))
    results.append(call("backup remove", bid))
    results.append(call("backup add", schedule_request(uid, name="")))
    results.append(call("destination remove", uid))
    results.append(call("destination list", None))
    return results


def api_call(cluster: Cluster) -> Callable[[str, Any], Any]:
    def call(step: str, arg: Any) -> Any:
        group, command = step.split()
        service = cluster.destinations if group == "destination" else cluster.schedules
        if command == "list":
            return service.list()
        payload = {k: v for k, v in arg.items() if v is not None} if isinstance(arg, dict) else arg
        return getattr(service, command)(payload)

    return call


def cli_call(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Any], Any]:
    monkeypatch.setenv("NSBACKUP_REDIS_URL", f"redis://{server.host}:{server.port}/0")
    monkeypatch.setenv("REDIS_USER", "cluster")
    monkeypatch.setenv("REDIS_PASSWORD", server.admin_password)
    monkeypatch.setenv("NODE_ID", "1")

    def call(step: str, arg: Any) -> Any:
        args = ["--json", *step.split()]
        if isinstance(arg, dict):
            args += ["--data", json.dumps({k: v for k, v in arg.items() if v is not None})]
        elif arg is not None:
            args.append(str(arg))
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(args, out, err)
        assert code == 0, (step, code, err.getvalue())
        return json.loads(out.getvalue())

    return call


@pytest.mark.parametrize("decode", [True, False], ids=["decode_responses", "bytes"])
def test_lifecycle_through_cluster_equals_cli_json(
    ns8_redis: RedisServer, dav: RcloneWebdavServer, monkeypatch: pytest.MonkeyPatch, decode: bool
) -> None:
    cluster = Cluster(client_as(ns8_redis, "cluster", decode=decode), node_id="1")
    through_api = lifecycle(dav, api_call(cluster))
    snapshot_after_api = dump_all(ns8_redis)

    ns8_redis.flush()
    from tests.ns8_acl import seed_ns8

    seed_ns8(ns8_redis).close()
    through_cli = lifecycle(dav, cli_call(ns8_redis, monkeypatch))
    assert through_api == through_cli
    assert dump_all(ns8_redis) == snapshot_after_api
    # what was checked is real: the steps produced what NS8 outputs
    added, listed, validated, altered, bid, altered_schedule, backups = through_api[:7]
    assert added == {"id": added["id"], "password": RESTIC_PASSWORD}
    assert [r["id"] for r in listed["repositories"]] == [added["id"]]
    assert validated["nodes"][0]["ok"] is True
    assert altered == {"id": added["id"], "changed": ["name"]}
    assert bid == 1 and altered_schedule == {"id": 1, "changed": ["retention"]}
    assert [b["retention"] for b in backups["backups"]] == [3]
    assert through_api[8] == 2 and through_api[9]["removed_backups"] == [2]
    assert through_api[10]["repositories"] == []


def test_settings_from_env_are_the_clis(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {
        "NSBACKUP_REDIS_URL": "redis://127.0.0.1:7001/2",
        "NSBACKUP_REDIS_LEADER_URL": "redis://127.0.0.9:7002/2",
        "REDIS_USER": "module/mail1",
        "REDIS_PASSWORD": "mail1-pw",
        "NODE_ID": "12",
        "NSBACKUP_REPO_DIR": "/srv/somewhere",
    }
    for key in list(os.environ):
        if key.startswith(("NSBACKUP_", "REDIS_")) or key == "NODE_ID":
            monkeypatch.delenv(key)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env(environ)
    assert settings == Settings.from_env()
    args = cli.build_parser().parse_args(["backup", "list"])
    assert args.settings == settings
    assert (args.redis, args.redis_leader, args.node, args.repo_dir) == (
        settings.redis_url,
        settings.leader_url,
        settings.node_id,
        settings.repo_dir,
    )
    assert "mail1-pw" not in repr(settings)
    # and both end up with the same clients
    from_env = Cluster.from_env(environ)
    from nsbackup.cli.base import Context

    from_cli = Context(args, io.StringIO(), io.StringIO()).cluster
    for cluster in (from_env, from_cli):
        reader = cluster.store.reader.connection_pool.connection_kwargs
        writer = cluster.store.writer.connection_pool.connection_kwargs
        assert (reader["host"], reader["port"], reader["db"]) == ("127.0.0.1", 7001, 2)
        assert (writer["host"], writer["port"]) == ("127.0.0.9", 7002)
        assert (reader["username"], reader["password"]) == ("module/mail1", "mail1-pw")
        assert cluster.node_id == "12" and cluster.repo_dir == "/srv/somewhere"


def test_from_env_with_a_live_redis_works_as_the_user_it_names(ns8_redis: RedisServer) -> None:
    environ = {
        "NSBACKUP_REDIS_URL": f"redis://{ns8_redis.host}:{ns8_redis.port}/0",
        "REDIS_USER": "module/mail1",
        "REDIS_PASSWORD": PASSWORDS["module/mail1"],
    }
    cluster = Cluster.from_env(environ)
    assert cluster.schedules.list()["backups"] == []
    with pytest.raises(PermissionDenied, match="module/mail1"):
        cluster.destinations.list(show_secrets=True)


def test_module_user_cannot_add_a_schedule_and_nothing_is_written(
    ns8_redis: RedisServer, dav: RcloneWebdavServer
) -> None:
    admin = Cluster(client_as(ns8_redis, "cluster"), node_id="1")
    uid = admin.destinations.add(destination_request(dav))["id"]
    before = dump_all(ns8_redis)
    module = Cluster(client_as(ns8_redis, "module/mail1"))
    with pytest.raises(NsbackupError) as info:
        module.schedules.add(schedule_request(uid))
    assert isinstance(info.value, PermissionDenied)
    assert info.value.exit_code == 5
    message = str(info.value)
    assert "'module/mail1'" in message and "INCR on key cluster/backup_sequence" in message
    assert dump_all(ns8_redis) == before


def test_node_user_cannot_add_a_destination_and_nothing_is_written(
    ns8_redis: RedisServer, dav: RcloneWebdavServer
) -> None:
    before = dump_all(ns8_redis)
    files_before = sorted(p.relative_to(dav.root) for p in dav.root.rglob("*"))
    node = Cluster(client_as(ns8_redis, "node/1"), node_id="1")
    with pytest.raises(NsbackupError) as info:
        node.destinations.add(destination_request(dav))
    assert isinstance(info.value, PermissionDenied) and info.value.exit_code == 5
    message = str(info.value)
    assert "'node/1'" in message
    assert "HSET on key private/nodes/backup_destination/rclone_conf" in message
    assert "dav-pw" not in message and RESTIC_PASSWORD not in message
    assert dump_all(ns8_redis) == before
    # refused before the probe: nothing was written to the destination either
    assert sorted(p.relative_to(dav.root) for p in dav.root.rglob("*")) == files_before


def test_cli_reports_a_refused_write_with_exit_5(
    ns8_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NSBACKUP_REDIS_URL", f"redis://{ns8_redis.host}:{ns8_redis.port}/0")
    monkeypatch.setenv("REDIS_USER", "module/nextcloud3")
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORDS["module/nextcloud3"])
    before = dump_all(ns8_redis)
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["--json", "backup", "remove", "1"], out, err)
    assert code == 2 and json.loads(out.getvalue())[0]["error"] == "backup_not_found"
    admin = ns8_redis.client()
    admin.hset("cluster/backup/1", mapping={"name": "x", "repository": "y"})
    admin.set("cluster/backup_sequence", 1)
    before = dump_all(ns8_redis)
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["--json", "backup", "remove", "1"], out, err)
    assert code == 5, err.getvalue()
    assert json.loads(out.getvalue())["error"] == "permission_denied"
    assert "module/nextcloud3" in err.getvalue() and "Traceback" not in err.getvalue()
    assert dump_all(ns8_redis) == before


# -- bad input ----------------------------------------------------------------------------------

BAD_PAYLOADS: list[Any] = [None, [], "x", 1, {}, {"unknown": 1}]


def test_every_method_refuses_bad_payloads_with_ns8s_list(
    ns8_redis: RedisServer, dav: RcloneWebdavServer
) -> None:
    cluster = Cluster(client_as(ns8_redis, "cluster"), node_id="1")
    uid = cluster.destinations.add(destination_request(dav))["id"]
    bid = cluster.schedules.add(schedule_request(uid))
    before = dump_all(ns8_redis)
    methods: dict[str, Callable[[Any], Any]] = {
        "destinations.add": cluster.destinations.add,
        "destinations.alter": cluster.destinations.alter,
        "destinations.validate": cluster.destinations.validate,
        "destinations.render": cluster.destinations.render,
        "schedules.add": cluster.schedules.add,
        "schedules.alter": cluster.schedules.alter,
    }
    specific = {
        "destinations.add": [
            {**destination_request(dav), "provider": 7},
            {**destination_request(dav), "url": "webdav:http://x\n[evil]"},
            {**destination_request(dav), "parameters": []},
            {**destination_request(dav), "provider": "nosuch"},
        ],
        "destinations.alter": [
            {**destination_request(dav), "id": None},
            {**destination_request(dav), "id": uid, "provider": "aws"},
        ],
        "schedules.add": [
            schedule_request(uid, retention="7"),
            schedule_request(uid, retention=0),
            schedule_request(uid, instances=["ghost1"]),
            schedule_request(uid, schedule="every day"),
            schedule_request("no-such-destination"),
            schedule_request(uid, enabled="yes"),
        ],
        "schedules.alter": [
            {**schedule_request(uid), "id": bid, "repository": "other"},
            {**schedule_request(uid), "id": "one"},
            {**schedule_request(uid), "id": True},
        ],
    }
    checked = 0
    for name, method in methods.items():
        for payload in BAD_PAYLOADS + specific.get(name, []):
            with pytest.raises(ValidationFailed) as info:
                method(payload)
            errors = info.value.to_json()
            assert isinstance(errors, list) and errors, (name, payload)
            for error in errors:
                assert {"field", "parameter", "value", "error"} <= set(error), error
                assert isinstance(error["error"], str) and error["error"]
            assert info.value.exit_code == 2
            checked += 1
    assert checked >= 50
    for call, error in [
        (lambda: cluster.destinations.remove("00000000-0000-4000-8000-000000000000"), "not_found"),
        (lambda: cluster.schedules.remove(99), "backup_not_found"),
        (lambda: cluster.schedules.remove("x"), "type"),
        (
            lambda: cluster.schedules.alter({**schedule_request(uid), "id": 99}),
            "backup_object_not_found",
        ),
        (
            lambda: cluster.destinations.alter(
                {**destination_request(dav), "id": "00000000-0000-4000-8000-000000000000"}
            ),
            "backup_repository_not_found",
        ),
    ]:
        with pytest.raises(ValidationFailed) as info:
            call()
        assert error in info.value.to_json()[0]["error"]
        if error != "type":
            assert isinstance(info.value, NotFound)
    assert dump_all(ns8_redis) == before


# -- Redis that is away, refusing, or not Redis -----------------------------------------------


@pytest.fixture()
def not_redis() -> Iterator[int]:
    """A loopback port that answers like an HTTP server, not like Redis."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def answer() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_redis_failures_reach_the_caller_as_nsbackup_errors(
    ns8_redis: RedisServer, not_redis: int
) -> None:
    base = f"{ns8_redis.host}:{ns8_redis.port}"
    cases: list[tuple[str, type[NsbackupError]]] = [
        (f"redis://127.0.0.1:{free_port()}/0", Unreachable),
        (f"redis://127.0.0.1:{not_redis}/0", Unreachable),
        (f"redis://cluster:wrong@{base}/0", PermissionDenied),
        (f"redis://nobody:pw@{base}/0", PermissionDenied),
        (f"redis://cluster:{ns8_redis.admin_password}@{base}/99", Unreachable),
    ]
    for url, expected in cases:
        cluster = Cluster.from_url(url, node_id="1")
        for call in (
            cluster.destinations.list,
            cluster.schedules.list,
            lambda c=cluster: c.schedules.remove(1),  # type: ignore[misc]
            lambda c=cluster: c.destinations.remove("x"),  # type: ignore[misc]
        ):
            with pytest.raises(NsbackupError) as info:
                call()
            assert isinstance(info.value, expected), (url, info.value)
            assert not isinstance(info.value, redis.RedisError)
            assert info.value.exit_code in (1, 5), (url, info.value)
            assert ns8_redis.admin_password not in str(info.value)
    for url in ("http://127.0.0.1:6379/0", "redis//x", "ftp://h/0", ""):
        with pytest.raises(ValidationFailed) as info:
            Cluster.from_url(url)
        assert info.value.to_json()[0]["field"] == "redis"


def test_from_url_and_construction_do_no_io() -> None:
    code = (
        "import sys, nsbackup\n"
        "c = nsbackup.Cluster.from_url('redis://127.0.0.1:1/0', node_id='1')\n"
        "c2 = nsbackup.Cluster(object())\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('nsbackup', 'redis', 'pluggy', 'requests', 'cryptography', 'nsbackup_plugins'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(result.stdout.replace("'", '"')) == [
        "nsbackup",
        "nsbackup.api",
        "nsbackup.errors",
    ]


def test_import_nsbackup_imports_no_service() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys, nsbackup; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    loaded = set(json.loads(result.stdout.replace("'", '"')))
    assert {m for m in loaded if m.startswith("nsbackup")} == {"nsbackup", "nsbackup.errors"}
    assert not loaded & {"redis", "pluggy", "requests", "cryptography", "attrs"}


def test_public_names_resolve() -> None:
    for name in nsbackup.__all__:
        assert getattr(nsbackup, name) is not None
    hidden = nsbackup.rclone_obscure("x")
    assert hidden != "x" and nsbackup.rclone_reveal(hidden) == "x"


# -- plugins ------------------------------------------------------------------------------------


class EmbeddedProvider:
    """A plugin object registered without an entry point."""

    __name__ = "embedded-example"

    @nsbackup.hookimpl
    def nsbackup_register_providers(self, register: Any) -> None:
        from nsbackup_plugins.webdav import WebdavProvider

        class Copy(WebdavProvider):
            name = "webdav-copy"

        register(Copy())


class BrokenPlugin:
    __name__ = "broken-example"

    @nsbackup.hookimpl
    def nsbackup_register_providers(self, register: Any) -> None:
        register(object())


def test_extra_plugins_and_entry_points_read_once(
    ns8_redis: RedisServer, dav: RcloneWebdavServer
) -> None:
    assert entry_points() is entry_points()
    assert plugin_host() is plugin_host()
    plain = Cluster(client_as(ns8_redis, "cluster"))
    embedded = Cluster(client_as(ns8_redis, "cluster"), plugins=[EmbeddedProvider()], node_id="1")
    assert "webdav-copy" not in {p["name"] for p in plain.providers}
    providers = {p["name"]: p for p in embedded.providers}
    assert providers["webdav-copy"]["plugin"] == "embedded-example"
    assert "embedded-example" in {p["name"] for p in embedded.plugins["plugins"]}
    added = embedded.destinations.add({**destination_request(dav), "provider": "webdav-copy"})
    assert plain.destinations.list()["repositories"][0]["id"] == added["id"]
    with pytest.raises(PluginError, match="broken-example"):
        Cluster(client_as(ns8_redis, "cluster"), plugins=[BrokenPlugin()]).providers  # noqa: B018


def test_one_cluster_shared_by_threads(ns8_redis: RedisServer, dav: RcloneWebdavServer) -> None:
    cluster = Cluster(client_as(ns8_redis, "cluster"), node_id="1")
    uid = cluster.destinations.add(destination_request(dav))["id"]
    cluster.schedules.add(schedule_request(uid))
    expected = (cluster.destinations.list(), cluster.schedules.list())
    results: list[Any] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                results.append((cluster.destinations.list(), cluster.schedules.list()))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 160
    assert all(result == expected for result in results)


def test_gateway_render_through_the_api(ns8_redis: RedisServer, tmp_path: Path) -> None:
    cluster = Cluster(client_as(ns8_redis, "node/1"), node_id="1", repo_dir=str(tmp_path / "r"))
    result = cluster.gateway.render(tmp_path / "gw", listen="127.0.0.2:4694")
    assert result["directory"] == str(tmp_path / "gw")
    assert {"haproxy.cfg", "auth.map", "modrepo.map", "rclone.conf"} <= set(result["changed"])
    assert "node/1:" in (tmp_path / "gw" / "auth.map").read_text()
    with pytest.raises(ValidationFailed, match="node"):
        Cluster(client_as(ns8_redis, "node/1")).gateway.render(tmp_path / "x")
