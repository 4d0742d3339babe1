"""Every command by bad input (issue 13), as a table.

Each row runs the CLI in-process twice, in text mode and with ``--json``, and asserts: the exit
code SPEC §7 documents; each message once on stderr, never a traceback; in text mode nothing on
stdout, with ``--json`` exactly one JSON document (the error list for exit 2, naming the
field); the same messages in both modes; nothing written (a Redis ``DUMP`` of every key is
unchanged).

The commands are read from the parser: a command added without its rows fails
:func:`test_every_command_has_its_rows`.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import io
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nsbackup.cli import build_parser, main
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import add_destination
from tests.ns8_acl import dump_all, reset_default, seed_ns8
from tests.redis_server import RedisServer
from tests.servers import free_port

BIG = "x" * 1_000_000  # a 1 MB string
CONTROL = "a\nb\x1b[31m"  # a line break and a terminal escape
UNWRITABLE = "/sys/nsbackup-test"  # refused even to root (sysfs)
NO_RIGHTS = "norights"

# What each kind of row stands for; which kinds a command needs is derived from its parser.
DATA_KINDS = {"malformed_json", "type", "unknown_field", "huge", "control"}
REDIS_KINDS = {"redis_unreachable", "redis_no_rights"}
PATH_KINDS = {"path_unwritable", "path_file"}
# Commands that never read Redis, and those whose success would start something long or
# touch the host (systemd timers): they are tested on the inputs they refuse first.
NO_REDIS = {
    "plugins",
    "providers",
    "rclone obscure",
    "rclone reveal",
    "destination render",
    "quickstart",
    "schedule start-timers",
    "schedule stop-timers",
    "schedule list-timers",
    "gateway status",
}
PATH_OPTIONS = {"out", "state_dir", "keep", "target", "modules_dir", "module_dir"}


@dataclasses.dataclass(frozen=True)
class Row:
    command: str
    kind: str
    args: tuple[str, ...]
    code: int
    field: str | None = None
    """The field the error list names (exit 2); ``None`` when not a validation error."""
    error: str | None = None
    """Its error code, where this project decides it (``None``: any code)."""
    user: str = "cluster"
    redis: str = "up"  # or "down"
    stdin: str = ""
    gap: str = ""
    """Why this row cannot pass yet (the row is skipped, and says so); empty when it can."""

    @property
    def id(self) -> str:
        return f"{self.command.replace(' ', '-')}:{self.kind}"


def data(command: str, base: dict[str, Any], *, typed: str, text: str, ours: bool) -> list[Row]:
    """The five --data rows of a command: ``typed`` is a string field given a number, ``text`` a
    free-text field given 1 MB and control characters. ``ours``: the codes are this project's
    (docs/cli.md's table); other commands' validators are only held to naming the field."""

    def row(kind: str, payload: Any, field: str, error: str) -> Row:
        raw = payload if isinstance(payload, str) else json.dumps(payload)
        return Row(command, kind, ("--data", raw), 2, field, error if ours else None)

    return [
        row("malformed_json", '{"name": "x",', "data", "invalid_json"),
        row("nan", '{"name": NaN, "retention": -Infinity}', "data", "invalid_json"),
        row("type", {**base, typed: 5}, typed, "type"),
        row("unknown_field", {**base, "zzz": 1}, "zzz", "additionalProperties"),
        row("huge", {**base, text: BIG}, text, "maxLength"),
        row("control", {**base, text: CONTROL}, text, "pattern"),
    ]


def redis_rows(command: str, *args: str, user: str = "cluster") -> list[Row]:
    return [
        Row(command, "redis_unreachable", args, 5, user=user, redis="down"),
        Row(command, "redis_no_rights", args, 5, user=NO_RIGHTS),
    ]


def path_rows(
    command: str, option: str, *args: str, user: str = "cluster", unwritable: str = UNWRITABLE
) -> list[Row]:
    """A path this process may not write (exit 5), and a file where a directory belongs (2).
    ``unwritable``: ``/sys`` for options that need an existing directory."""
    field = option.lstrip("-").replace("-", "_")
    return [
        Row(command, "path_unwritable", (*args, option, unwritable), 5, user=user),
        Row(command, "path_file", (*args, option, "{file}"), 2, field, "invalid_path", user=user),
    ]


def usage(command: str, *args: str) -> Row:
    return Row(command, "usage", (*args, "--no-such-option"), 2, "", "usage")


B2 = {
    "provider": "backblaze",
    "name": "",
    "url": "b2:bucket",
    "parameters": {"b2_account_id": "id", "b2_account_key": "k"},
}
SCHEDULE = {
    "name": "Nightly",
    "repository": "{dest}",
    "schedule": "daily",
    "retention": 3,
    "instances": ["mail1"],
    "enabled": True,
}
REPO = {"repository": "{dest}", "path": f"mail/{module_uuid('mail1')}"}
GRANT = {"module_uuid": module_uuid("mail1"), "source_uuid": str(uuid.uuid4())}
RESTORE = {**REPO, "snapshot": "", "module": "mail1"}


def rows() -> list[Row]:
    table: list[Row] = [
        usage("plugins"),
        usage("providers"),
        Row("rclone obscure", "empty_stdin", ("-",), 2, "text", "required"),
        Row("rclone reveal", "control", (CONTROL,), 2, "text", "invalid_obscured"),
        Row("rclone reveal", "huge", (BIG,), 2, "text", "invalid_obscured"),
        usage("rclone obscure", "x"),
        usage("rclone reveal", "x"),
        *data("destination render", B2, typed="url", text="name", ours=True),
        Row(
            "destination render",
            "parameter_type",
            ("--data", json.dumps({**B2, "parameters": {"b2_account_id": 5}})),
            2,
            "parameters",
            "type",
        ),
        Row("destination render", "too_deep", ("--data", "[" * 100 + "]" * 100), 2, "data"),
        *data("destination add", B2, typed="name", text="url", ours=True),
        *redis_rows("destination add", "--data", json.dumps(B2)),
        Row("destination add", "module_user", ("--data", json.dumps(B2)), 5, user="module/mail1"),
        *data(
            "destination alter",
            {"id": "{dest}", "provider": "webdav", "name": "N"},
            typed="id",
            text="name",
            ours=True,
        ),
        *redis_rows("destination alter", "--data", json.dumps({"id": "{dest}", "provider": "x"})),
        *data("destination validate", B2, typed="password", text="password", ours=True),
        *redis_rows("destination validate", "--data", json.dumps(B2)),
        Row("destination remove", "huge", (BIG, "--yes"), 2, "id", "backup_repository_not_found"),
        Row("destination remove", "control", (CONTROL, "--yes"), 2, "id"),
        *redis_rows("destination remove", "{dest}", "--yes"),
        Row("destination remove", "module_user", ("{dest}", "--yes"), 5, user="module/mail1"),
        *redis_rows("destination list"),
        Row("destination list", "module_user", ("--show-secrets",), 5, user="module/mail1"),
        Row("destination repositories", "argument", ("--timeout", "-1"), 2, "timeout"),
        Row("destination repositories", "nan", ("--timeout", "nan"), 2, "timeout"),
        *redis_rows("destination repositories"),
        *data("backup add", SCHEDULE, typed="name", text="schedule", ours=True),
        Row(
            "backup add",
            "retention_string",
            ("--data", json.dumps({**SCHEDULE, "retention": "7"})),
            2,
            "retention",
            "type",
        ),
        Row(
            "backup add",
            "duplicate",
            ("--data", json.dumps({**SCHEDULE, "instances": ["mail1", "mail1"]})),
            2,
            "instances",
            "uniqueItems",
        ),
        *redis_rows("backup add", "--data", json.dumps(SCHEDULE)),
        Row("backup add", "module_user", ("--data", json.dumps(SCHEDULE)), 5, user="module/mail1"),
        *data("backup alter", {**SCHEDULE, "id": 1}, typed="name", text="name", ours=True),
        *redis_rows("backup alter", "--data", json.dumps({**SCHEDULE, "id": 1})),
        Row("backup remove", "huge", (BIG,), 2, "id", "type"),
        Row("backup remove", "control", (CONTROL,), 2, "id", "type"),
        *redis_rows("backup remove", "1"),
        *redis_rows("backup list"),
        Row("backup run", "argument", ("x1",), 2, "", "usage"),
        Row("backup run", "jobs", ("1", "--jobs", "0"), 2, "jobs", user="node/1"),
        Row("backup run", "nan", ("1", "--wait", "nan"), 2, "wait", user="node/1"),
        *redis_rows("backup run", "1", user="node/1"),
        *path_rows("backup run", "--modules-dir", "1", user="node/1", unwritable="/sys"),
        Row(
            "backup run",
            "metrics_file",
            ("1", "--metrics-dir", "{file}"),
            2,
            "metrics_dir",
            "invalid_path",
            user="node/1",
        ),
        Row("backup run", "metrics_unwritable", ("1", "--metrics-dir", "/sys"), 5, user="node/1"),
        *data("backup snapshots", REPO, typed="path", text="path", ours=False),
        *redis_rows("backup snapshots", "--data", json.dumps(REPO), user="node/1"),
        Row("backup check", "argument", ("x1",), 2, "", "usage"),
        *redis_rows("backup check", "1", user="node/1"),
        *redis_rows("gateway render", "--out", "{tmp}/gw", user="node/1"),
        *path_rows("gateway render", "--out", user="node/1"),
        Row(
            "gateway serve",
            "redis_unreachable",
            ("--state-dir", "{tmp}/state"),
            5,
            user="node/1",
            redis="down",
        ),
        Row(
            "gateway serve",
            "redis_no_rights",
            ("--state-dir", "{tmp}/state"),
            5,
            user=NO_RIGHTS,
        ),
        *path_rows("gateway serve", "--state-dir", user="node/1"),
        *path_rows("gateway status", "--state-dir"),
        Row("module backup", "argument", ("x1",), 2, "", "usage"),
        *redis_rows("module backup", "1", "--module", "mail1", "--module-dir", "{tmp}"),
        *path_rows("module backup", "--module-dir", "1", "--module", "mail1", unwritable="/sys"),
        *data("module restore", REPO, typed="path", text="path", ours=False),
        *path_rows("module restore", "--target", "--data", json.dumps(REPO)),
        *redis_rows(
            "module restore",
            "--data",
            json.dumps(REPO),
            "--module",
            "mail1",
            "--module-dir",
            "{tmp}",
        ),
        usage("schedule start-timers"),
        Row("schedule start-timers", "argument", ("--jobs", "x"), 2, "", "usage"),
        usage("schedule stop-timers"),
        usage("schedule list-timers"),
        *redis_rows("restore grants"),
        *data("restore grant", GRANT, typed="module_uuid", text="source_uuid", ours=False),
        *redis_rows("restore grant", "--data", json.dumps(GRANT)),
        Row("restore revoke", "huge", (BIG,), 2, "module_uuid"),
        Row("restore revoke", "control", (CONTROL,), 2, "module_uuid"),
        *redis_rows("restore revoke", module_uuid("mail1")),
        *data("restore run", RESTORE, typed="module", text="path", ours=False),
        *redis_rows("restore run", "--data", json.dumps(RESTORE)),
        *path_rows(
            "restore run", "--modules-dir", "--data", json.dumps(RESTORE), unwritable="/sys"
        ),
        *redis_rows("dump export", "--out", "{tmp}/dump.gpg", "--passphrase-file", "{file}"),
        Row(
            "dump export",
            "path_unwritable",
            ("--out", UNWRITABLE, "--passphrase-file", "{file}"),
            5,
        ),
        Row(
            "dump export",
            "path_file",  # --out names a file: the wrong kind is a directory
            ("--out", "{tmp}", "--passphrase-file", "{file}"),
            2,
            "out",
            "invalid_path",
        ),
        Row(
            "dump export",
            "passphrase_missing",
            ("--out", "{tmp}/d.gpg", "--passphrase-file", "{tmp}/nope"),
            2,
            "passphrase_file",
        ),
        *(
            Row(
                "dump export",
                f"passphrase_fd_{fd}",
                ("--out", "{tmp}/d.gpg", "--passphrase-fd", str(fd)),
                2,
                "passphrase_fd",
                "invalid_fd",
            )
            for fd in (1, 2)
        ),
        Row(
            "dump import", "missing_file", ("{tmp}/nope", "--passphrase-file", "{file}"), 2, "file"
        ),
        *redis_rows("dump import", "{dump}", "--passphrase-file", "{file}"),
        Row("dump restore", "not_a_dump", ("{file}", "--passphrase-file", "{file}"), 2, "file"),
        *redis_rows("dump restore", "{dump}", "--passphrase-file", "{file}"),
        Row("scheduler", "redis_unreachable", (), 5, user="node/1", redis="down"),
        Row(
            "scheduler",
            "redis_no_rights",
            (),
            5,
            user=NO_RIGHTS,
        ),
        *path_rows("scheduler", "--modules-dir", user="node/1", unwritable="/sys"),
        Row("scheduler", "argument", ("--grace", "x"), 2, "", "usage"),
        Row("scheduler", "runner", ("--runner", "nope"), 2, "runner", user="node/1"),
        Row("scheduler", "nan", ("--grace", "nan"), 2, "grace", user="node/1"),
        *path_rows("quickstart", "--keep"),
        *redis_rows("migrate"),
        Row("migrate", "node_user", (), 5, user="node/1"),
    ]
    return table


ROWS = rows()


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command of the parser, by its words (``destination add``)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[" ".join(words)] = parser
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, [*words, name])

    walk(build_parser(), [])
    return found


def needed_kinds(command: str, parser: argparse.ArgumentParser) -> set[str]:
    dests = {a.dest for a in parser._actions}
    kinds = set()
    if "data" in dests:
        kinds |= DATA_KINDS
    if command not in NO_REDIS:
        kinds |= REDIS_KINDS
    if dests & PATH_OPTIONS:
        kinds |= PATH_KINDS
    return kinds or {"usage"}


def test_every_command_has_its_rows() -> None:
    found = commands()
    assert len(found) >= 35
    have: dict[str, set[str]] = {}
    for row in ROWS:
        have.setdefault(row.command, set()).add(row.kind)
    assert set(have) <= set(found), set(have) - set(found)
    missing = {
        command: sorted(needed_kinds(command, parser) - have.get(command, set()))
        for command, parser in found.items()
    }
    assert not {c: k for c, k in missing.items() if k}, missing
    assert len({row.id for row in ROWS}) == len(ROWS), "two rows share an id"


# -- running a row --------------------------------------------------------------------------


@dataclasses.dataclass
class World:
    server: RedisServer
    tmp: Path
    file: Path
    dump: Path
    dest: str
    dead_url: str


@pytest.fixture(scope="module")
def world(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """NS8's users on the test cluster, one destination and one schedule, a user with no
    rights at all; shared by every row (none may write)."""
    from nsbackup.plugins import plugin_host
    from nsbackup.schedules import ScheduleService
    from nsbackup.store import Store

    redis_server.flush()
    client = seed_ns8(redis_server)
    dest = add_destination(
        client,
        plugin_host(),
        {"provider": "webdav", "url": "webdav:http://127.0.0.1:9/dav", "parameters": {}},
    ).id
    ScheduleService(Store(client)).add({**SCHEDULE, "repository": dest})
    client.execute_command(
        "ACL", "SETUSER", NO_RIGHTS, "reset", "on", f">{NO_RIGHTS}-pw", "nocommands"
    )
    client.execute_command("ACL", "SETUSER", NO_RIGHTS, "+@connection")
    client.close()
    tmp = tmp_path_factory.mktemp("cli-errors")
    file = tmp / "a-file"
    file.write_text("passphrase\n")
    dump = tmp / "dump.json.gz.gpg"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NSBACKUP_REDIS_URL", redis_server.url())
        env.setenv("REDIS_USER", "cluster")
        env.setenv("REDIS_PASSWORD", redis_server.admin_password)
        argv = ["dump", "export", "--out", str(dump), "--passphrase-file", str(file)]
        assert main(argv, io.StringIO(), io.StringIO()) == 0
    yield World(redis_server, tmp, file, dump, dest, f"redis://127.0.0.1:{free_port()}/0")
    reset_default(redis_server)
    redis_server.flush()


def password(server: RedisServer, user: str) -> str:
    if user == "cluster":
        return server.admin_password
    return f"{NO_RIGHTS}-pw" if user == NO_RIGHTS else PASSWORDS[user]


def invoke(
    world: World, row: Row, json_mode: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    fill = {
        "{dest}": world.dest,
        "{tmp}": str(world.tmp),
        "{file}": str(world.file),
        "{dump}": str(world.dump),
    }
    args = []
    for arg in row.args:
        for key, value in fill.items():
            arg = arg.replace(key, value)
        args.append(arg)
    server = world.server
    url = world.dead_url if row.redis == "down" else f"redis://{server.host}:{server.port}/0"
    monkeypatch.setenv("NSBACKUP_REDIS_URL", url)
    monkeypatch.setenv("REDIS_USER", row.user)
    monkeypatch.setenv("REDIS_PASSWORD", password(server, row.user))
    monkeypatch.setenv("NODE_ID", "1")
    for name in ("NSBACKUP_REDIS_LEADER_URL", "MODULE_ID", "NSBACKUP_MODULES_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(row.stdin))
    out, err = io.StringIO(), io.StringIO()
    argv = [*(["--json"] if json_mode else []), *row.command.split(), *args]
    code = main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [
        line for line in stderr.splitlines() if line.startswith("error: ") or ": error: " in line
    ]


@pytest.mark.parametrize(
    "row",
    [pytest.param(row, marks=[pytest.mark.skip(row.gap)] if row.gap else []) for row in ROWS],
    ids=[row.id for row in ROWS],
)
def test_bad_input(world: World, row: Row, monkeypatch: pytest.MonkeyPatch) -> None:
    before = dump_all(world.server)
    code, out, text_err = invoke(world, row, False, monkeypatch)
    assert code == row.code, text_err
    assert out == "", "text mode: the error goes to stderr only"
    code, out, err = invoke(world, row, True, monkeypatch)
    assert code == row.code, err
    assert dump_all(world.server) == before, "a refused command wrote to Redis"
    document = json.loads(out)  # exactly one JSON document, nothing else on stdout
    for stream in (text_err, err):
        assert "Traceback" not in stream
        lines = error_lines(stream)
        assert lines and len(lines) == len(set(lines)), stream
        assert all(len(line) <= 1010 for line in lines), "a message line is bounded"
        assert not any(c in line for line in lines for c in "\x1b\x00"), "escaped controls"
    assert error_lines(text_err) == error_lines(err), "text mode and --json say the same"
    if row.field is None:
        assert isinstance(document, dict) and document["message"], document
        assert len(error_lines(err)) == 1
        return
    assert isinstance(document, list) and document, document
    assert len(error_lines(err)) == len(document), "one line per error"
    named = [e for e in document if e["field"] == row.field]
    assert named, (row.field, document)
    if row.error is not None:
        assert row.error in {e["error"] for e in named}, document
    for entry in document:
        shown = json.dumps(entry["value"])
        assert len(shown) < 1000, "a refused value is not repeated whole"


# -- Redis addresses, and one error per missing field ------------------------------------------


class _Http(threading.Thread):
    """A port that answers, but not as Redis: an HTTP server."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler
        )
        self.port = self.server.server_address[1]

    def run(self) -> None:
        self.server.serve_forever()


