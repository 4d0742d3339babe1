"""A destination whose root turns out to be a file is dropped like one that fails to start,
so it cannot hold every other change (ACLs included) back.

rclone's combine remote refuses an upstream whose root is a file ("can't combine files yet,
only directories ..."). The gateway only dropped upstreams that failed to be created: any
other refusal failed the whole new generation, and with it the ACL change that came in the
same reload - modules added meanwhile were never let in (seen in tests/test_runs.py, after an
S3 destination's server was gone and its port answered something else).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from nsbackup import acl
from nsbackup.plugins import PluginHost
from tests.cluster_seed import module_uuid
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


def add_module_user(client: redis.Redis, mid: str, password: str) -> None:
    """A new module on node 1, as NS8 writes it, and the ACL event."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    pipe = client.pipeline(transaction=True)
    pipe.hset("cluster/module_node", mid, "1")
    pipe.hset("cluster/module_uuid", mid, module_uuid(mid))
    pipe.sadd("cluster/acls", acl.acl_line(f"module/{mid}", digest, acl.module_rules(mid)))
    pipe.publish("cluster/event/acl-changed", "cluster/acls")
    pipe.execute()


@pytest.fixture()
def cluster(redis_db: RedisServer) -> redis.Redis:
    client = redis_db.client()
    seed_loopback_cluster(client)
    return client


@pytest.fixture()
def file_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server where ``bucket/ns8`` is a file: an S3 client sees an object."""
    (tmp_path / "www" / "bucket").mkdir(parents=True)
    (tmp_path / "www" / "bucket" / "ns8").write_text("not a directory\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path / "www",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url + "/bucket/ns8"), timeout=20, what="the HTTP server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return requests.head(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_a_destination_whose_root_is_a_file_does_not_hold_acl_changes_back(
    cluster: redis.Redis,
    redis_db: RedisServer,
    host: PluginHost,
    tmp_path: Path,
    file_server: str,
) -> None:
    port = free_port(NODE_IPS["1"])
    local = add_local_destination(cluster, host, port)
    with GatewayProcess(redis_db, "1", port, tmp_path) as gw:
        broken = add_destination(
            cluster,
            host,
            {
                "provider": "generic-s3",
                "url": f"s3:{file_server}/bucket/ns8",
                "parameters": {"aws_access_key_id": "AKFILE", "aws_secret_access_key": "SKFILE"},
            },
        )
        add_module_user(cluster, "late1", "late-pw")
        url = f"{gw.url}/{local.id}/late/{module_uuid('late1')}/config"

        def late1_known() -> bool:
            answer = requests.get(url, auth=("module/late1", "late-pw"), timeout=10)
            return answer.status_code != 401

        wait_for(late1_known, timeout=60, what="the new module let in")
        assert f"destination {broken.id} dropped" in gw.log(None)
        probe = requests.get(f"{gw.url}/{local.id}/_probe_rest_404", timeout=10)
        assert probe.status_code == 404  # the other destination is still served
        listing = requests.get(
            f"{gw.url}/{local.id}/late/{module_uuid('late1')}/keys/",
            auth=("module/late1", "late-pw"),
            headers=REST_ACCEPT,
            timeout=10,
        )
        assert listing.status_code in (200, 404)
