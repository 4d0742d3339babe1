"""The gateway serving real restic traffic: data path, reloads under load, isolation, peers."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from nsbackup import acl
from nsbackup.gateway.context import GatewaySettings
from nsbackup.obscure import obscure
from nsbackup.plugins import PluginHost
from nsbackup.restic import restic_env, run_restic
from nsbackup.store import Store
from tests import restic_versions
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    RESTIC_PASSWORD,
    GatewayProcess,
    add_destination,
    add_local_destination,
    seed_loopback_cluster,
    wait_for,
)
from tests.redis_server import RedisServer
from tests.restic_versions import Restic
from tests.servers import RcloneS3Server, free_port

pytestmark = pytest.mark.live
REST_ACCEPT = {"Accept": "application/vnd.x.restic.rest.v2"}
restic_bin = restic_versions.restic_bin  # the fixture: one run per restic generation


def make_data(root: Path, megabytes: int = 2, small: int = 50) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = hashlib.sha256(str(root).encode()).digest()
    for i in range(max(1, megabytes // 10)):
        size = min(10, megabytes - i * 10) * 1024 * 1024
        (root / f"big{i}.bin").write_bytes(os.urandom(size))
    for i in range(small):
        (root / f"small{i}.txt").write_text(f"{rng.hex()} line {i}\n" * (i + 1))
    return root


def env_for(
    gw: GatewayProcess, repo: str, user: str, tmp: Path, restic: Restic | None = None
) -> dict[str, str]:
    return restic_env(
        repository_path=repo,
        user=user,
        password=PASSWORDS[user],
        restic_password=RESTIC_PASSWORD,
        gateway_url=gw.url,
        cache_dir=str(tmp / "restic-cache"),
        binary=restic.binary if restic else None,
    )


def restic_ok(
    args: list[str], env: dict[str, str], timeout: float = 600, restic: Restic | None = None
) -> str:
    result = run_restic(args, env, timeout=timeout, binary=restic.binary if restic else None)
    assert result.returncode == 0, (args, result.stderr[-2000:])
    return result.stdout


@pytest.fixture()
def cluster(redis_db: RedisServer) -> redis.Redis:
    client = redis_db.client()
    seed_loopback_cluster(client)
    return client


@pytest.fixture()
def s3(tmp_path: Path) -> Iterator[RcloneS3Server]:
    (tmp_path / "s3" / "bucket").mkdir(parents=True)
    with RcloneS3Server(tmp_path / "s3", "AKGATEWAY", "secret-gateway") as server:
        yield server


def s3_payload(s3: RcloneS3Server, path: str = "ns8") -> dict[str, Any]:
    return {
        "provider": "generic-s3",
        "url": f"s3:{s3.endpoint}/bucket/{path}",
        "parameters": {"aws_access_key_id": s3.access_key, "aws_secret_access_key": s3.secret_key},
    }


def test_module_and_node_data_path(
    restic_bin: Restic,
    cluster: redis.Redis,
    redis_db: RedisServer,
    host: PluginHost,
    s3: RcloneS3Server,
    tmp_path: Path,
) -> None:
    port = free_port(NODE_IPS["1"])
    local = add_local_destination(cluster, host, port)
    remote = add_destination(cluster, host, s3_payload(s3))
    data = make_data(tmp_path / "data", megabytes=12)
    data_bytes = sum(p.stat().st_size for p in data.iterdir())
    with GatewayProcess(redis_db, "1", port, tmp_path) as gw:
        for dest in (local, remote):
            repo = f"{dest.id}/mail/{module_uuid('mail1')}"
            module = env_for(gw, repo, "module/mail1", tmp_path, restic_bin)
            # restic 0.14 takes the credentials in the URL, newer ones in RESTIC_REST_*
            assert ("RESTIC_REST_PASSWORD" in module) == (restic_bin.version >= (0, 16, 0))
            restic_ok(["init"], module, restic=restic_bin)
            restic_ok(["backup", str(data)], module, restic=restic_bin)
            snapshots = json.loads(restic_ok(["snapshots", "--json"], module, restic=restic_bin))
            assert len(snapshots) == 1
            # the size and times of NS8's snapshot listing (ref §7.4) exist from restic 0.17
            if restic_bin.version >= (0, 17, 0):
                assert snapshots[0]["summary"]["total_bytes_processed"] == data_bytes
            else:
                assert "summary" not in snapshots[0]
            target = tmp_path / f"restore-{dest.provider}"
            restic_ok(["restore", "latest", "--target", str(target)], module, restic=restic_bin)
            restored = target / data.relative_to("/")
            assert not filecmp.dircmp(data, restored).diff_files
            assert sorted(p.name for p in restored.iterdir()) == sorted(
                p.name for p in data.iterdir()
            )
            restic_ok(["check"], module, restic=restic_bin)
            # modules cannot delete data (restic itself would retry a refusal for minutes,
            # so the refusal is checked on the request restic forget sends)
            snapshot_url = f"{gw.url}/{repo}/snapshots/{snapshots[0]['id']}"
            refused = requests.delete(
                snapshot_url,
                headers=REST_ACCEPT,
                timeout=10,
                auth=("module/mail1", PASSWORDS["module/mail1"]),
            )
            assert refused.status_code == 403
            listed = restic_ok(["snapshots", "--json"], module, restic=restic_bin)
            assert len(json.loads(listed)) == 1

            node = env_for(gw, repo, "node/1", tmp_path, restic_bin)
            restic_ok(["backup", str(data)], node, restic=restic_bin)
            restic_ok(["forget", "--prune", "--keep-last", "1"], node, restic=restic_bin)
            assert len(json.loads(restic_ok(["snapshots", "--json"], node, restic=restic_bin))) == 1
            restic_ok(["check"], node, restic=restic_bin)
        # the local disk really holds the repository
        assert (tmp_path / "node1" / "repo" / "mail" / module_uuid("mail1") / "config").exists()
        assert gw.stop() == 0
    assert not GatewaySettings(gw.state_dir).run_dir.exists()  # sockets and pid file removed
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "node1" / "state")],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert leftovers == ""  # SIGTERM stopped haproxy and every rclone


def add_module_user(client: redis.Redis, mid: str, node: str, password: str) -> str:
    uuid = module_uuid(mid)
    digest = hashlib.sha256(password.encode()).hexdigest()
    pipe = client.pipeline(transaction=True)
    pipe.hset("cluster/module_node", mid, node)
    pipe.hset("cluster/module_uuid", mid, uuid)
    pipe.sadd("cluster/acls", acl.acl_line(f"module/{mid}", digest, acl.module_rules(mid)))
    pipe.publish("cluster/event/acl-changed", "cluster/acls")
    pipe.execute()
    return uuid


def remove_module_user(client: redis.Redis, mid: str, password: str) -> None:
    digest = hashlib.sha256(password.encode()).hexdigest()
    pipe = client.pipeline(transaction=True)
    pipe.srem("cluster/acls", acl.acl_line(f"module/{mid}", digest, acl.module_rules(mid)))
    pipe.hdel("cluster/module_node", mid)
    pipe.hdel("cluster/module_uuid", mid)
    pipe.publish("cluster/event/acl-changed", "cluster/acls")
    pipe.execute()


def status_as(gw: GatewayProcess, dest: str, mid: str, password: str) -> int:
    url = f"{gw.url}/{dest}/{mid.rstrip('0123456789')}/{module_uuid(mid)}/config"
    return requests.get(
        url, auth=(f"module/{mid}", password), headers=REST_ACCEPT, timeout=10
    ).status_code


def test_reload_under_load(
    cluster: redis.Redis,
    redis_db: RedisServer,
    host: PluginHost,
    s3: RcloneS3Server,
    tmp_path: Path,
) -> None:
    port = free_port(NODE_IPS["1"])
    dest = add_local_destination(cluster, host, port)
    data = make_data(tmp_path / "data", megabytes=200, small=200)
    with GatewayProcess(redis_db, "1", port, tmp_path) as gw:
        repo = f"{dest.id}/mail/{module_uuid('mail1')}"
        module = env_for(gw, repo, "module/mail1", tmp_path)
        restic_ok(["init"], module)
        outcome: dict[str, Any] = {}

        def backup() -> None:
            # Bounded to 10 MiB/s so that every change below lands during the backup.
            outcome["result"] = run_restic(
                ["backup", "--limit-upload", "10240", str(data)], module, timeout=900
            )

        worker = threading.Thread(target=backup)
        worker.start()
        accepted_after: list[str] = []
        for i in range(10):
            mid, password = f"extra{i}", f"extra-pw-{i}"
            if i % 2 == 0:
                add_module_user(cluster, mid, "1", password)
                wait_for(
                    lambda m=mid, p=password: status_as(gw, dest.id, m, p) != 401,
                    timeout=20,
                    what=f"{mid} accepted",
                )
                accepted_after.append(mid)
            else:
                previous = f"extra{i - 1}"
                remove_module_user(cluster, previous, f"extra-pw-{i - 1}")
                wait_for(
                    lambda m=previous, p=f"extra-pw-{i - 1}": status_as(gw, dest.id, m, p) == 401,
                    timeout=20,
                    what=f"{previous} refused",
                )
            if i in (2, 5, 8):
                extra = add_destination(cluster, host, s3_payload(s3, path=f"p{i}"))
                cluster.publish(
                    "cluster/event/backup-destination-changed",
                    json.dumps({"destination_ids": [extra.id]}),
                )
                wait_for(
                    lambda d=extra.id: (
                        requests.get(f"{gw.url}/{d}/_probe_rest_404", timeout=10).status_code == 404
                    ),
                    timeout=60,
                    what="the new destination served",
                )
        assert worker.is_alive(), "the backup ended before the changes: not a test of reloads"
        worker.join(timeout=900)
        result = outcome["result"]
        assert result.returncode == 0, result.stderr[-3000:]
        restic_ok(["check"], module)
        assert len(accepted_after) == 5
        log = gw.log(tail=None)
        assert log.count("generation reloaded") >= 3, log
        assert log.count("maps reloaded") >= 5, log


def test_failing_destination_is_dropped_and_others_served(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    port = free_port(NODE_IPS["1"])
    good = add_local_destination(cluster, host, port)
    dead_port = free_port()
    conf = f"type = sftp\nhost = 127.0.0.1\nport = {dead_port}\nuser = u\npass = {obscure('x')}\n"
    bad = add_destination(
        cluster,
        host,
        {
            "provider": "rclone",
            "url": "",
            "parameters": {"rclone_conf_secret": conf, "basepath": "bk"},
        },
    )
    with GatewayProcess(redis_db, "1", port, tmp_path) as gw:
        assert f"destination {bad.id} dropped" in gw.log()
        repo = f"{good.id}/mail/{module_uuid('mail1')}"
        module = env_for(gw, repo, "module/mail1", tmp_path)
        restic_ok(["init"], module)
        restic_ok(["backup", str(make_data(tmp_path / "d", megabytes=1, small=5))], module)
        assert requests.get(f"{gw.url}/{good.id}/_probe_rest_404", timeout=10).status_code == 404
        assert requests.get(f"{gw.url}/{bad.id}/_probe_rest_404", timeout=10).status_code != 404
        conf_text = (tmp_path / "node1" / "state" / "rclone.conf").read_text()
        assert f"[{bad.id}]" not in conf_text and f"[{good.id}]" in conf_text


def test_two_nodes_proxy_and_failover(
    cluster: redis.Redis,
    redis_db: RedisServer,
    host: PluginHost,
    s3: RcloneS3Server,
    tmp_path: Path,
) -> None:
    port = free_port(NODE_IPS["1"])
    disk1 = add_local_destination(cluster, host, port)
    remote = add_destination(cluster, host, s3_payload(s3))
    data = make_data(tmp_path / "data", megabytes=1, small=10)
    with (
        GatewayProcess(redis_db, "1", port, tmp_path) as gw1,
        GatewayProcess(redis_db, "2", port, tmp_path) as gw2,
    ):
        # nextcloud3 lives on node 2 and backs up to node 1's disk through its own gateway
        repo = f"{disk1.id}/nextcloud/{module_uuid('nextcloud3')}"
        module = env_for(gw2, repo, "module/nextcloud3", tmp_path)
        restic_ok(["init"], module)
        restic_ok(["backup", str(data)], module)
        assert (
            tmp_path / "node1" / "repo" / "nextcloud" / module_uuid("nextcloud3") / "config"
        ).exists()
        assert not (tmp_path / "node2" / "repo" / "nextcloud").exists()
        # node 1's local backend for the remote destination breaks: node 2 takes over
        config_url = f"{gw1.url}/{remote.id}/mail/{module_uuid('mail1')}/config"
        mail1 = env_for(gw1, f"{remote.id}/mail/{module_uuid('mail1')}", "module/mail1", tmp_path)
        restic_ok(["init"], mail1)
        run_dir = GatewaySettings(gw1.state_dir).run_dir
        sockets = list(run_dir.glob("g*-restic.sock"))
        assert sockets
        for sock in sockets:
            sock.unlink()

        def served_by_peer() -> bool:
            answer = requests.get(
                config_url,
                auth=("module/mail1", PASSWORDS["module/mail1"]),
                headers=REST_ACCEPT,
                timeout=10,
            )
            return answer.status_code == 200 and answer.headers.get(
                "X-Nsbackup-Backend", ""
            ).startswith("gw_")

        wait_for(served_by_peer, timeout=40, what="failover to node 2")
        restic_ok(["backup", str(data)], mail1)
        assert len(json.loads(restic_ok(["snapshots", "--json"], mail1))) == 1


def test_killed_gateway_leaves_no_process(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    port = free_port(NODE_IPS["1"])
    add_local_destination(cluster, host, port)
    gw = GatewayProcess(redis_db, "1", port, tmp_path).start()
    run_dir = str(GatewaySettings(gw.state_dir).run_dir)
    assert gw.proc is not None
    gw.proc.kill()  # no chance to clean up
    gw.proc.wait(timeout=10)
    wait_for(
        lambda: (
            subprocess.run(["pgrep", "-f", run_dir], capture_output=True, check=False).returncode
            == 1
        ),
        timeout=15,
        what="haproxy and rclone to exit with their parent",
    )
    shutil.rmtree(run_dir, ignore_errors=True)  # what a SIGKILL leaves: no process, files


def test_children_do_not_inherit_credentials(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, tmp_path: Path
) -> None:
    port = free_port(NODE_IPS["1"])
    add_local_destination(cluster, host, port)
    with GatewayProcess(redis_db, "1", port, tmp_path) as gw:
        run_dir = str(GatewaySettings(gw.state_dir).run_dir)
        pids = subprocess.run(
            ["pgrep", "-f", run_dir], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(pids) >= 2  # rclone rcd and the HAProxy master at least
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"REDIS_PASSWORD" not in environ and PASSWORDS["node/1"].encode() not in environ


def test_keeps_serving_while_redis_is_away_and_catches_up(host: PluginHost, tmp_path: Path) -> None:
    with RedisServer() as server:
        client = server.client()
        seed_loopback_cluster(client)
        port = free_port(NODE_IPS["1"])
        dest = add_local_destination(client, host, port)
        with GatewayProcess(server, "1", port, tmp_path) as gw:
            assert status_as(gw, dest.id, "mail1", PASSWORDS["module/mail1"]) == 404
            server.stop(keep_dir=True)  # Redis goes away: the gateway keeps serving
            assert status_as(gw, dest.id, "mail1", PASSWORDS["module/mail1"]) == 404
            assert (
                requests.get(f"{gw.url}/{dest.id}/_probe_rest_404", timeout=10).status_code == 404
            )
            server.start()  # back, empty: the cluster is written again
            client = server.client()
            seed_loopback_cluster(client)
            Store(client).add_destination(dest, RESTIC_PASSWORD)
            add_module_user(client, "late1", "1", "late-pw")  # an ACL change while away
            # on reconnection the gateway catches up without any further event
            wait_for(
                lambda: status_as(gw, dest.id, "late1", "late-pw") != 401,
                timeout=30,
                what="the gateway to resubscribe and load the new user",
            )
            assert gw.proc is not None and gw.proc.poll() is None
            log = gw.log(None)
            assert log.count("WARNING Redis lost (") == 1, log  # said once, not every 2 s
            assert "INFO Redis reconnected after " in log
            assert "maps reloaded (subscribed): users added: module/late1" in log
