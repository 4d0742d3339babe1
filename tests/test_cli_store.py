"""The Redis-backed CLI commands end to end, and the canary-secret sweep (SPEC §6)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from nsbackup import cli, hookimpl
from nsbackup import plugins as plugins_module
from nsbackup.model import NodeValidation
from nsbackup.plugins import load_plugins
from tests.cluster_seed import seed
from tests.redis_server import RedisServer
from tests.servers import (
    AzuriteServer,
    RcloneS3Server,
    RcloneSftpServer,
    RcloneWebdavServer,
    SambaServer,
    free_port,
)
from tests.test_store import Events, all_keys

NSBACKUP = str(Path(sys.executable).parent / "nsbackup")
CANARY = "Canary-7q2-SECRET"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cli")
    (root / "s3" / "bucket1").mkdir(parents=True)
    with (
        RcloneWebdavServer(root / "dav", "davuser", CANARY) as dav,
        RcloneS3Server(root / "s3", "AKCLI", CANARY) as s3,
        AzuriteServer() as azurite,
        SambaServer(root / "smb", "smbuser", CANARY) as samba,
        RcloneSftpServer(root / "sftp", "sftpuser", CANARY) as sftp,
    ):
        yield {"dav": dav, "s3": s3, "azurite": azurite, "samba": samba, "sftp": sftp}


def nsbackup(
    server: RedisServer, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NSBACKUP_", "REDIS_"))}
    environ.update(
        {
            "NSBACKUP_REDIS_URL": f"redis://{server.host}:{server.port}/0",
            "REDIS_USER": "cluster",
            "REDIS_PASSWORD": server.admin_password,
            "NODE_ID": "1",
        }
    )
    environ.update(env or {})
    return subprocess.run(
        [NSBACKUP, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )


def test_lifecycle_through_the_console_script(
    redis_db: RedisServer, servers: dict[str, Any], tmp_path: Path
) -> None:
    cluster = redis_db.client()
    seed(cluster)
    dav = servers["dav"]
    request = {
        "provider": "webdav",
        "name": "Offsite",
        "url": f"webdav:{dav.url}ns8",
        "password": "",
        "parameters": {"webdav_user": "davuser", "webdav_pass": CANARY},
    }
    result = nsbackup(redis_db, "destination", "validate", "--data", json.dumps(request))
    assert result.returncode == 0, result.stderr
    assert all_keys(cluster) == all_keys(cluster) and not cluster.keys("cluster/backup_repo*")
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request))
    result = nsbackup(redis_db, "--json", "destination", "add", "--data", f"@{path}")
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout)
    assert set(added) == {"id", "password"} and CANARY not in result.stdout + result.stderr
    result = nsbackup(redis_db, "destination", "add", "--data", "-", stdin=json.dumps(request))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: request: destination {added['id']} exists already\n"
    result = nsbackup(
        redis_db, "--json", "destination", "add", "--data", "-", stdin=json.dumps(request)
    )
    assert json.loads(result.stdout)[0]["error"] == "backup_repository_exists"

    result = nsbackup(redis_db, "destination", "list")
    assert result.returncode == 0 and added["id"] in result.stdout and "Offsite" in result.stdout
    result = nsbackup(redis_db, "--json", "destination", "list")
    listed = json.loads(result.stdout)
    assert listed["repositories"][0]["parameters"]["webdav_pass"] == ""

    alter = {
        "id": added["id"],
        "provider": "webdav",
        "name": "Renamed",
        "parameters": {"webdav_user": "davuser", "webdav_pass": ""},
    }
    result = nsbackup(redis_db, "destination", "alter", "--data", json.dumps(alter))
    assert result.returncode == 0, result.stderr
    assert cluster.hget(f"cluster/backup_repository/{added['id']}", "name") == "Renamed"

    schedule = {
        "name": "Nightly",
        "repository": added["id"],
        "schedule": "daily",
        "retention": 3,
        "instances": ["mail1"],
        "enabled": True,
    }
    result = nsbackup(redis_db, "--json", "backup", "add", "--data", json.dumps(schedule))
    assert result.returncode == 0, result.stderr
    bid = json.loads(result.stdout)
    assert bid == 1
    result = nsbackup(
        redis_db,
        "--json",
        "backup",
        "alter",
        "--data",
        json.dumps({**schedule, "id": bid, "retention": 0}),
    )
    assert result.returncode == 2
    assert json.loads(result.stdout)[0]["field"] == "retention"
    result = nsbackup(redis_db, "backup", "list")
    assert result.returncode == 0 and "Nightly" in result.stdout and "never run" in result.stdout
    result = nsbackup(redis_db, "--json", "backup", "list")
    assert json.loads(result.stdout)["backups"][0]["instances"][0]["module_id"] == "mail1"

    result = nsbackup(redis_db, "--json", "destination", "remove", added["id"])
    assert result.returncode == 0 and json.loads(result.stdout)["removed_backups"] == [bid]
    assert not cluster.exists(f"cluster/backup/{bid}")
    result = nsbackup(redis_db, "--json", "backup", "remove", str(bid))
    assert result.returncode == 2 and json.loads(result.stdout)[0]["error"] == "backup_not_found"


def test_redis_errors_exit_5(redis_db: RedisServer) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = nsbackup(redis_db, "--json", "destination", "list", env={"NSBACKUP_REDIS_URL": dead})
    assert result.returncode == 5
    assert json.loads(result.stdout)["error"] == "unreachable"
    result = nsbackup(redis_db, "destination", "list", env={"REDIS_PASSWORD": "wrong"})
    assert result.returncode == 5 and "authentication" in result.stderr.lower()
    assert "wrong" not in result.stderr


def test_module_user_may_not_show_secrets(redis_db: RedisServer) -> None:
    seed(redis_db.client())
    result = nsbackup(
        redis_db,
        "destination",
        "list",
        "--show-secrets",
        env={"REDIS_USER": "module/mail1", "REDIS_PASSWORD": "mail1-pw"},
    )
    assert result.returncode == 5 and "permission denied" in result.stderr


# -- the canary sweep -------------------------------------------------------------------------


class AcceptRemoteCloud:
    """Stands in for node fan-out for the two providers whose services cannot run here
    (AWS and B2): every other provider is validated for real."""

    @hookimpl
    def nsbackup_validate_destination(
        self, prepared: Any, node_ids: Any, basepath: Any
    ) -> list[NodeValidation] | None:
        if prepared.provider in ("aws", "backblaze"):
            return [NodeValidation("1", True)]
        return None


def canary_requests(servers: dict[str, Any]) -> list[dict[str, Any]]:
    s3, dav = servers["s3"], servers["dav"]
    az, smb, sftp = servers["azurite"], servers["samba"], servers["sftp"]
    from nsbackup.obscure import obscure

    return [
        {
            "provider": "aws",
            "url": "s3:s3.amazonaws.com/canary-bucket",
            "parameters": {"aws_access_key_id": "AKIA", "aws_secret_access_key": CANARY},
        },
        {
            "provider": "backblaze",
            "url": "b2:canary-bucket",
            "parameters": {"b2_account_id": "id", "b2_account_key": CANARY},
        },
        {
            "provider": "generic-s3",
            "url": f"s3:{s3.endpoint}/bucket1/canary",
            "parameters": {"aws_access_key_id": s3.access_key, "aws_secret_access_key": CANARY},
        },
        {
            "provider": "webdav",
            "url": f"webdav:{dav.url}canary",
            "parameters": {"webdav_user": dav.user, "webdav_pass": CANARY},
        },
        {
            "provider": "azure",
            "url": "azure:canary",
            "parameters": {
                "azure_account_name": az.account,
                "azure_account_key": az.key,
                "endpoint": az.endpoint,
            },
        },
        {
            "provider": "smb",
            "url": f"smb:{smb.share}/canary",
            "parameters": {
                "smb_host": smb.host,
                "smb_port": str(smb.port),
                "smb_user": smb.user,
                "smb_pass": CANARY,
            },
        },
        {
            "provider": "rclone",
            "url": "",
            "parameters": {
                "basepath": "canary",
                "rclone_conf_secret": f"type = sftp\nhost = {sftp.host}\n"
                f"port = {sftp.port}\nuser = {sftp.user}\n"
                f"pass = {obscure(CANARY)}\nshell_type = none\n",
            },
        },
    ]


def test_canary_secret_never_leaks(
    redis_db: RedisServer,
    servers: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = redis_db.client()
    seed(cluster)
    host = load_plugins(disabled=set())
    host.register_plugin(AcceptRemoteCloud(), "accept-remote-cloud")
    monkeypatch.setattr(plugins_module, "plugin_host", lambda extra=(): host)
    monkeypatch.setenv("NSBACKUP_REDIS_URL", redis_db.url())
    events = Events(cluster)
    seen = io.StringIO()

    def run(*args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["-vv", "--node", "1", *args], out, err)
        seen.write(out.getvalue() + err.getvalue())
        return code, out.getvalue()

    requests = canary_requests(servers)
    with caplog.at_level(logging.DEBUG):
        for request in requests:
            code, out = run("--json", "destination", "add", "--data", json.dumps(request))
            assert code == 0, (request["provider"], seen.getvalue()[-2000:])
            uid = json.loads(out)["id"]
            bad = json.loads(json.dumps(request))
            for param in host.provider(request["provider"]).parameters:
                if param.secret and param.name in bad["parameters"]:
                    bad["parameters"][param.name] += "\n[evil]\ntype = local"
            code, _ = run("destination", "alter", "--data", json.dumps({**bad, "id": uid}))
            assert code == 2
            code, _ = run("destination", "render", "--data", json.dumps(request))
            assert code == 0
        for args in (
            ("destination", "list"),
            ("--json", "destination", "list"),
            ("--json", "backup", "list"),
            ("--json", "plugins"),
        ):
            assert run(*args)[0] == 0
        # a wrong password is reported without echoing either password
        wrong = dict(
            requests[3],
            parameters={**requests[3]["parameters"], "webdav_pass": CANARY + "x"},
            url=requests[3]["url"] + "2",
        )
        assert run("destination", "add", "--data", json.dumps(wrong))[0] == 2
    assert len(cluster.hkeys("private/nodes/backup_destination/rclone_conf")) == len(requests)
    assert CANARY not in seen.getvalue()
    assert CANARY not in caplog.text
    public = {k: v for k, v in all_keys(cluster).items() if not k.startswith("private/")}
    assert CANARY not in json.dumps(public, default=sorted)
    messages = events.collect(len(requests))
    assert len(messages) == len(requests) and CANARY not in json.dumps(messages)
    # the secret really is stored (privately), so the sweep above could have found it
    stored = "".join(cluster.hvals("private/nodes/backup_destination/rclone_conf"))
    assert CANARY in stored
    assert isinstance(redis.Redis, type)


@pytest.mark.parametrize(
    "index", range(7), ids=["aws", "backblaze", "generic-s3", "webdav", "azure", "smb", "rclone"]
)
def test_lifecycle_of_each_provider_through_the_api(
    redis_db: RedisServer, servers: dict[str, Any], index: int
) -> None:
    from nsbackup import ini
    from nsbackup.destinations import DestinationService
    from nsbackup.schedules import ScheduleService
    from nsbackup.store import Store

    cluster = redis_db.client()
    seed(cluster)
    host = load_plugins(disabled=set())
    host.register_plugin(AcceptRemoteCloud(), "accept-remote-cloud")
    store = Store(redis_db.client())
    svc = DestinationService(store, host, node_id="1")
    request = {**canary_requests(servers)[index], "name": "Step 1"}
    provider = host.provider(request["provider"])

    added = svc.add(request)
    uid = added["id"]
    public = cluster.hgetall(f"cluster/backup_repository/{uid}")
    assert set(public) == {"url", "name", "provider", "basepath"}
    assert public["name"] == "Step 1" and public["provider"] == request["provider"]
    conf = cluster.hget("private/nodes/backup_destination/rclone_conf", uid)
    assert conf is not None and list(ini.parse(conf)) == [uid]
    assert (
        cluster.hget("private/agents/backup_destination/restic_password", uid) == added["password"]
    )

    secrets = {p.name: "" for p in provider.parameters if p.secret}
    svc.alter(
        {
            "id": uid,
            "provider": request["provider"],
            "name": "Step 2",
            "parameters": {**request["parameters"], **secrets},
        }
    )
    assert cluster.hget(f"cluster/backup_repository/{uid}", "name") == "Step 2"
    assert cluster.hget("private/nodes/backup_destination/rclone_conf", uid) is not None
    section = ini.parse(cluster.hget("private/nodes/backup_destination/rclone_conf", uid))[uid]
    assert provider.parameters_from_section(
        section, hide_secrets=False
    ) == provider.parameters_from_section(ini.parse(conf)[uid], hide_secrets=False)
    assert (
        cluster.hget("private/agents/backup_destination/restic_password", uid) == added["password"]
    )

    bid = ScheduleService(store).add(
        {
            "name": "S",
            "repository": uid,
            "schedule": "hourly",
            "retention": 1,
            "instances": [],
            "enabled": False,
        }
    )
    assert cluster.hget(f"cluster/backup/{bid}", "enabled") == ""
    assert svc.list()["repositories"][0]["id"] == uid
    svc.remove(uid)
    assert not cluster.exists(f"cluster/backup_repository/{uid}", f"cluster/backup/{bid}")
    assert cluster.hlen("private/nodes/backup_destination/rclone_conf") == 0
    assert cluster.hlen("private/agents/backup_destination/restic_password") == 0
