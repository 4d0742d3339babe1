"""What an operator meets first (issue 13): defects found by trying the product as a new
administrator would, each kept from coming back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.cluster_seed import PASSWORDS, seed
from tests.redis_server import RedisServer

NSBACKUP = str(Path(sys.executable).parent / "nsbackup")


def run(server: RedisServer, *args: str, user: str = "node/1") -> tuple[int, Any, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NSBACKUP_", "REDIS_")) and k != "NODE_ID"
    }
    password = server.admin_password if user == "cluster" else PASSWORDS[user]
    env.update(
        NSBACKUP_REDIS_URL=f"redis://{server.host}:{server.port}/0",
        REDIS_USER=user,
        REDIS_PASSWORD=password,
    )
    done = subprocess.run(
        [NSBACKUP, "--json", *args], capture_output=True, text=True, env=env, timeout=60
    )
    return done.returncode, json.loads(done.stdout or "null"), done.stderr


def test_gateway_render_refuses_a_cluster_it_cannot_serve(
    redis_db: RedisServer, tmp_path: Path
) -> None:
    # an empty Redis: node 1 is nobody
    admin = redis_db.client()
    admin.execute_command(
        "ACL", "SETUSER", "node/1", "on", f">{PASSWORDS['node/1']}", "~*", "+@all"
    )
    out = tmp_path / "gw"
    code, result, err = run(redis_db, "--node", "1", "gateway", "render", "--out", str(out))
    assert code == 2 and result[0]["error"] == "node_not_found", err
    assert "Traceback" not in err and not out.exists()
    seed(admin)
    code, result, err = run(redis_db, "--node", "abc", "gateway", "render", "--out", str(out))
    assert code == 2 and result[0]["value"] == "abc" and "known nodes: 1, 2, 12" in err
    admin.delete("cluster/network")
    code, result, err = run(redis_db, "--node", "1", "gateway", "render", "--out", str(out))
    assert code == 2 and result[0]["error"] == "network_not_set"
    assert not out.exists()
    admin.set("cluster/network", "10.5.4.0/24")
    code, result, err = run(redis_db, "--node", "1", "gateway", "render", "--out", str(out))
    assert code == 0, err
    assert "CLUSTER_NETWORK=10.5.4.0/24" in (out / "rclone-gateway.env").read_text()


def test_back_up_a_directory_by_hand_as_the_operations_guide_says(
    redis_db: RedisServer, tmp_path: Path
) -> None:
    """docs/operations.md, "Back up a directory by hand", step by step: the Restic password
    from `destination list --show-secrets`, restic 0.14 with the node's user in the URL
    (`node%2F1`), restic 0.18 with RESTIC_REST_USERNAME/PASSWORD, into one repository."""
    import re
    import uuid

    from tests.restic_versions import find_restic
    from tests.run_world import RunWorld

    world = RunWorld(redis_db, tmp_path / "world", {"mail1": "1"}).start()
    try:
        assert world.gateway is not None
        code, listed, err = world.nsbackup("--json", "destination", "list", "--show-secrets")
        assert code == 0, err
        password = listed["repositories"][0]["password"]
        code, text, err = world.nsbackup("destination", "list", "--show-secrets")
        assert code == 0 and "RESTIC PASSWORD" in text and password in text, err
        data = tmp_path / "data"
        data.mkdir()
        (data / "notes.txt").write_text("by hand\n")
        name = str(uuid.uuid4())
        path = f"{world.destination}/manual/{name}"
        host = world.gateway.url.removeprefix("http://")
        node_password = PASSWORDS["node/1"]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}

        def restic(binary: str, env: dict[str, str], *args: str) -> Any:
            return subprocess.run(
                [binary, "--no-cache", *args],
                env={**clean, "RESTIC_PASSWORD": password, **env},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        old = find_restic("restic-0.14").binary
        in_url = {"RESTIC_REPOSITORY": f"rest:http://node%2F1:{node_password}@{host}/{path}"}
        assert restic(old, in_url, "init").returncode == 0
        done = restic(old, in_url, "backup", str(data))
        assert done.returncode == 0, done.stderr
        unencoded = {"RESTIC_REPOSITORY": f"rest:http://node/1:{node_password}@{host}/{path}"}
        assert restic(old, unencoded, "snapshots").returncode != 0

        new = find_restic("restic-0.18").binary
        own_variables = {
            "RESTIC_REPOSITORY": f"rest:{world.gateway.url}/{path}",
            "RESTIC_REST_USERNAME": "node/1",
            "RESTIC_REST_PASSWORD": node_password,
        }
        done = restic(new, own_variables, "backup", str(data))
        assert done.returncode == 0, done.stderr
        snapshots = json.loads(restic(new, own_variables, "snapshots", "--json").stdout)
        assert len(snapshots) == 2
        target = tmp_path / "restored"
        done = restic(new, own_variables, "restore", "latest", "--target", str(target))
        assert done.returncode == 0, done.stderr
        assert (target / str(data).lstrip("/") / "notes.txt").read_text() == "by hand\n"

        code, text, err = world.nsbackup("destination", "repositories")
        assert code == 0, err
        assert re.search(rf"^cluster \S+ +manual/{name} +-$", str(text), re.M), text
    finally:
        world.stop()
