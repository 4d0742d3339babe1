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
