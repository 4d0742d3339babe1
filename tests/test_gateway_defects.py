"""Gateway defects of issue 13: ``--listen`` checked up front, an address another process
holds refused, bad directories reported, and a storage that never answers holding up nothing
else (the WebDAV stall)."""

from __future__ import annotations

import io
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from nsbackup.cli import main
from nsbackup.gateway.generation import START_TIMEOUT
from nsbackup.plugins import PluginHost
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    GatewayProcess,
    add_destination,
    add_local_destination,
    seed_loopback_cluster,
)
from tests.redis_server import RedisServer
from tests.servers import RcloneWebdavServer, free_port

REST_ACCEPT = {"Accept": "application/vnd.x.restic.rest.v2"}


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--redis", "redis://127.0.0.1:1/0", "--node", "1", *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("listen", ["foo", "127.0.0.3", "127.0.0.1:99999", "[::1]", "::1:80"])
@pytest.mark.parametrize("command", ["serve", "render"])
def test_listen_is_checked_before_anything(tmp_path: Path, command: str, listen: str) -> None:
    where = "--state-dir" if command == "serve" else "--out"
    code, out, err = cli(
        "--json", "gateway", command, where, str(tmp_path / "gw"), "--listen", listen
    )
    assert code == 2, err
    assert "--listen must be ADDR:PORT with a port 1-65535" in err
    assert '"field": "listen"' in out
    assert "Traceback" not in err
    assert not (tmp_path / "gw").exists()  # nothing was created


@pytest.mark.parametrize("command", ["serve", "render"])
def test_a_directory_that_is_a_file_or_cannot_be_made(tmp_path: Path, command: str) -> None:
    where = "--state-dir" if command == "serve" else "--out"
    field = where.lstrip("-").replace("-", "_")
    a_file = tmp_path / "file"
    a_file.write_text("not a directory\n")
    code, out, err = cli("--json", "gateway", command, where, str(a_file))
    assert code == 2, err
    assert f"{a_file} is not a directory ({where})" in err and f'"field": "{field}"' in out
    code, out, err = cli("gateway", command, where, str(a_file / "sub"))
    assert code == 2, err
    code, out, err = cli("gateway", command, where, "/sys/nsbackup-test")  # even root may not
    assert code == 5, err
    assert "Traceback" not in err
    if command == "serve":  # render reads Redis (unreachable here) before it makes --out
        assert "cannot create /sys/nsbackup-test" in err
    assert a_file.read_text() == "not a directory\n"


@pytest.fixture()
def cluster(redis_db: RedisServer) -> redis.Redis:
    client = redis_db.client()
    seed_loopback_cluster(client)
    return client


@pytest.mark.live
def test_an_address_in_use_is_refused(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    port = free_port(NODE_IPS["1"])
    dest = add_local_destination(cluster, host, port).id
    with GatewayProcess(redis_db, "1", port, tmp_path / "a", verbose="") as first:
        # a second gateway on the same address: refused before it starts anything
        second = GatewayProcess(redis_db, "1", port, tmp_path / "b", verbose="")
        second.start(expect_up=False)
        assert second.proc is not None
        assert second.proc.wait(timeout=30) == 5
        assert f"--listen 127.0.0.2:{port}: address in use" in second.log()
        assert not (tmp_path / "b" / "node1" / "state" / "run").exists()
        # HAProxy's own socket has no SO_REUSEPORT: nothing can share the port
        with socket.socket() as sharing:
            sharing.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError, match="in use"):
                sharing.bind((NODE_IPS["1"], port))
        probe = requests.get(f"{first.url}/{dest}/_probe_rest_404", timeout=5)
        assert probe.status_code == 404
    # anything else listening there
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((NODE_IPS["1"], port))
        holder.listen()
        third = GatewayProcess(redis_db, "1", port, tmp_path / "c", verbose="")
        third.start(expect_up=False)
        assert third.proc is not None and third.proc.wait(timeout=30) == 5
        assert "address in use" in third.log()


