"""Idle and slow clients cannot lock authenticated traffic out of the gateway (issue 8 item 4).

A client that opens a connection, sends half a request header and waits holds one of HAProxy's
connection slots (and a buffer) until ``timeout http-request``. Before the fix 2,100 of them
(0.1 s to open from one process) filled ``maxconn 2048`` and every other request waited ~30 s.
Here they are held open while an authenticated restic REST request and a real
``restic snapshots`` go through the gateway, each within 5 s; and a stalled connection is
answered 408 and closed once ``timeout http-request`` has passed.

The memory these connections cost is measured, not asserted: ``bench/gateway_limits.py``.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
import requests

from nsbackup.gateway.context import (
    FILES_PER_CONNECTION,
    MAXCONN,
    RESERVED_FILES,
    GatewaySettings,
)
from nsbackup.gateway.rc import haproxy_command
from nsbackup.plugins import PluginHost
from nsbackup.restic import restic_env, run_restic
from tests import gateway_fixture
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    NSBACKUP,
    RESTIC_PASSWORD,
    GatewayProcess,
    add_local_destination,
    seed_loopback_cluster,
    wait_for,
)
from tests.redis_server import RedisServer
from tests.servers import free_port

pytestmark = pytest.mark.live

HALF_HEADER = b"GET / HTTP/1.1\r\nHost: 127.0.0.2\r\nAccept: application/vnd.x.res"
"""The start of a request header: HAProxy waits for the rest."""
ANSWER_WITHIN = 5.0
"""Seconds an authenticated request may take while the flood is held."""


@contextlib.contextmanager
def open_files(needed: int) -> Iterator[None]:
    """Raise this process's RLIMIT_NOFILE soft limit to at least ``needed`` (up to the hard
    limit), restoring it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed > hard:
        raise RuntimeError(f"{needed} file descriptors needed, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class HeaderFlood:
    """``count`` connections to ``address`` that each send ``payload`` (the start of a request)
    and then wait, as a stalled client does - or a local process that wants to stall everyone.

    Sources rotate over 127.0.<n>.1 every 20,000 connections (one source address has ~28,000
    ephemeral ports).
    """

    def __init__(self, address: tuple[str, int], count: int, payload: bytes = HALF_HEADER) -> None:
        self.address = address
        self.count = count
        self.payload = payload
        self.sockets: list[socket.socket] = []

    def open(self) -> Self:
        try:
            for index in range(self.count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.sockets.append(sock)
                sock.settimeout(10)
                sock.bind((f"127.0.{1 + index // 20_000}.1", 0))
                sock.connect(self.address)
                sock.sendall(self.payload)
                sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        return self

    def waiting(self) -> int:
        """How many connections HAProxy has neither answered nor closed."""
        waiting = 0
        for sock in self.sockets:
            try:
                sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                waiting += 1
            except OSError as exc:
                if exc.errno != errno.ECONNRESET:
                    raise
        return waiting

    def answers(self) -> list[bytes]:
        """The first bytes HAProxy sent on each connection (b"" when it closed silently)."""
        result = []
        for sock in self.sockets:
            try:
                result.append(sock.recv(64))
            except BlockingIOError:
                result.append(b"<waiting>")
            except ConnectionResetError:
                result.append(b"")
        return result

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def haproxy_info(admin_socket: str) -> dict[str, str]:
    """``show info`` of the HAProxy worker behind ``admin_socket``."""
    answer = haproxy_command(admin_socket, "show info")
    return dict(line.split(": ", 1) for line in answer.splitlines() if ": " in line)


# -- the gateway ----------------------------------------------------------------------------


@dataclass
class Node:
    gw: GatewayProcess
    repo: str
    admin_socket: str

    def restic_env(self) -> dict[str, str]:
        return restic_env(
            repository_path=self.repo,
            user="module/mail1",
            password=PASSWORDS["module/mail1"],
            restic_password=RESTIC_PASSWORD,
            gateway_url=self.gw.url,
        )

    def rest_get(self, path: str) -> requests.Response:
        """One authenticated restic REST request on a new connection."""
        with requests.Session() as session:
            return session.get(
                f"{self.gw.url}/{self.repo}/{path}",
                auth=("module/mail1", PASSWORDS["module/mail1"]),
                headers={"Accept": "application/vnd.x.restic.rest.v2", "Connection": "close"},
                timeout=ANSWER_WITHIN,
            )


@pytest.fixture(scope="module")
def node(
    redis_server: RedisServer, host: PluginHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    redis_server.flush()
    client = redis_server.client()
    seed_loopback_cluster(client)
    port = free_port(NODE_IPS["1"])
    dest = add_local_destination(client, host, port)
    client.close()
    base = tmp_path_factory.mktemp("limits")
    with GatewayProcess(redis_server, "1", port, base) as gw:
        node = Node(
            gw,
            f"{dest.id}/mail/{module_uuid('mail1')}",
            GatewaySettings(gw.state_dir.resolve()).admin_socket,
        )
        env = node.restic_env()
        source = base / "data"
        source.mkdir()
        (source / "file.txt").write_text("backed up before the flood\n" * 100)
        for args in (["init"], ["backup", str(source)]):
            result = run_restic(["--no-cache", *args], env, timeout=120)
            assert result.returncode == 0, result.stderr
        yield node


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2100, 6000])
def test_authenticated_requests_pass_while_idle_connections_are_held(
    node: Node, count: int
) -> None:
    """``count`` half-header connections from one local process are held open (HAProxy has
    accepted every one of them) while a module's REST request and ``restic snapshots`` are
    each answered within 5 s."""
    address = (node.gw.ip, node.gw.port)
    with open_files(count + 256), HeaderFlood(address, count) as flood:
        slots = int(haproxy_info(node.admin_socket)["Maxconn"])
        wait_for(
            lambda: int(haproxy_info(node.admin_socket)["CurrConns"]) >= min(count, slots),
            timeout=ANSWER_WITHIN,
            what=f"HAProxy to accept the {count} idle connections",
        )
        # each raises (and fails the test) when not answered within ANSWER_WITHIN
        response = node.rest_get("config")
        assert response.status_code == 200
        result = run_restic(
            ["--no-cache", "snapshots", "--json"], node.restic_env(), timeout=ANSWER_WITHIN
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("[{")  # the snapshot made before the flood
        # every idle connection was accepted, and still held once the requests were answered
        assert count < slots
        assert flood.waiting() == count


def test_a_stalled_request_is_answered_408_and_closed(node: Node) -> None:
    """``timeout http-request`` is short: a client that never finishes its header gets its
    slot taken back (408, connection closed) within seconds, not minutes."""
    timeout = _http_request_timeout(node.gw.state_dir / "haproxy.cfg")
    assert timeout <= 10
    with HeaderFlood((node.gw.ip, node.gw.port), 20) as flood:
        started = time.monotonic()
        wait_for(lambda: flood.waiting() == 0, timeout=timeout + 5, what="HAProxy to time out")
        assert time.monotonic() - started >= timeout - 1  # not cut before the timeout either
        answers = flood.answers()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:3]


def _http_request_timeout(config: Path) -> float:
    for line in config.read_text().splitlines():
        words = line.split()
        if words[:2] == ["timeout", "http-request"]:
            value = words[2]
            return float(value[:-1]) if value.endswith("s") else float(value) / 1000
    raise AssertionError("no timeout http-request in haproxy.cfg")


def test_a_low_file_limit_lowers_maxconn_instead_of_stopping_the_gateway(
    redis_server: RedisServer,
    node: Node,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HAProxy cannot pass the hard RLIMIT_NOFILE it inherits and refuses to start when
    ``maxconn`` needs more: serve renders the ``maxconn`` the limit allows, and says so."""
    wrapper = tmp_path / "nsbackup-4096"
    wrapper.write_text(f'#!/bin/sh\nexec prlimit --nofile=1024:4096 -- {NSBACKUP} "$@"\n')
    wrapper.chmod(0o700)
    monkeypatch.setattr(gateway_fixture, "NSBACKUP", str(wrapper))
    port = free_port(NODE_IPS["1"])
    with GatewayProcess(redis_server, "1", port, tmp_path, listen_ip=NODE_IPS["1"]) as gw:
        admin = GatewaySettings(gw.state_dir.resolve()).admin_socket
        expected = (4096 - RESERVED_FILES) // FILES_PER_CONNECTION
        assert int(haproxy_info(admin)["Maxconn"]) == expected
        assert f"HAProxy gets maxconn {expected} instead of {MAXCONN}" in gw.log()
        assert f"maxconn {expected}\n" in (gw.state_dir / "haproxy.cfg").read_text()


def test_a_file_limit_too_low_for_any_gateway_is_reported() -> None:
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))\n"
        "from nsbackup.gateway.serve import fit_maxconn\n"
        "fit_maxconn(8000)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "open files but the hard limit is 300" in result.stderr
