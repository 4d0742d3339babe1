"""Gateway files: renderers as pure functions (golden files), the render command, safe writes."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from nsbackup.gateway.context import GatewaySettings
from nsbackup.gateway.render import build_context, render_files, write_files
from nsbackup.model import ClusterState, Destination, Module, Node
from nsbackup.plugins import PluginHost
from tests.cluster_seed import PASSWORDS, seed
from tests.gateway_fixture import NSBACKUP, add_destination
from tests.redis_server import RedisServer
from tests.servers import RcloneS3Server, free_port

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("NSBACKUP_UPDATE_GOLDEN") == "1"
D_CLUSTER = "5a5a5a5a-0000-5000-8000-000000000001"
D_S3 = "5a5a5a5a-0000-5000-8000-000000000002"
D_RAW = "5a5a5a5a-0000-5000-8000-000000000003"
D_CLUSTER12 = "5a5a5a5a-0000-5000-8000-000000000004"
ACL = "user {user} on sanitize-payload #{digest} ~x"


def fixed_state() -> ClusterState:
    def mod(mid: str, node: str) -> Module:
        return Module(mid, str(uuid.uuid5(uuid.NAMESPACE_DNS, mid)), node, f"UI {mid}")

    modules = {m.id: m for m in (mod("mail1", "1"), mod("nextcloud3", "12"), mod("mail2", "1"))}
    s3_conf = (
        f"[{D_S3}]\ntype = s3\nprovider = Other\naccess_key_id = AK\n"
        f"secret_access_key = SK%\nendpoint = http://127.0.0.1:9000\n"
    )
    raw_conf = f"[{D_RAW}]\ntype = sftp\nhost = sftp.example.org\nuser = u\nshell_type = none\n"
    destinations = {
        D_CLUSTER: Destination(
            D_CLUSTER,
            "cluster",
            "webdav:http://10.5.4.1:4694",
            "Disk 1",
            "",
            f"[{D_CLUSTER}]\ntype = local\n",
        ),
        D_CLUSTER12: Destination(
            D_CLUSTER12,
            "cluster",
            "webdav:http://10.5.4.12:4694",
            "Disk 12",
            "",
            f"[{D_CLUSTER12}]\ntype = local\n",
        ),
        D_S3: Destination(
            D_S3, "generic-s3", "s3:http://127.0.0.1:9000/bucket/ns8", "S3", "", s3_conf
        ),
        D_RAW: Destination(
            D_RAW, "rclone", "rclone:sftp:sftp.example.org:srv/bk", "Raw", "srv/bk", raw_conf
        ),
    }
    acls = tuple(
        sorted(
            ACL.format(user=u, digest=f"{i:064x}")
            for i, u in enumerate(
                [
                    "node/1",
                    "node/12",
                    "module/mail1",
                    "module/nextcloud3",
                    "module/mail2",
                    "cluster",
                ]
            )
        )
    )
    return ClusterState(
        destinations=destinations,
        schedules={},
        modules=modules,
        nodes={"1": Node("1", "10.5.4.1"), "12": Node("12", "10.5.4.12")},
        leader="1",
        network="10.5.4.0/24",
        acls=acls,
        restore_grants={modules["mail2"].uuid: modules["mail1"].uuid},
        privileged=True,
    )


@pytest.mark.parametrize("node", ["1", "12"])
def test_golden_files(host: PluginHost, node: str) -> None:
    settings = GatewaySettings(
        Path("/var/lib/nsbackup/gateway"), listen="0.0.0.0:4694", repo_dir="/srv/repo"
    )
    context, problems = build_context(fixed_state(), host, node, settings)
    assert problems == ()
    files = render_files(host, context)
    assert sorted(files) == [
        "auth.map",
        "haproxy.cfg",
        "modrepo.map",
        "rclone-gateway.env",
        "rclone.conf",
    ]
    assert {n for n, (_, secret) in files.items() if secret} == {"auth.map", "rclone.conf"}
    for name, (text, _) in files.items():
        golden = GOLDEN / f"node{node}" / name
        if UPDATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{name} differs from {golden}"


def test_rendered_config_is_accepted_by_haproxy(host: PluginHost, tmp_path: Path) -> None:
    for node in ("1", "12"):
        settings = GatewaySettings(tmp_path / node, listen="127.0.0.1:4694")
        context, _ = build_context(fixed_state(), host, node, settings)
        write_files(settings.state_dir, render_files(host, context))
        result = subprocess.run(
            ["haproxy", "-c", "-f", str(settings.state_dir / "haproxy.cfg")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_render_is_a_pure_function(host: PluginHost) -> None:
    settings = GatewaySettings(Path("/x"))
    first = render_files(host, build_context(fixed_state(), host, "1", settings)[0])
    second = render_files(host, build_context(fixed_state(), host, "1", settings)[0])
    assert first == second


def test_node_ids_match_exactly(host: PluginHost) -> None:
    """Node 1 serves D_CLUSTER itself and proxies D_CLUSTER12 to node 12 - never the reverse
    (NS8 matched node ids by characters, ref §14.10-11)."""
    settings = GatewaySettings(Path("/x"))
    one = render_files(host, build_context(fixed_state(), host, "1", settings)[0])
    twelve = render_files(host, build_context(fixed_state(), host, "12", settings)[0])
    assert f"[{D_CLUSTER}]" in one["rclone.conf"][0]
    assert f"[{D_CLUSTER12}]" not in one["rclone.conf"][0]
    assert f"[{D_CLUSTER12}]" in twelve["rclone.conf"][0]

    def peer_backend(cfg: str, index: int, uid: str) -> str:
        return cfg.split(f"backend gw_d{index}_{uid.replace('-', '')}\n")[1].split("backend ")[0]

    # destinations sort by id: D_CLUSTER is d0, D_CLUSTER12 is d3
    on_one = peer_backend(one["haproxy.cfg"][0], 3, D_CLUSTER12)
    assert "server gw12 10.5.4.12:4694 check" in on_one and "server gw1 " not in on_one
    on_twelve = peer_backend(twelve["haproxy.cfg"][0], 0, D_CLUSTER)
    assert "server gw1 10.5.4.1:4694 check" in on_twelve and "server gw12 " not in on_twelve


def test_dropped_destination_leaves_the_combined_remote(host: PluginHost) -> None:
    settings = GatewaySettings(Path("/x"))
    context, _ = build_context(fixed_state(), host, "1", settings, dropped=frozenset({D_RAW}))
    conf = render_files(host, context)["rclone.conf"][0]
    assert f"[{D_RAW}]" not in conf and f'"{D_S3}={D_S3}:bucket/ns8"' in conf


# -- the command, against a real Redis --------------------------------------------------------


def render_cmd(
    server: RedisServer, out: Path, *extra: str, redis_port: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSBACKUP_", "REDIS_"))}
    env.update({"REDIS_USER": "node/1", "REDIS_PASSWORD": PASSWORDS["node/1"]})
    port = redis_port or server.port
    return subprocess.run(
        [
            NSBACKUP,
            "--redis",
            f"redis://127.0.0.1:{port}/0",
            "--node",
            "1",
            "gateway",
            "render",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture()
def cluster(redis_db: RedisServer) -> redis.Redis:
    client = redis_db.client()
    seed(client)
    return client


def test_render_command(
    redis_db: RedisServer, cluster: redis.Redis, host: PluginHost, tmp_path: Path
) -> None:
    with RcloneS3Server(tmp_path / "s3", "AKRENDER", "secret-render") as s3:
        add_destination(
            cluster, host, {"provider": "cluster", "url": "webdav:http://10.5.4.1:4694"}
        )
        s3_dest = add_destination(
            cluster,
            host,
            {
                "provider": "generic-s3",
                "url": f"s3:{s3.endpoint}/bucket",
                "parameters": {
                    "aws_access_key_id": s3.access_key,
                    "aws_secret_access_key": s3.secret_key,
                },
            },
        )
        out = tmp_path / "gw"
        result = render_cmd(redis_db, out, "--repo-dir", str(tmp_path / "repo"))
        assert result.returncode == 0, result.stderr
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
        assert modes == {
            "rclone.conf": 0o600,
            "haproxy.cfg": 0o600,
            "auth.map": 0o600,
            "modrepo.map": 0o600,
            "rclone-gateway.env": 0o600,
        }
        assert out.stat().st_mode & 0o777 == 0o700  # created by render: private
        # rclone reads the rendered config and lists the s3 destination through combined
        (tmp_path / "s3" / "bucket" / "hello").mkdir(parents=True)
        lsd = subprocess.run(
            [str(Path(NSBACKUP).parent / "rclone"), "lsd", f"combined:{s3_dest.id}"],
            env={**os.environ, "RCLONE_CONFIG": str(out / "rclone.conf")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert lsd.returncode == 0 and "hello" in lsd.stdout, lsd.stderr
    inodes = {p.name: p.stat().st_ino for p in out.iterdir()}
    again = render_cmd(
        redis_db,
        out,
        "--repo-dir",
        str(tmp_path / "repo"),
    )
    assert again.returncode == 0
    assert {p.name: p.stat().st_ino for p in out.iterdir()} == inodes  # nothing rewritten
    assert not list(out.glob(".*"))  # no temporary files left


def test_unusable_destination_exit_3_and_redis_down_exit_5(
    redis_db: RedisServer, cluster: redis.Redis, host: PluginHost, tmp_path: Path
) -> None:
    good = add_destination(
        cluster, host, {"provider": "cluster", "url": "webdav:http://10.5.4.1:4694"}
    )
    broken = "0badc0de-0000-5000-8000-000000000000"
    cluster.hset(
        f"cluster/backup_repository/{broken}",
        mapping={"provider": "nonexistent", "url": "x:y", "name": "B", "basepath": ""},
    )
    cluster.hset("private/nodes/backup_destination/rclone_conf", broken, f"[{broken}]\ntype = s3\n")
    out = tmp_path / "gw"
    result = render_cmd(redis_db, out)
    assert result.returncode == 3
    assert broken in result.stderr and "nonexistent" in result.stderr
    assert f"[{good.id}]" in (out / "rclone.conf").read_text()
    before = {p.name: p.read_text() for p in out.iterdir()}
    dead = render_cmd(redis_db, out, redis_port=free_port())
    assert dead.returncode == 5
    assert {p.name: p.read_text() for p in out.iterdir()} == before