class Silent:
    """A TCP listener that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture()
def silent() -> Iterator[Silent]:
    listener = Silent()
    yield listener
    listener.close()


def elapsed(method: str, url: str, **kwargs: object) -> tuple[int, float]:
    start = time.monotonic()
    answer = requests.request(method, url, timeout=10, **kwargs)  # type: ignore[arg-type]
    return answer.status_code, time.monotonic() - start


@pytest.mark.live
def test_a_storage_that_never_answers_holds_up_nothing_else(
    cluster: redis.Redis,
    redis_db: RedisServer,
    host: PluginHost,
    tmp_path: Path,
    silent: Silent,
) -> None:
    """A WebDAV destination that accepts and never answers is dropped at start within
    START_TIMEOUT; one that stops answering while served stalls only its own requests, not
    the WebDAV or REST requests of the other destinations; and the gateway stops at once."""
    port = free_port(NODE_IPS["1"])
    local = add_local_destination(cluster, host, port).id
    (tmp_path / "dav" / "stalling").mkdir(parents=True)
    (tmp_path / "dav" / "stalling" / "file").write_text("hello\n")
    with RcloneWebdavServer(tmp_path / "dav", "davuser", "davpass") as dav:
        stalling = add_destination(
            cluster,
            host,
            {
                "provider": "webdav",
                "url": f"webdav:{dav.url}stalling",
                "parameters": {"webdav_user": "davuser", "webdav_pass": "davpass"},
            },
        ).id
        silent_id = add_destination(
            cluster,
            host,
            {"provider": "webdav", "url": f"webdav:http://127.0.0.1:{silent.port}/x"},
        ).id
        gw = GatewayProcess(redis_db, "1", port, tmp_path, verbose="")
        try:
            stall_and_stop(gw, dav, local, stalling, silent_id)
        finally:
            gw.stop()
            assert dav.proc is not None
            os.kill(dav.proc.pid, signal.SIGCONT)


def stall_and_stop(
    gw: GatewayProcess, dav: RcloneWebdavServer, local: str, stalling: str, silent_id: str
) -> None:
    start = time.monotonic()
    gw.start()
    started = time.monotonic() - start
    log = gw.log(None)
    assert (
        f"destination {silent_id} dropped from the gateway: its backend did not answer "
        f"within {START_TIMEOUT:g} s" in log
    )
    assert log.count("dropped from the gateway") == 1, log
    assert f"serving 2 destination(s): {', '.join(sorted([local, stalling]))}; dropped:" in log
    assert started < START_TIMEOUT + 10, started
    node = ("node/1", PASSWORDS["node/1"])
    assert requests.get(f"{gw.url}/{stalling}/file", auth=node, timeout=10).text == "hello\n"

    assert dav.proc is not None
    os.kill(dav.proc.pid, signal.SIGSTOP)  # the kernel accepts connections, nobody answers
    stalled: dict[str, object] = {}

    def hang() -> None:
        try:
            requests.get(f"{gw.url}/{stalling}/file", auth=node, timeout=120)
        except requests.RequestException as exc:
            stalled["error"] = exc

    threads = [threading.Thread(target=hang, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # not a synchronisation: gives the stalled requests a head start
    assert all(t.is_alive() for t in threads)
    timings = []
    for _ in range(5):
        status, took = elapsed("PROPFIND", f"{gw.url}/{local}/", auth=node, headers={"Depth": "1"})
        assert status == 207
        timings.append(took)
        status, took = elapsed(
            "GET",
            f"{gw.url}/{local}/mail/{module_uuid('mail1')}/config",
            auth=("module/mail1", PASSWORDS["module/mail1"]),
            headers=REST_ACCEPT,
        )
        assert status == 404
        timings.append(took)
    print(f"other destinations while one stalls: up to {max(timings):.3f} s")
    assert max(timings) < 1.0, timings
    assert all(t.is_alive() for t in threads)  # still waiting on the storage
    start = time.monotonic()
    assert gw.stop() == 0
    stopped = time.monotonic() - start
    print(f"start with a silent destination: {started:.1f} s; stop while stalled: {stopped:.1f} s")
    assert stopped < 10, stopped
