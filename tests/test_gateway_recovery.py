"""A gateway that heals itself (issue 12 item 3): rclone or HAProxy killed with SIGKILL comes
back within seconds and the log says what happened; a child that cannot come back makes
``gateway serve`` exit 5 so that systemd restarts it."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests

from nsbackup.gateway.context import GatewaySettings
from nsbackup.gateway.rc import haproxy_command
from nsbackup.plugins import PluginHost
from nsbackup.rclone import rclone_binary
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    GatewayProcess,
    add_destination,
    add_local_destination,
    seed_loopback_cluster,
    wait_for,
)
from tests.redis_server import RedisServer
from tests.servers import free_port

pytestmark = pytest.mark.live
REST_ACCEPT = {"Accept": "application/vnd.x.restic.rest.v2"}


@pytest.fixture()
def cluster(redis_db: RedisServer) -> redis.Redis:
    client = redis_db.client()
    seed_loopback_cluster(client)
    return client


def config_status(gw: GatewayProcess, dest: str) -> int:
    """A module's authenticated REST request (0: no answer at all)."""
    url = f"{gw.url}/{dest}/mail/{module_uuid('mail1')}/config"
    try:
        return requests.get(
            url, auth=("module/mail1", PASSWORDS["module/mail1"]), headers=REST_ACCEPT, timeout=5
        ).status_code
    except requests.RequestException:
        return 0


def show_proc(gw: GatewayProcess) -> str:
    return haproxy_command(GatewaySettings(gw.state_dir.resolve()).master_socket, "show proc", 5)


def pids(answer: str, kind: str) -> list[int]:
    current = answer.split("# old workers", 1)[0]
    return [
        int(w[0])
        for w in (line.split() for line in current.splitlines())
        if len(w) > 1 and w[0].isdigit() and w[1] == kind
    ]


def rclone_pids(gw: GatewayProcess) -> list[int]:
    run_dir = str(GatewaySettings(gw.state_dir.resolve()).run_dir)
    found = subprocess.run(
        ["pgrep", "-f", f"rcd .*{run_dir}"], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in found.split()]


def recovered(gw: GatewayProcess, dest: str, what: str, log_line: str) -> float:
    """Seconds until authenticated requests are answered again and the log says it."""
    start = time.monotonic()
    wait_for(
        lambda: config_status(gw, dest) == 404 and log_line in gw.log(None),
        timeout=15,
        what=what,
    )
    assert gw.proc is not None and gw.proc.poll() is None, gw.log()
    return time.monotonic() - start