@pytest.mark.parametrize(
    ("address", "code", "words"),
    [
        ("http://127.0.0.1:{port}/0", 2, "the scheme must be redis://"),
        ("redis://127.0.0.1:99999/0", 2, "Port out of range"),
        ("redis://{redis}/99", 5, "DB index is out of range"),
        ("redis://127.0.0.1:{dead}/0", 5, "Connection refused"),
        ("redis://127.0.0.1:{port}/0", 5, "not a Redis server"),
    ],
    ids=["http-scheme", "bad-port", "no-such-db", "nobody-listens", "not-redis"],
)
def test_a_redis_address_that_is_no_redis(
    world: World, address: str, code: int, words: str
) -> None:
    redis_db = world.server
    web = _Http()
    web.start()
    try:
        url = address.format(
            port=web.port, redis=f"{redis_db.host}:{redis_db.port}", dead=free_port()
        )
        for json_mode in (False, True):
            out, err = io.StringIO(), io.StringIO()
            argv = [*(["--json"] if json_mode else []), "--redis", url, "destination", "list"]
            with pytest.MonkeyPatch.context() as env:
                env.setenv("REDIS_USER", "cluster")
                env.setenv("REDIS_PASSWORD", redis_db.admin_password)
                assert main(argv, out, err) == code, err.getvalue()
            lines = error_lines(err.getvalue())
            assert len(lines) == 1 and words in lines[0], err.getvalue()
            assert "Traceback" not in err.getvalue()
            if json_mode:
                json.loads(out.getvalue())
            else:
                assert out.getvalue() == ""
    finally:
        web.server.shutdown()
        web.server.server_close()


