"""A real ``redis-server`` on a free loopback port, ACLs on and the ``default`` user off.

The ``cluster`` user can do everything, as in NS8; tests add ``node/N`` and ``module/X`` users
with the rules of :mod:`nsbackup.acl`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self
from urllib.parse import quote

import redis

from tests.servers import free_port, missing


class RedisServer:
    def __init__(self, replica_of: RedisServer | None = None) -> None:
        binary = shutil.which("redis-server") or missing("redis-server")
        self.binary = binary
        self.replica_of = replica_of
        self.host = "127.0.0.1"
        self.port = free_port()
        self.admin_password = replica_of.admin_password if replica_of else secrets.token_hex(16)
        self.tmp = Path(tempfile.mkdtemp(prefix="nsbackup-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            f"dir {self.tmp}",
            'save ""',
            "appendonly no",
            "protected-mode yes",
            f"aclfile {self.tmp / 'users.acl'}",
            f"logfile {self.tmp / 'redis.log'}",
            f"unixsocket {self.tmp / 'redis.sock'}",
            "unixsocketperm 700",
        ]
        if self.replica_of is not None:
            lines += [
                f"replicaof {self.replica_of.host} {self.replica_of.port}",
                "masteruser cluster",
                f"masterauth {self.admin_password}",
                "replica-read-only yes",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> Self:
        (self.tmp / "users.acl").write_text(
            f"user default off\nuser cluster on #{_sha256(self.admin_password)} ~* &* +@all\n"
        )
        conf = self.tmp / "redis.conf"
        conf.write_text(self._config())
        os.chmod(conf, 0o600)
        self.proc = subprocess.Popen(
            [self.binary, str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                client = self.client()
                client.ping()
                if (
                    self.replica_of is None
                    or client.info("replication").get("master_link_status") == "up"
                ):
                    client.close()
                    return self
                client.close()
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (
                    (self.tmp / "redis.log").read_text()
                    if (self.tmp / "redis.log").exists()
                    else ""
                )
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{log[-2000:]}")
            time.sleep(0.05)

    def stop(self, *, keep_dir: bool = False) -> None:
        """Stop the server; with ``keep_dir`` the same object can :meth:`start` again on the
        same port (an empty database: nothing is persisted)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if not keep_dir:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, user: str = "cluster", password: str | None = None) -> str:
        password = self.admin_password if password is None else password
        return (
            f"redis://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/0"
        )

    def client(self, user: str = "cluster", password: str | None = None) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            username=user,
            password=self.admin_password if password is None else password,
            decode_responses=True,
            socket_timeout=10,
        )

    def flush(self) -> None:
        client = self.client()
        client.flushall()
        for user in client.acl_users():
            if user not in ("default", "cluster"):
                client.acl_deluser(user)
        client.close()


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
