"""examples/ns8-actions run as NS8 runs a cluster action (stdin JSON, the ``cluster`` user
under NS8's ACL lines, ``REDIS_ADDRESS``) and print exactly what ``nsbackup --json`` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ns8_acl import dump_all, seed_ns8
from tests.redis_server import RedisServer
from tests.servers import RcloneWebdavServer

ROOT = Path(__file__).resolve().parents[1]
ACTIONS = ROOT / "examples" / "ns8-actions"
NSBACKUP = str(Path(sys.executable).parent / "nsbackup")
PASSWORD = "e" * 64


@pytest.fixture(scope="module")
def dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneWebdavServer]:
    with RcloneWebdavServer(tmp_path_factory.mktemp("dav"), "davuser", "dav-pw") as server:
        yield server


def ns8_env(server: RedisServer) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NSBACKUP_", "REDIS_")) and k != "NODE_ID"
    }
    env.update(
        {
            "AGENT_ID": "cluster",
            "REDIS_USER": "cluster",
            "REDIS_PASSWORD": server.admin_password,
            "REDIS_ADDRESS": f"{server.host}:{server.port}",
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        }
    )
    return env


def run_action(server: RedisServer, name: str, request: Any) -> tuple[int, Any, str]:
    step = ACTIONS / name / "50update"
    result = subprocess.run(
        [sys.executable, str(step)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=ns8_env(server),
        timeout=120,
        check=False,
    )
    return result.returncode, json.loads(result.stdout or "null"), result.stderr


CLI_OF = {
    "add-backup-repository": ["destination", "add", "--data", "-"],
    "alter-backup-repository": ["destination", "alter", "--data", "-"],
    "remove-backup-repository": ["destination", "remove"],
    "list-backup-repositories": ["destination", "list"],
    "add-backup": ["backup", "add", "--data", "-"],
    "list-backups": ["backup", "list"],
}


def run_cli(server: RedisServer, name: str, request: Any) -> tuple[int, Any, str]:
    args = [NSBACKUP, "--json", *CLI_OF[name]]
    if name == "remove-backup-repository":
        args.append(request["id"])
    result = subprocess.run(
        args,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=ns8_env(server),
        timeout=120,
        check=False,
    )
    return result.returncode, json.loads(result.stdout or "null"), result.stderr


def steps(dav: RcloneWebdavServer) -> list[tuple[str, Any]]:
    dest = {
        "provider": "webdav",
        "name": "",
        "url": f"webdav:{dav.url.rstrip('/')}/ns8",
        "password": PASSWORD,
        "parameters": {"webdav_user": dav.user, "webdav_pass": "dav-pw", "webdav_vendor": "rclone"},
    }
    uid_of = "{uid}"
    return [
        ("add-backup-repository", dest),
        ("add-backup-repository", dest),  # exists already: validation failed
        ("add-backup-repository", {**dest, "provider": "nosuch"}),
        ("list-backup-repositories", {}),
        ("alter-backup-repository", {**dest, "id": uid_of, "name": "Renamed", "password": ""}),
        (
            "add-backup",
            {
                "name": "Nightly",
                "repository": uid_of,
                "schedule": "*-*-* 02:30:00",
                "retention": 5,
                "instances": ["mail1"],
                "enabled": True,
            },
        ),
        ("add-backup", {"name": "", "repository": uid_of, "schedule": "never"}),
        ("list-backups", {}),
        ("remove-backup-repository", {"id": uid_of}),
        ("remove-backup-repository", {"id": uid_of}),  # not found any more
        ("list-backups", {}),
    ]


def play(server: RedisServer, dav: RcloneWebdavServer, runner: Any) -> list[tuple[str, int, Any]]:
    outputs = []
    uid = ""
    for name, request in steps(dav):
        filled = json.loads(json.dumps(request).replace("{uid}", uid))
        code, out, err = runner(server, name, filled)
        assert "Traceback" not in err, (name, err)
        if name == "add-backup-repository" and code == 0:
            uid = out["id"]
        outputs.append((name, code, out))
    return outputs


def test_ns8_actions_print_what_the_cli_prints(
    ns8_redis: RedisServer, dav: RcloneWebdavServer
) -> None:
    by_actions = play(ns8_redis, dav, run_action)
    after_actions = dump_all(ns8_redis)
    ns8_redis.flush()
    seed_ns8(ns8_redis).close()
    by_cli = play(ns8_redis, dav, run_cli)
    assert by_actions == by_cli
    assert dump_all(ns8_redis) == after_actions
    codes = [code for _, code, _ in by_actions]
    assert codes == [0, 2, 2, 0, 0, 0, 2, 0, 0, 2, 0]
    assert by_actions[1][2][0]["error"] == "backup_repository_exists"
    assert by_actions[2][2][0]["error"] == "backup_provider_unknown"
    assert by_actions[0][2]["password"] == PASSWORD
    assert by_actions[5][2] == 1  # NS8's add-backup prints the integer id
    assert {e["error"] for e in by_actions[6][2]} >= {"bad_schedule_format", "required"}
    assert by_actions[7][2]["backups"][0]["name"] == "Nightly"
    assert by_actions[9][2][0]["error"] == "backup_repository_not_found"
    assert by_actions[10][2] == {
        "backups": [],
        "unconfigured_instances": [
            {"id": "dokuwiki1", "ui_name": "UI dokuwiki1"},
            {"id": "mail1", "ui_name": "UI mail1"},
            {"id": "nextcloud3", "ui_name": "UI nextcloud3"},
        ],
    }


def test_every_example_action_is_tested() -> None:
    assert {p.name for p in ACTIONS.iterdir() if p.is_dir()} == set(CLI_OF)
    for name in CLI_OF:
        step = ACTIONS / name / "50update"
        assert os.access(step, os.X_OK), step
        assert len(step.read_text().splitlines()) <= 25, f"{name} is more than a few lines"
