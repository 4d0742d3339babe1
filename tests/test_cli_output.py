"""What people read (issue 13): help for every command, text output in columns, removals
that say what goes, messages that keep what matters."""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nsbackup.cli import main
from tests.cluster_seed import module_uuid
from tests.gateway_fixture import add_destination
from tests.ns8_acl import dump_all
from tests.redis_server import RedisServer
from tests.servers import free_port
from tests.test_cli_errors import commands

NSBACKUP = str(Path(sys.executable).parent / "nsbackup")


def run(server: RedisServer | None, *args: str) -> tuple[int, str, str]:
    """The CLI in-process as ``cluster`` on ``server`` (NODE_ID 1)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith(("NSBACKUP_", "REDIS_")):
                env.delenv(name)
        if server is not None:
            env.setenv("NSBACKUP_REDIS_URL", f"redis://{server.host}:{server.port}/0")
            env.setenv("REDIS_USER", "cluster")
            env.setenv("REDIS_PASSWORD", server.admin_password)
        env.setenv("NODE_ID", "1")
        code = main(list(args), out, err)
    return code, out.getvalue(), err.getvalue()


# -- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("words", sorted(commands()))
def test_every_command_has_a_description_its_fields_and_an_example(words: str) -> None:
    parser = commands()[words]
    text = parser.format_help()
    assert parser.description and parser.description.rstrip(".") in text
    assert parser.epilog and "example" in parser.epilog, f"nsbackup {words} --help: no example"
    example = parser.epilog.split("example", 1)[1]
    assert f"nsbackup {words.split()[0]}" in example or "nsbackup " in example
    dests = {a.dest for a in parser._actions}
    if "data" in dests:
        assert "payload fields" in parser.epilog, f"nsbackup {words} --help: no payload fields"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, (words, action.dest)
    verbose = next(a for a in parser._actions if a.dest == "verbose")
    assert "traceback" in str(verbose.help)


def test_help_of_the_whole_tool_names_exit_codes_and_verbosity() -> None:
    result = subprocess.run(
        [NSBACKUP, "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and result.stderr == ""
    assert "exit codes: 0 ok, 1 failure, 2 usage or validation error" in result.stdout
    assert "-v, --verbose" in result.stdout and "traceback" in result.stdout
    assert "--redis URL" in result.stdout and "--node ID" in result.stdout


def test_unknown_option_after_a_command_shows_that_commands_usage() -> None:
    code, out, err = run(None, "plugins", "--nope")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "usage: nsbackup plugins [-h] [--json] [-v]",
        "nsbackup plugins: error: unrecognized arguments: --nope",
    ]


# -- destination remove asks first --------------------------------------------------------------


@pytest.fixture()
def cluster(ns8_redis: RedisServer) -> Iterator[tuple[RedisServer, str]]:
    from nsbackup.plugins import plugin_host
    from nsbackup.schedules import ScheduleService
    from nsbackup.store import Store

    client = ns8_redis.client()
    uid = add_destination(
        client,
        plugin_host(),
        {"provider": "webdav", "name": "Offsite", "url": "webdav:http://127.0.0.1:9/dav"},
    ).id
    for name in ("Nightly", "Weekly"):
        ScheduleService(Store(client)).add(
            {
                "name": name,
                "repository": uid,
                "schedule": "daily",
                "retention": 3,
                "instances": ["mail1"],
                "enabled": True,
            }
        )
    client.close()
    yield ns8_redis, uid


def test_destination_remove_shows_what_goes_and_asks_for_yes(
    cluster: tuple[RedisServer, str],
) -> None:
    server, uid = cluster
    before = dump_all(server)
    code, out, err = run(server, "destination", "remove", uid)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"would remove destination {uid} and backup(s) 1, 2 (schedules and statuses)",
        "nothing removed: run again with --yes to remove it",
    ]
    assert dump_all(server) == before
    code, out, err = run(server, "destination", "remove", uid, "--yes")
    assert code == 0, err
    assert out == f"removed destination {uid} and backup(s) 1, 2 (schedules and statuses)\n"
    client = server.client()
    assert not client.exists(f"cluster/backup_repository/{uid}", "cluster/backup/1")
    client.close()


def test_destination_remove_with_json_does_not_ask(cluster: tuple[RedisServer, str]) -> None:
    server, uid = cluster
    code, out, err = run(server, "--json", "destination", "remove", uid)
    assert code == 0, err
    assert json.loads(out) == {"id": uid, "removed_backups": [1, 2]}


def test_destination_remove_without_yes_still_checks_the_right_to_remove(
    cluster: tuple[RedisServer, str],
) -> None:
    server, uid = cluster
    before = dump_all(server)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NSBACKUP_REDIS_URL", f"redis://{server.host}:{server.port}/0")
        env.setenv("REDIS_USER", "node/1")
        env.setenv("REDIS_PASSWORD", "node1-pw")
        code = main(["destination", "remove", uid], out, err)
    assert code == 5 and "permission denied: Redis user 'node/1'" in err.getvalue()
    assert dump_all(server) == before


# -- messages that keep what matters ------------------------------------------------------------


class _NoWebdav(http.server.BaseHTTPRequestHandler):
    """Answers every WebDAV request with an HTML error page, as a misconfigured proxy would."""

    def do_PROPFIND(self) -> None:
        # a long page: the end of rclone's message is HTML, its start says what failed
        self.send_error(501, "Unsupported method ('PROPFIND')", "explained at length. " * 100)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_refused_destination_keeps_the_start_of_rclones_message(redis_db: RedisServer) -> None:
    from tests.cluster_seed import seed

    seed(redis_db.client(), modules={"mail1": "1"})
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _NoWebdav)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    request = {
        "provider": "webdav",
        "url": f"webdav:http://127.0.0.1:{port}/dav",
        "parameters": {"webdav_user": "u", "webdav_pass": "p"},
    }
    try:
        code, out, err = run(
            redis_db, "--json", "destination", "validate", "--data", json.dumps(request)
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 2, err
    message = json.loads(out)[0]["message"]
    # rclone's first words (what failed), not the tail of an HTML page; no timestamp
    assert "node 1: no_read_permission (CRITICAL: Failed to create file system" in message
    assert "read metadata failed: <!DOCTYPE HTML>" in message and "explained at" in message
    assert message.endswith("…)") and "\n" not in message and len(message) < 500, message
    assert err.count("\n") == 1


def test_disabling_a_plugin_nobody_has_is_warned_about() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSBACKUP_")}
    env["NSBACKUP_DISABLE_PLUGINS"] = "nosuch,s3"
    result = subprocess.run(
        [NSBACKUP, "--json", "providers"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names = {p["name"] for p in json.loads(result.stdout)}
    assert "aws" not in names and "backblaze" in names  # s3 really is disabled
    assert result.stderr.count("\n") == 1, result.stderr
    assert "NSBACKUP_DISABLE_PLUGINS: no installed plugin is called nosuch" in result.stderr
    assert "installed plugins: azure, backblaze," in result.stderr and "s3" in result.stderr


# -- text output in columns ---------------------------------------------------------------------


def columns(text: str, headers: tuple[str, ...]) -> list[list[str]]:
    """The rows of the table in ``text`` whose header line holds ``headers``, cut at the
    header's column starts; fails unless every row has its cells exactly there."""
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if all(h in line for h in headers))
    starts = [lines[top].index(h) for h in headers]
    rows = []
    for line in lines[top + 1 :]:
        if not line.strip() or not line.startswith(lines[top][: starts[0]]):
            break
        for start in starts[1:]:
            assert line[start - 1] == " ", f"not aligned at {start}: {line!r}"
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(cells)
    return rows


