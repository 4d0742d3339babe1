"""A real gateway (``nsbackup gateway serve``) as a subprocess, on a loopback address.

Nodes get loopback VPN addresses (node 1 → 127.0.0.2, node 2 → 127.0.0.3, node 12 →
127.0.0.4), so peer forwarding and health checks never leave the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import redis
import requests

from nsbackup.destinations import prepare
from nsbackup.model import DestinationRequest, PreparedDestination
from nsbackup.plugins import PluginHost
from nsbackup.store import Store
from tests.cluster_seed import PASSWORDS, seed
from tests.redis_server import RedisServer

NSBACKUP = str(Path(sys.executable).parent / "nsbackup")
NODE_IPS = {"1": "127.0.0.2", "2": "127.0.0.3", "12": "127.0.0.4"}
RESTIC_PASSWORD = "restic-" + "p" * 57


def seed_loopback_cluster(client: redis.Redis) -> None:
    seed(client)
    for node, ip in NODE_IPS.items():
        client.hset(f"node/{node}/vpn", "ip_address", ip)
    client.set("cluster/network", "127.0.0.0/8")


def add_destination(
    client: redis.Redis, host: PluginHost, payload: dict[str, object]
) -> PreparedDestination:
    """Store a destination directly (gateway tests are about serving, not validation)."""
    prepared = prepare(host, DestinationRequest.from_payload(payload))
    Store(client).add_destination(prepared, RESTIC_PASSWORD)
    return prepared


def add_local_destination(
    client: redis.Redis, host: PluginHost, port: int, node: str = "1"
) -> PreparedDestination:
    """A ``cluster`` destination on ``node``'s disk, served by its gateway on ``port``."""
    return add_destination(
        client, host, {"provider": "cluster", "url": f"webdav:http://{NODE_IPS[node]}:{port}"}
    )


class GatewayProcess:
    def __init__(
        self,
        redis_server: RedisServer,
        node: str,
        port: int,
        base: Path,
        *,
        listen_ip: str | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        verbose: str = "-v",
    ) -> None:
        self.redis = redis_server
        self.args = args
        self.extra_env = env or {}
        self.verbose = verbose
        self.node = node
        self.ip = listen_ip or NODE_IPS[node]
        self.port = port
        self.state_dir = base / f"node{node}" / "state"
        self.repo_dir = base / f"node{node}" / "repo"
        self.log_path = base / f"node{node}" / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def start(self, *, expect_up: bool = True) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NSBACKUP_", "REDIS_"))}
        env.update(
            {"REDIS_USER": f"node/{self.node}", "REDIS_PASSWORD": PASSWORDS[f"node/{self.node}"]}
        )
        env.update(self.extra_env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                NSBACKUP,
                *([self.verbose] if self.verbose else []),
                "--redis",
                f"redis://{self.redis.host}:{self.redis.port}/0",
                "--node",
                self.node,
                "gateway",
                "serve",
                "--state-dir",
                str(self.state_dir),
                "--listen",
                f"{self.ip}:{self.port}",
                "--repo-dir",
                str(self.repo_dir),
                *self.args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if expect_up:
            self.wait_up()
        return self

    def wait_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
            try:
                answered = requests.get(self.url + "/", timeout=2).status_code == 401
            except requests.RequestException:
                answered = False
            # HAProxy answers a moment before serve logs that it started
            if answered and f"gateway of node {self.node} started" in self.log(None):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not come up:\n{self.log()}")
            time.sleep(0.1)

    def log(self, tail: int | None = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
            return text[-tail:] if tail else text
        except OSError:
            return ""

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(condition, timeout: float = 20, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
