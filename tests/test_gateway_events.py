"""The gateway follows the cluster's events under NS8's own ACL lines (issue 12 item 2).

On NS8 a node's Redis user may publish on its own channels only and may not subscribe; the
password-less ``default`` user may subscribe to everything (ref §1.3). ``gateway serve`` runs
as the node and receives ``backup-destination-changed`` and ``acl-changed`` as ``default``:
no polling, no warning loop, a reload within a second.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from nsbackup import acl
from nsbackup.gateway.context import GatewaySettings
from nsbackup.plugins import PluginHost
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    GatewayProcess,
    add_destination,
    add_local_destination,
    wait_for,
)
from tests.redis_server import RedisServer
from tests.servers import RcloneS3Server, free_port

pytestmark = pytest.mark.live
REST_ACCEPT = {"Accept": "application/vnd.x.restic.rest.v2"}


@pytest.fixture()
def ns8_cluster(ns8_redis: RedisServer) -> redis.Redis:
    """NS8's users and rules, nodes on loopback addresses; a ``cluster`` client."""
    client = ns8_redis.client()
    for node, ip in NODE_IPS.items():
        client.hset(f"node/{node}/vpn", "ip_address", ip)
    client.set("cluster/network", "127.0.0.0/8")
    return client


@pytest.fixture()
def s3(tmp_path: Path) -> Iterator[RcloneS3Server]:
    (tmp_path / "s3" / "bucket").mkdir(parents=True)
    with RcloneS3Server(tmp_path / "s3", "AKEVENTS", "secret-events") as server:
        yield server


def module_status(gw: GatewayProcess, dest: str, mid: str, password: str) -> int:
    url = f"{gw.url}/{dest}/{mid.rstrip('0123456789')}/{module_uuid(mid)}/config"
    return requests.get(
        url, auth=(f"module/{mid}", password), headers=REST_ACCEPT, timeout=5
    ).status_code


def elapsed_until(condition, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    wait_for(condition, timeout=timeout, what=what)
    return time.monotonic() - start


def test_events_arrive_as_default_under_ns8_acls(
    ns8_cluster: redis.Redis,
    ns8_redis: RedisServer,
    host: PluginHost,
    s3: RcloneS3Server,
    tmp_path: Path,
) -> None:
    node = ns8_redis.client("node/1", PASSWORDS["node/1"])
    with pytest.raises(redis.exceptions.NoPermissionError):  # NS8: a node may not subscribe
        pubsub = node.pubsub()
        pubsub.subscribe("cluster/event/acl-changed")
        pubsub.get_message(timeout=2)
    node.close()
    port = free_port(NODE_IPS["1"])
    first = add_local_destination(ns8_cluster, host, port)
    with GatewayProcess(ns8_redis, "1", port, tmp_path, verbose="") as gw:
        wait_for(
            lambda: (
                "following cluster events as Redis user default (node/1 may not subscribe)"
                in gw.log(None)
            ),
            timeout=10,
            what="the subscription as default",
        )
        assert module_status(gw, first.id, "mail1", PASSWORDS["module/mail1"]) == 404

        # a destination event (Store.add_destination publishes it): a new generation
        run_dir = GatewaySettings(gw.state_dir.resolve()).run_dir
        start = time.monotonic()
        second = add_destination(
            ns8_cluster,
            host,
            {
                "provider": "generic-s3",
                "url": f"s3:{s3.endpoint}/bucket/ns8",
                "parameters": {
                    "aws_access_key_id": s3.access_key,
                    "aws_secret_access_key": s3.secret_key,
                },
            },
        )
        wait_for(lambda: (run_dir / "g1-rc.sock").exists(), 5, "generation 1 started")
        reacted = time.monotonic() - start
        probe = f"{gw.url}/{second.id}/_probe_rest_404"
        wait_for(lambda: requests.get(probe, timeout=5).status_code == 404, 5, "the new one served")
        served = time.monotonic() - start
        print(f"destination event: new generation in {reacted:.2f} s, served in {served:.2f} s")
        # rclone itself takes ~0.25 s to start and ~0.1 s per server: 0.6-0.7 s on an idle
        # machine; the bound on the whole reload leaves room for a busy one.
        assert reacted < 1.0 and served < 2.0, (reacted, served)

        # an ACL event: a new module's ACL line, then the event NS8 publishes
        digest = hashlib.sha256(b"late-pw").hexdigest()
        pipe = ns8_cluster.pipeline(transaction=True)
        pipe.hset("cluster/module_node", "late1", "1")
        pipe.hset("cluster/module_uuid", "late1", module_uuid("late1"))
        pipe.sadd("cluster/acls", acl.acl_line("module/late1", digest, acl.module_rules("late1")))
        pipe.execute()
        assert module_status(gw, first.id, "late1", "late-pw") == 401
        ns8_cluster.publish("cluster/event/acl-changed", "cluster/acls")
        took = elapsed_until(
            lambda: module_status(gw, first.id, "late1", "late-pw") == 404, 5, "late1 let in"
        )
        print(f"ACL event to the new maps: {took:.2f} s")
        assert took < 1.0, took
        log = gw.log(None)
        assert "maps reloaded (acl-changed): users added: module/late1; modules added: " in log
        assert "generation reloaded (backup-destination-changed): generation 1 serves 2 " in log
        assert f"destinations added: {second.id}" in log
        assert "WARNING" not in log and "Redis lost" not in log and "NOPERM" not in log