def test_backup_list_shows_destination_names_paths_and_modules_left_out(
    cluster: tuple[RedisServer, str],
) -> None:
    server, uid = cluster
    client = server.client()
    status = {"start": 1714525200, "end": 1714525212, "errors": 0, "total_size": 12934567}
    client.hset("node/1/backup_status/1", "mail1", json.dumps(status))
    client.close()
    code, out, err = run(server, "backup", "list")
    assert code == 0, err
    first = out.split("\n\n")[0]
    assert first.splitlines()[:3] == [
        "backup 1  Nightly  (enabled)",
        f"  destination  Offsite  {uid}",
        "  schedule     daily, keeps the last 3 snapshot(s)",
    ]
    rows = columns(first, ("MODULE", "NAME", "REPOSITORY PATH", "LAST RUN", "ENDED", "SIZE"))
    assert rows == [
        [
            "mail1",
            "UI mail1",
            f"mail/{module_uuid('mail1')}",
            "ok",
            "2024-05-01 01:00:12 UTC",
            "12.3 MiB",
        ]
    ]
    assert "backup 2  Weekly" in out and "never run" not in first
    assert out.rstrip().endswith(
        "not in any backup: dokuwiki1 (UI dokuwiki1), nextcloud3 (UI nextcloud3)"
    )
    code, out, _ = run(server, "--json", "backup", "list")
    assert json.loads(out)["backups"][0]["repository_name"] == "Offsite"


