"""A gateway you can watch (issue 13): the log an operator reads, the access log and
``gateway status``, on a real gateway."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
import redis
import requests

from nsbackup.plugins import PluginHost
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    NSBACKUP,
    GatewayProcess,
    add_local_destination,
    seed_loopback_cluster,
    wait_for,
)
from tests.redis_server import RedisServer
from tests.servers import free_port

pytestmark = pytest.mark.live
REST_ACCEPT = {"Accept": "application/vnd.x.restic.rest.v2"}
WRONG = "wrong-password-Zq7"


@pytest.fixture()
def cluster(redis_db: RedisServer) -> redis.Redis:
    client = redis_db.client()
    seed_loopback_cluster(client)
    return client


def status(gw: GatewayProcess, *options: str) -> tuple[int, str, str]:
    result = subprocess.run(
        [NSBACKUP, "gateway", "status", "--state-dir", str(gw.state_dir), *options],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def secrets_in(text: str) -> list[str]:
    """Every password of the test cluster (and the wrong one), plain or as Basic credentials."""
    found = []
    for user, password in [*PASSWORDS.items(), ("module/mail1", WRONG)]:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        found += [s for s in (password, basic, basic.rstrip("=")) if s in text]
    return found


def test_access_log_status_and_a_quiet_log(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    port = free_port(NODE_IPS["1"])
    local = add_local_destination(cluster, host, port).id
    peer = add_local_destination(cluster, host, port, node="2").id  # node 2 runs no gateway
    access = tmp_path / "access.log"
    gw = GatewayProcess(
        redis_db, "1", port, tmp_path, args=("--access-log", str(access)), verbose=""
    )
    with gw:
        repo = f"{gw.url}/{local}/mail/{module_uuid('mail1')}"
        mail1 = ("module/mail1", PASSWORDS["module/mail1"])
        asked = [
            requests.get(f"{repo}/config", auth=mail1, headers=REST_ACCEPT, timeout=5),
            requests.get(f"{repo}/config", auth=("module/mail1", WRONG), timeout=5),
            requests.get(f"{repo}/config?token={WRONG}", timeout=5),
            requests.get(
                f"{gw.url}/{local}/dokuwiki/{module_uuid('dokuwiki1')}/config",
                auth=mail1,
                headers=REST_ACCEPT,
                timeout=5,
            ),
            requests.request(
                "PROPFIND",
                f"{gw.url}/{local}/",
                auth=("node/1", PASSWORDS["node/1"]),
                headers={"Depth": "1"},
                timeout=5,
            ),
        ]
        assert [a.status_code for a in asked] == [404, 401, 401, 403, 207]
        wait_for(lambda: len(_asked(access)) >= 5, 10, "five access log lines")
        lines = _asked(access)
        cut = [(w[2], w[3], w[4], w[5]) for w in lines]
        path = f"/{local}/mail/{module_uuid('mail1')}/config"
        assert cut == [
            ("module/mail1", "GET", path, "404"),
            ("module/mail1", "GET", path, "401"),
            ("-", "GET", path, "401"),  # no query: the token is not logged
            (
                "module/mail1",
                "GET",
                f"/{local}/dokuwiki/{module_uuid('dokuwiki1')}/config",
                "403",
            ),
            ("node/1", "PROPFIND", f"/{local}/", "207"),
        ]
        for words in lines:  # time, source, ..., bytes sent and received, duration, backend
            assert len(words) == 10 and words[1].startswith("127.0.0.1:")
            assert words[6].isdigit() and words[7].isdigit() and words[8].endswith("ms")
        assert lines[0][9] == "restic_append" and lines[4][9].startswith("dav_")
        assert os.stat(access).st_mode & 0o777 == 0o600

        code, out, err = status(gw, "--json")
        assert code == 0, err
        seen = json.loads(out)
        assert seen["generation"]["number"] == 0 and seen["generation"]["served"] == [local]
        assert seen["redis"] == {**seen["redis"], "connected": True, "user": "node/1"}
        live = seen["live"]
        assert live["haproxy"]["up"] and live["rclone"]["up"] and live["healthy"]
        assert isinstance(live["haproxy"]["connections"], int) and live["haproxy"]["workers"]
        assert seen["access_log"] == str(access) and seen["pid"] == gw.proc.pid  # type: ignore[union-attr]
        code, out, _ = status(gw)
        assert code == 0 and "haproxy: up" in out and "events received as Redis user node/1" in out

        cluster.publish("cluster/event/backup-destination-changed", "{}")  # nothing changed
        cluster.set("cluster/network", "127.0.0.0/9")
        cluster.publish("cluster/event/backup-destination-changed", "{}")
        wait_for(
            lambda: json.loads(status(gw, "--json")[1])["generation"]["number"] == 1,
            10,
            "the status of the new generation",
        )
    assert gw.proc is not None and gw.proc.returncode == 0
    code, out, err = status(gw)
    assert code == 5 and "no gateway is running" in err

    log = gw.log(None)
    assert f"generation 0 serving 1 destination(s): {local}" in log
    assert (
        "generation reloaded (backup-destination-changed): generation 1 serves 1 destination(s); "
        "cluster network 127.0.0.0/8 -> 127.0.0.0/9" in log
    )
    assert log.count("gateway of node 1 stopped") == 1
    # absent peers, reloads and the stop make no noise at the default level
    assert "ALERT" not in log and "WARNING" not in log and "NOTICE" not in log, log
    assert peer not in log
    raw = access.read_text() + log
    assert secrets_in(raw) == []


def test_access_log_on_standard_output(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    port = free_port(NODE_IPS["1"])
    local = add_local_destination(cluster, host, port).id
    with GatewayProcess(redis_db, "1", port, tmp_path, args=("--access-log",), verbose="") as gw:
        path = f"/{local}/mail/{module_uuid('mail1')}/config"
        assert (
            requests.get(gw.url + path, auth=("module/mail1", WRONG), timeout=5).status_code == 401
        )
        wait_for(lambda: f" {path} 401 " in gw.log(None), 10, "the access log line")
    assert f" module/mail1 GET {path} 401 " in gw.log(None)
    assert secrets_in(gw.log(None)) == []


def _asked(path: Path) -> list[list[str]]:
    """The access log's lines as words, without the fixture's requests for ``/``."""
    try:
        lines = [line.split() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []
    return [words for words in lines if words[4] != "/"]
