"""The gateway's pure parts: restart delays, ``--listen``, what a reload changed, access log
records, which HAProxy and rclone lines an operator sees, the log format, the status file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsbackup.errors import Unreachable, ValidationFailed
from nsbackup.gateway.access import AccessLogWriter, parse_record, printable
from nsbackup.gateway.changes import cluster_changes, destination_changes, map_changes
from nsbackup.gateway.context import GatewaySettings, parse_listen
from nsbackup.gateway.logs import GatewayFormatter, HaproxyRelay, journal_stream, relay_rclone
from nsbackup.gateway.render import build_context, render_files, write_files
from nsbackup.gateway.serve import Backoff, Child, GiveUp
from nsbackup.gateway.status import STATUS_VERSION, read_status
from nsbackup.plugins import PluginHost
from tests.test_gateway_render import fixed_state

# -- restarts ---------------------------------------------------------------------------------


def test_backoff_doubles_then_gives_up_within_its_window() -> None:
    backoff = Backoff()
    assert [backoff.failed(t) for t in (0, 1, 2, 3)] == [0.5, 1, 2, 4]
    assert backoff.failed(4) is None  # the fifth failure within a minute
    slow = Backoff()
    assert [slow.failed(t * 61.0) for t in range(10)] == [0.5] * 10  # one a minute: forever
    capped = Backoff(limit=100)
    assert max(capped.failed(t) or 0 for t in range(10)) == 8


def test_a_child_gives_up_with_what_happened() -> None:
    child = Child("rclone")
    for moment in range(4):
        child.fail(moment, "died")
    assert child.due == 3 + 4 and child.failed_at == 0
    with pytest.raises(GiveUp, match=r"^died; rclone failed 5 times within 60 s: giving up"):
        child.fail(4, "died")
    assert GiveUp.exit_code == 5


# -- --listen ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen, parsed",
    [("0.0.0.0:4694", ("0.0.0.0", 4694)), ("[::1]:1", ("::1", 1)), ("10.5.4.1:65535", None)],
)
def test_listen_forms_that_work(listen: str, parsed: tuple[str, int] | None) -> None:
    assert parse_listen(listen) == (parsed or ("10.5.4.1", 65535))


@pytest.mark.parametrize(
    "listen",
    ["foo", "127.0.0.3", "127.0.0.1:99999", "127.0.0.1:0", "[::1]", "::1:80", "[1.2.3.4]:80", ""],
)
def test_listen_forms_that_are_refused(listen: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_listen(listen)
    (error,) = caught.value.errors
    assert error.field == "listen" and error.error == "invalid_listen"
    assert error.message.startswith("--listen must be ADDR:PORT with a port 1-65535")


# -- what changed -----------------------------------------------------------------------------


def test_map_changes_name_users_and_modules_never_hashes() -> None:
    old = {
        "auth.map": "node/1:" + "a" * 64 + " nodes\nmodule/mail1:" + "b" * 64 + " modules\n",
        "modrepo.map": "module/mail1 mail/u1\n",
    }
    new = {
        "auth.map": "node/1:" + "c" * 64 + " nodes\nmodule/mail2:" + "d" * 64 + " modules\n",
        "modrepo.map": "module/mail2 mail/u2\nmail/u2 mail/u1\n",
    }
    phrases = map_changes(old, new)
    assert phrases == [
        "users added: module/mail2",
        "users removed: module/mail1",
        "password changed: node/1",
        "modules added: module/mail2",
        "modules removed: module/mail1",
        "restore grants added: mail/u2->mail/u1",
    ]
    assert not any(c * 64 in " ".join(phrases) for c in "abcd")
    assert map_changes(new, new) == []


def test_destination_and_cluster_changes(host: PluginHost) -> None:
    settings = GatewaySettings(Path("/gw"))
    old, _ = build_context(fixed_state(), host, "1", settings)
    state = fixed_state()
    state = attrs.evolve(state, network="10.5.0.0/16", leader="12")
    new, _ = build_context(state, host, "1", settings)
    assert destination_changes({"a": "1", "b": "1", "c": "1"}, {"b": "2", "c": "1", "d": "1"}) == [
        "destinations added: d",
        "destinations changed: b",
        "destinations removed: a",
    ]
    assert cluster_changes(old, new) == [
        f"cluster network {old.cluster_network} -> 10.5.0.0/16",
        f"leader node {old.state.leader} -> node 12",
    ]
    assert cluster_changes(old, old) == [] and cluster_changes(None, new) == []


# -- access log -------------------------------------------------------------------------------


def record(user: bytes, path: bytes = b"/d/x", method: bytes = b"GET") -> bytes:
    fields = [b"1796140000.250", b"127.0.0.1:4000", b"x" + user.hex().encode()]
    fields += [b"x" + method.hex().encode(), b"x" + path.hex().encode()]
    return b" ".join([*fields, b"401", b"263", b"120", b"3", b"gateway"]) + b"\n"


def test_access_records_are_one_line_of_printable_words() -> None:
    parsed = parse_record(record(b"module/mail1"))
    assert parsed is not None
    words = parsed.line().split(" ")
    assert words[1:] == [
        "127.0.0.1:4000",
        "module/mail1",
        "GET",
        "/d/x",
        "401",
        "263",
        "120",
        "3ms",
        "gateway",
    ]
    tricky = parse_record(record(b"evil\nuser 200 \xff\\"))
    assert tricky is not None
    assert tricky.user == "evil\\x0auser\\x20200\\x20\\ufffd\\x5c"
    assert "\n" not in tricky.line() and len(tricky.line().split(" ")) == 10
    unset = parse_record(b"1.0 127.0.0.1:1 x- x474554 x2f 400 0 0 0 gateway")
    assert unset is not None and unset.line().split(" ")[2] == "-"
    assert parse_record(b"not an access record") is None
    assert parse_record(record(b"u").replace(b" x", b" y", 1)) is None


@given(st.text())
def test_printable_leaves_no_space_or_control(text: str) -> None:
    shown = printable(text, limit=10_000)
    assert all("!" <= c <= "~" for c in shown)


def test_access_log_file_is_private_and_follows_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = AccessLogWriter(str(path))
    writer.write("one")
    assert path.stat().st_mode & 0o777 == 0o600
    path.rename(tmp_path / "access.log.1")  # logrotate
    writer.write("two")
    writer.close()
    assert path.read_text() == "two\n" and (tmp_path / "access.log.1").read_text() == "one\n"


def test_the_access_log_is_rendered_only_when_asked(host: PluginHost, tmp_path: Path) -> None:
    for on in (False, True):
        settings = GatewaySettings(tmp_path / str(on), listen="127.0.0.1:4694", access_log=on)
        context, _ = build_context(fixed_state(), host, "1", settings)
        files = render_files(host, context)
        config = files["haproxy.cfg"][0]
        assert ("log unix@" in config) == on and ("set-var(txn.log_path) path" in config) == on
        assert "noreuseport" in config
        assert "http_auth_pass" not in config.split("log-format", 1)[-1].split("\n", 1)[0]
        write_files(settings.state_dir, files)
        checked = subprocess.run(
            ["haproxy", "-c", "-f", str(settings.state_dir / "haproxy.cfg")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr


# -- what the log shows -----------------------------------------------------------------------

UUID = "5a5a5a5a-0000-5000-8000-000000000002"
HEX = UUID.replace("-", "")


@pytest.mark.parametrize(
    "line, level, shown",
    [
        ("[NOTICE]   (10) : New worker (11) forked", logging.DEBUG, "New worker"),
        (
            f"[WARNING]  (11) : Server gw_d1_{HEX}/gw2 is DOWN, reason: Layer4 connection problem",
            logging.DEBUG,
            "gw2 is DOWN",
        ),
        (f"[ALERT]    (11) : backend 'gw_d1_{HEX}' has no server available!", logging.DEBUG, ""),
        ("[WARNING]  (11) : Proxy gateway stopped (cumulated conns: FE: 1, BE: 0).", 10, ""),
        ("[WARNING]  (10) : Former worker (11) exited with code 0 (Exit)", logging.DEBUG, ""),
        (
            f"[WARNING]  (11) : Server rest_d1_{HEX}/rest0 is DOWN, reason: Layer7 wrong status, "
            "code: 500",
            logging.WARNING,
            f"destination {UUID}: the local rclone server fails its health check "
            "(Layer7 wrong status)",
        ),
        (f"[WARNING]  (11) : Server rest_d1_{HEX}/rest0 is UP", logging.INFO, "passes"),
        (
            "[ALERT]    (10) : Current worker (11) exited with code 137 (Killed)",
            logging.WARNING,
            "Current worker (11) exited with code 137 (Killed)",
        ),
        ("[ALERT]    (10) : exit-on-failure: killing every processes with SIGTERM", 10, ""),
        ("[ALERT]    (10) : Binding [x:1] for frontend f: cannot bind socket", 40, "cannot bind"),
        ("something HAProxy did not format", logging.WARNING, "something"),
    ],
)
def test_haproxy_lines(caplog: pytest.LogCaptureFixture, line: str, level: int, shown: str) -> None:
    relay = HaproxyRelay()
    with caplog.at_level(logging.DEBUG, logger="nsbackup.gateway"):
        relay("haproxy", line)
    (logged,) = caplog.records
    assert logged.levelno == level and shown in logged.getMessage()
    assert (relay.last_worker_exit is not None) == ("exited with code 137" in line)
    assert (relay.last_alert is not None) == ("[ALERT]" in line)


def test_haproxy_lines_of_a_clean_stop_and_of_dropped_destinations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = HaproxyRelay()
    relay.stopping = True
    relay.dropped = frozenset({UUID})
    with caplog.at_level(logging.INFO, logger="nsbackup.gateway"):
        relay("haproxy", "[WARNING]  (10) : Exiting Master process...")
        relay("haproxy", "[ALERT]    (10) : Current worker (11) exited with code 143 (Terminated)")
        relay("haproxy", "[WARNING]  (10) : All workers exited. Exiting... (0)")
        relay("haproxy", f"[WARNING]  (11) : Server rest_d1_{HEX}/rest0 is DOWN, reason: x")
    assert caplog.records == []
    assert relay.last_worker_exit is None


@pytest.mark.parametrize(
    "line, level",
    [
        ("2026/12/01 15:12:03 NOTICE: combine root '': WebDav Server started on []", 10),
        ("2026/12/01 15:12:03 ERROR : x: Post request: file already exists", logging.WARNING),
        ("2026/12/01 15:12:03 NOTICE: Time may be set wrong", logging.INFO),
        ("2026/12/01 15:12:03 INFO  : x: Copied (new)", logging.DEBUG),
        ("panic: runtime error", logging.WARNING),
    ],
)
def test_rclone_lines(caplog: pytest.LogCaptureFixture, line: str, level: int) -> None:
    with caplog.at_level(logging.DEBUG, logger="nsbackup.gateway"):
        relay_rclone("rclone g3", line)
    (logged,) = caplog.records
    assert logged.levelno == level and logged.getMessage().startswith("rclone g3: ")
    assert "2026/12/01" not in logged.getMessage()


def test_log_format_for_the_journal_and_elsewhere() -> None:
    entry = logging.LogRecord("nsbackup.gateway", logging.WARNING, "", 0, "one\ntwo", None, None)
    assert GatewayFormatter(journal=True).format(entry) == "<4>one\n<4>two"
    entry.levelno, entry.levelname = logging.INFO, "INFO"
    assert GatewayFormatter(journal=True).format(entry) == "<6>one\n<6>two"
    plain = GatewayFormatter(journal=False).format(entry).splitlines()
    assert all(line.split(" ", 2)[1:] in (["INFO", "one"], ["INFO", "two"]) for line in plain)
    assert plain[0].split(" ")[0].count(":") >= 2 and "T" in plain[0].split(" ")[0]


def test_the_journal_is_recognised_by_its_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stream").open("w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert journal_stream(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
        assert not journal_stream(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journal_stream(stream)


# -- status -----------------------------------------------------------------------------------


def test_status_of_a_gateway_that_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(Unreachable, match=r"no gateway is running for .* \(no status.json"):
        read_status(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    status = {"version": STATUS_VERSION, "pid": gone.pid, "pid_start": 1}
    (tmp_path / "status.json").write_text(json.dumps(status))
    with pytest.raises(Unreachable, match=f"pid {gone.pid}\\) has exited"):
        read_status(tmp_path)
    status["pid"], status["pid_start"] = os.getpid(), 0  # a pid reused by another process
    (tmp_path / "status.json").write_text(json.dumps(status))
    with pytest.raises(Unreachable, match="has exited"):
        read_status(tmp_path)