def test_destination_list_in_columns_with_the_passphrase_and_passwords_on_request(
    cluster: tuple[RedisServer, str], tmp_path: Path
) -> None:
    from tests.gateway_fixture import RESTIC_PASSWORD

    server, uid = cluster
    code, out, err = run(server, "destination", "list")
    assert code == 0, err
    headers = ("ID", "PROVIDER", "NAME", "BASE PATH", "URL")
    assert columns(out, headers) == [
        [uid, "webdav", "Offsite", "(root)", "webdav:http://127.0.0.1:9/dav"]
    ]
    assert RESTIC_PASSWORD not in out
    assert out.splitlines()[-1].startswith("cluster dump passphrase: NOT SET")
    code, out, err = run(server, "destination", "list", "--show-secrets")
    assert code == 0, err
    assert columns(out, (*headers, "RESTIC PASSWORD"))[0][-1] == RESTIC_PASSWORD
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("secret\n")
    out_, err_ = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NSBACKUP_REDIS_URL", f"redis://{server.host}:{server.port}/0")
        env.setenv("REDIS_USER", "cluster")
        env.setenv("REDIS_PASSWORD", server.admin_password)
        env.setenv("NSBACKUP_DUMP_PASSPHRASE_FILE", str(passphrase))
        assert main(["--json", "destination", "list"], out_, err_) == 0
    assert json.loads(out_.getvalue())["password_exists"] is True


def test_destination_render_names_the_destination_and_rclone_still_reads_it(
    tmp_path: Path,
) -> None:
    from tests.servers import rclone_bin

    request = {
        "provider": "backblaze",
        "name": "",
        "url": "b2:bucket/ns8",
        "parameters": {"b2_account_id": "id", "b2_account_key": "key"},
    }
    code, out, err = run(None, "destination", "render", "--data", json.dumps(request))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "# Backblaze bucket/ns8 (backblaze, b2:bucket/ns8)"
    assert lines[1] == "# base path: bucket/ns8"
    assert lines[3:] == ["type = b2", "account = id", "key = ***"]
    config = tmp_path / "rclone.conf"
    config.write_text(out)
    listed = subprocess.run(
        [rclone_bin(), "--config", str(config), "listremotes"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert listed.stdout == lines[2].strip("[]") + ":\n"


def test_alter_commands_print_what_changed(cluster: tuple[RedisServer, str]) -> None:
    server, uid = cluster
    schedule = {
        "id": 1,
        "name": "Nightly",
        "repository": uid,
        "schedule": "daily",
        "retention": 7,
        "instances": ["mail1"],
        "enabled": False,
    }
    code, out, err = run(server, "backup", "alter", "--data", json.dumps(schedule))
    assert (code, out) == (0, "backup 1: changed retention, enabled\n"), err
    code, out, err = run(server, "backup", "alter", "--data", json.dumps(schedule))
    assert (code, out) == (0, "backup 1: changed nothing\n"), err