def test_killed_rclone_worker_and_master_come_back(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    port = free_port(NODE_IPS["1"])
    dest = add_local_destination(cluster, host, port).id
    with GatewayProcess(redis_db, "1", port, tmp_path, verbose="") as gw:
        assert config_status(gw, dest) == 404  # no repository yet: rclone answers

        # 1. rclone rcd: a new generation, HAProxy reloaded onto it
        (rcd,) = rclone_pids(gw)
        os.kill(rcd, signal.SIGKILL)
        took = recovered(gw, dest, "rclone back", "rclone restarted: generation 1")
        assert f"rclone rcd of generation 0 (pid {rcd}) died (killed by SIGKILL)" in gw.log(None)
        assert rclone_pids(gw) and rcd not in rclone_pids(gw)
        print(f"rclone: {took:.2f} s")

        # 2. the HAProxy worker: its master ends too; HAProxy starts again
        before = show_proc(gw)
        (worker,) = pids(before, "worker")
        (master,) = pids(before, "master")
        os.kill(worker, signal.SIGKILL)
        took = recovered(gw, dest, "haproxy back after its worker", "haproxy restarted")
        log = gw.log(None)
        assert f"haproxy (master pid {master}) exited" in log
        assert f"Current worker ({worker}) exited with code 137" in log
        print(f"haproxy worker: {took:.2f} s")

        # 3. the HAProxy master
        (master,) = pids(show_proc(gw), "master")
        os.kill(master, signal.SIGKILL)
        took = recovered(
            gw, dest, "haproxy back after its master", f"(master pid {master}) exited (killed"
        )
        wait_for(lambda: gw.log(None).count("haproxy restarted") == 2, 10, "the second restart")
        print(f"haproxy master: {took:.2f} s")
        assert "ALERT" not in gw.log(None) and "Traceback" not in gw.log(None)
        assert gw.stop() == 0


def test_a_child_that_cannot_come_back_ends_serve_with_exit_5(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    """rclone starts, is killed, and every restart fails: serve gives up within the backoff
    (0.5 + 1 + 2 + 4 s) and exits 5, naming what failed."""
    broken = tmp_path / "broken"
    wrapper = tmp_path / "rclone"
    wrapper.write_text(
        f'#!/bin/sh\n[ -e "{broken}" ] && {{ echo "rclone is broken" >&2; exit 1; }}\n'
        f'exec "{rclone_binary()}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    port = free_port(NODE_IPS["1"])
    dest = add_local_destination(cluster, host, port).id
    gw = GatewayProcess(
        redis_db, "1", port, tmp_path, env={"NSBACKUP_RCLONE": str(wrapper)}, verbose=""
    )
    with gw:
        assert config_status(gw, dest) == 404
        broken.write_text("")
        os.kill(rclone_pids(gw)[0], signal.SIGKILL)
        start = time.monotonic()
        assert gw.proc is not None
        code = gw.proc.wait(timeout=30)
        took = time.monotonic() - start
    log = gw.log(None)
    assert code == 5, log
    assert "rclone failed 5 times within 60 s: giving up (systemd restarts the gateway)" in log
    assert log.count("rclone could not be restarted (rclone rcd exited (status 1))") == 3, log
    assert "Traceback" not in log
    assert 7 <= took < 20, took
    assert rclone_pids(gw) == [] and not GatewaySettings(gw.state_dir.resolve()).run_dir.exists()


def test_a_dropped_destination_is_taken_in_when_it_answers_again(
    cluster: redis.Redis,
    redis_db: RedisServer,
    host: PluginHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In-process, with the retry every 0.5 s instead of 60: a WebDAV storage that refuses
    connections is dropped at start, and served once it answers."""
    import threading

    from nsbackup.api import Cluster
    from nsbackup.gateway import serve

    monkeypatch.setattr(serve, "RETRY_DROPPED", 0.5)
    port = free_port(NODE_IPS["1"])
    add_local_destination(cluster, host, port)
    dav_port = free_port()
    late = add_destination(
        cluster, host, {"provider": "webdav", "url": f"webdav:http://127.0.0.1:{dav_port}/late"}
    ).id
    node = Cluster.from_url(
        f"redis://{redis_db.host}:{redis_db.port}/0",
        username="node/1",
        password=PASSWORDS["node/1"],
        node_id="1",
    )
    gateway = node.gateway.server(
        tmp_path / "state", listen=f"{NODE_IPS['1']}:{port}", repo_dir=str(tmp_path / "repo")
    )
    probe = f"http://{NODE_IPS['1']}:{port}/{late}/_probe_rest_404"
    (tmp_path / "dav" / "late").mkdir(parents=True)
    dav: subprocess.Popen[bytes] | None = None
    with caplog.at_level(logging.INFO, logger="nsbackup.gateway"):
        gateway.start()
        loop = threading.Thread(target=gateway.serve_forever)
        loop.start()
        try:
            assert list(gateway.dropped) == [late]
            assert requests.get(probe, timeout=5).status_code != 404
            serve_dav = ["serve", "webdav", str(tmp_path / "dav"), "--config", os.devnull]
            dav = subprocess.Popen(
                [rclone_binary(), *serve_dav, "--addr", f"127.0.0.1:{dav_port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for(
                lambda: requests.get(probe, timeout=5).status_code == 404,
                timeout=20,
                what="the destination served again",
            )
            assert gateway.dropped == {}
        finally:
            gateway.request_stop()
            loop.join(timeout=30)
            gateway.stop()
            if dav is not None:
                dav.terminate()
                dav.wait(timeout=10)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"destination {late} dropped from the gateway: ") for m in messages)
    assert f"destination {late} recovered: served again" in messages
    assert any(
        m.startswith(f"generation reloaded (dropped destination(s) {late} answer again)")
        for m in messages
    )