@pytest.mark.parametrize(
    ("command", "payload", "field"),
    [
        ("backup add", {k: v for k, v in SCHEDULE.items() if k != "repository"}, "repository"),
        ("backup add", {k: v for k, v in SCHEDULE.items() if k != "schedule"}, "schedule"),
        ("backup add", {k: v for k, v in SCHEDULE.items() if k != "instances"}, "instances"),
        ("destination render", {k: v for k, v in B2.items() if k != "provider"}, "provider"),
    ],
)
def test_a_missing_field_is_one_required_error(
    world: World, command: str, payload: dict[str, Any], field: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NSBACKUP_REDIS_URL", f"redis://{world.server.host}:{world.server.port}/0")
        env.setenv("REDIS_USER", "cluster")
        env.setenv("REDIS_PASSWORD", world.server.admin_password)
        raw = json.dumps(payload).replace("{dest}", world.dest)
        code = main(["--json", *command.split(), "--data", raw], out, err)
    assert code == 2
    errors = json.loads(out.getvalue())
    assert [(e["field"], e["error"]) for e in errors] == [(field, "required")], errors
    assert err.getvalue() == f"error: {field}: {field} is required\n"


def test_a_file_system_error_no_command_caught_names_its_option() -> None:
    """The boundary's last resort (nsbackup.cli._unexpected): an OSError that escaped a
    command names the option whose path it is, with the exit code of docs/cli.md."""
    import errno

    from nsbackup.cli import _unexpected
    from nsbackup.errors import PermissionDenied, ValidationFailed

    args = argparse.Namespace(state_dir="/srv/gw", data='{"x": 1}', verbose=0)
    inside = FileExistsError(errno.EEXIST, "File exists", "/srv/gw/run")
    error = _unexpected(args, inside)
    assert isinstance(error, ValidationFailed) and error.exit_code == 2
    assert error.to_json()[0]["field"] == "state_dir"
    assert str(error) == "state_dir: /srv/gw (/srv/gw/run): not a directory (File exists)"
    elsewhere = PermissionError(errno.EACCES, "Permission denied", "/var/lib/x.lock")
    error = _unexpected(args, elsewhere)
    assert isinstance(error, PermissionDenied) and error.exit_code == 5
    assert str(error) == "permission denied: /var/lib/x.lock: Permission denied"
    full = OSError(errno.ENOSPC, "No space left on device", "/srv/gw/haproxy.cfg")
    assert _unexpected(args, full).exit_code == 1
    assert str(_unexpected(args, KeyError("x"))) == "internal error: KeyError (-v shows where)"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "127.0.0.1:4694", "http://u:p@h:1", "x"])
def test_a_gateway_url_from_the_environment_is_checked_like_the_option(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands that talk to the gateway refuse a bad NSBACKUP_GATEWAY_URL (exit 2, naming it)
    before anything runs; the others do not read it."""
    monkeypatch.setenv("NSBACKUP_GATEWAY_URL", url)
    monkeypatch.setenv("NSBACKUP_REDIS_URL", "redis://127.0.0.1:1/0")
    out, err = io.StringIO(), io.StringIO()
    assert main(["--json", "backup", "run", "1"], out, err) == 2, err.getvalue()
    [error] = json.loads(out.getvalue())
    assert (error["field"], error["error"]) == ("gateway", "invalid_url")
    assert "NSBACKUP_GATEWAY_URL" in error["message"] and "p@" not in out.getvalue()
    assert main(["--json", "providers"], io.StringIO(), io.StringIO()) == 0
