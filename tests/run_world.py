"""A whole cluster node that can really run backups, for the runs tests and benchmarks.

Redis with the ``cluster`` user, node users and one Redis user per module (each with the ACL
rules nsbackup writes, or NS8's own lines with ``ns8_acls=True``); node 1 at 127.0.0.2 running a
real gateway (``nsbackup gateway serve``) that serves a ``cluster`` destination on its disk;
modules as directories for the ``local`` runner (``<modules>/<id>/state`` with generated data
and ``state/agent.env`` 0600 holding the module's own credentials); ``nsbackup`` commands run
as subprocesses with the node's credentials.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import redis

from nsbackup import acl
from tests import ns8_acl
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    GatewayProcess,
    add_local_destination,
    seed_loopback_cluster,
)
from tests.redis_server import RedisServer
from tests.servers import free_port

NSBACKUP = str(Path(sys.executable).parent / "nsbackup")


def module_password(mid: str) -> str:
    return f"{mid}-secret-pw"


def make_files(root: Path, megabytes: float, seed: int, small: int = 30) -> None:
    """Incompressible bulk plus small text files, reproducible from ``seed``."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "bulk.bin").write_bytes(rng.randbytes(int(megabytes * 1024 * 1024)))
    (root / "environment").write_text(f"MODULE_SEED={seed}\n")
    docs = root / "docs"
    docs.mkdir(exist_ok=True)
    for n in range(small):
        (docs / f"note{n}.txt").write_text(f"note {n} of {seed}\n" * (n + 1))


class RunWorld:
    def __init__(
        self,
        server: RedisServer,
        base: Path,
        modules: Mapping[str, str],
        *,
        ns8_acls: bool = False,
        megabytes: float = 1.0,
    ) -> None:
        self.server = server
        self.base = base
        self.modules = dict(modules)  # module id -> node
        self.ns8_acls = ns8_acls
        self.megabytes = megabytes
        self.modules_dir = base / "modules"
        self.state_dir = base / "nsbackup-state"
        self.metrics_dir = base / "metrics"
        self.gateway: GatewayProcess | None = None
        self.destination = ""

    # -- setting up -----------------------------------------------------------------------
    def start(self) -> RunWorld:
        client = self.server.client()
        seed_loopback_cluster(client)
        pipe = client.pipeline(transaction=True)
        for mid in list(client.hkeys("cluster/module_node")):
            pipe.hdel("cluster/module_node", mid)
            pipe.hdel("cluster/module_uuid", mid)
        pipe.execute()
        for mid, node in self.modules.items():
            self.add_module(client, mid, node)
        if self.ns8_acls:
            for user, password in PASSWORDS.items():
                if user.startswith("node/"):
                    ns8_acl.set_ns8_user(client, user, password)
        port = free_port(NODE_IPS["1"])
        self.destination = add_local_destination(client, self.host(), port).id
        client.close()
        self.gateway = GatewayProcess(self.server, "1", port, self.base).start()
        return self

    def add_destination(self, payload: dict[str, object]) -> str:
        """Store a destination directly and wait until the gateway serves it."""
        import requests

        from tests.gateway_fixture import add_destination, wait_for

        client = self.server.client()
        try:
            uid = add_destination(client, self.host(), payload).id
        finally:
            client.close()
        assert self.gateway is not None
        url = f"{self.gateway.url}/{uid}/_probe_rest_404"
        wait_for(
            lambda: requests.get(url, timeout=5).status_code == 404,
            timeout=30,
            what=f"the gateway to serve {uid}",
        )
        return uid

    @staticmethod
    def host() -> Any:
        from nsbackup.plugins import plugin_host

        return plugin_host()

    def add_modules(self, *mids: str) -> None:
        """:meth:`add_module` for each of ``mids`` on node 1, over one connection."""
        client = self.server.client()
        try:
            for mid in mids:
                self.add_module(client, mid)
        finally:
            client.close()

    def add_module(self, client: redis.Redis, mid: str, node: str = "1") -> None:
        password = module_password(mid)
        digest = hashlib.sha256(password.encode()).hexdigest()
        rules = ns8_acl.module_rules(mid) if self.ns8_acls else acl.module_rules(mid)
        pipe = client.pipeline(transaction=True)
        pipe.hset("cluster/module_node", mid, node)
        pipe.hset("cluster/module_uuid", mid, module_uuid(mid))
        image = mid.rstrip("0123456789")
        pipe.hset(f"module/{mid}/environment", "IMAGE_URL", f"ghcr.io/nethserver/{image}:1.0.0")
        pipe.set(f"module/{mid}/ui_name", f"UI {mid}")
        pipe.sadd("cluster/acls", acl.acl_line(f"module/{mid}", digest, rules))
        pipe.execute()
        client.execute_command(
            "ACL", "SETUSER", f"module/{mid}", "reset", "on", f"#{digest}", *rules
        )
        client.publish("cluster/event/acl-changed", "cluster/acls")
        if node == "1":
            self.make_module_dir(mid)
        if self.gateway is not None:
            self.wait_known(mid)

    def wait_known(self, mid: str) -> None:
        """Until the gateway authenticates the module (its ACL event was applied)."""
        import requests

        from tests.gateway_fixture import wait_for

        assert self.gateway is not None
        app = mid.rstrip("0123456789")
        url = f"{self.gateway.url}/{self.destination}/{app}/{module_uuid(mid)}/config"
        auth = (f"module/{mid}", module_password(mid))
        wait_for(
            lambda: requests.get(url, auth=auth, timeout=5).status_code != 401,
            timeout=30,
            what=f"the gateway to know module/{mid}",
        )

    def make_module_dir(self, mid: str) -> Path:
        root = self.modules_dir / mid
        state = root / "state"
        make_files(state, self.megabytes, seed=sum(map(ord, mid)))
        env = state / "agent.env"
        env.write_text(f"REDIS_USER=module/{mid}\nREDIS_PASSWORD={module_password(mid)}\n")
        os.chmod(env, 0o600)
        return root

    def add_schedule(self, instances: Sequence[str], **fields: Any) -> int:
        request = {
            "name": fields.pop("name", "Nightly"),
            "repository": fields.pop("repository", self.destination),
            "schedule": "*-*-* 01:00:00",
            "retention": 3,
            "instances": list(instances),
            "enabled": True,
            **fields,
        }
        code, out, err = self.nsbackup(
            "--json", "backup", "add", "--data", json.dumps(request), user="cluster"
        )
        assert code == 0, err
        return int(out)

    # -- running --------------------------------------------------------------------------
    def env(self, user: str = "node/1", extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NSBACKUP_", "REDIS_", "RESTIC_")) and k != "NODE_ID"
        }
        password = self.server.admin_password if user == "cluster" else PASSWORDS[user]
        assert self.gateway is not None
        env.update(
            {
                "NSBACKUP_REDIS_URL": f"redis://{self.server.host}:{self.server.port}/0",
                "REDIS_USER": user,
                "REDIS_PASSWORD": password,
                "NODE_ID": "1",
                "NSBACKUP_GATEWAY_URL": self.gateway.url,
                "NSBACKUP_STATE_DIR": str(self.state_dir),
                "NSBACKUP_METRICS_DIR": str(self.metrics_dir),
                "NSBACKUP_MODULES_DIR": str(self.modules_dir),
                "NSBACKUP_RUNNER": "local",
            }
        )
        env.update(extra or {})
        return env

    def popen(
        self, *args: str, user: str = "node/1", extra: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [NSBACKUP, *args],
            env=self.env(user, extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def nsbackup(
        self,
        *args: str,
        user: str = "node/1",
        extra: Mapping[str, str] | None = None,
        timeout: float = 600,
    ) -> tuple[int, Any, str]:
        proc = subprocess.run(
            [NSBACKUP, *args],
            env=self.env(user, extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        try:
            out = json.loads(proc.stdout) if proc.stdout.strip() else None
        except json.JSONDecodeError:
            out = proc.stdout
        return proc.returncode, out, proc.stderr

    def run(self, bid: int, *args: str, **kwargs: Any) -> tuple[int, Any, str]:
        return self.nsbackup("--json", "backup", "run", str(bid), *args, **kwargs)

    def restic_as_node(
        self, mid: str, *args: str, binary: str | None = None, destination: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        from nsbackup.restic import restic_env, run_restic

        assert self.gateway is not None
        dest = destination or self.destination
        env = restic_env(
            repository_path=f"{dest}/{mid.rstrip('0123456789')}/{module_uuid(mid)}",
            user="node/1",
            password=PASSWORDS["node/1"],
            restic_password=self.restic_password(),
            gateway_url=self.gateway.url,
            binary=binary,
        )
        return run_restic(["--no-cache", *args], env, binary=binary, timeout=300)

    def restic_password(self) -> str:
        client = self.server.client()
        try:
            value = client.hget(
                "private/agents/backup_destination/restic_password", self.destination
            )
        finally:
            client.close()
        assert isinstance(value, str)
        return value

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()

    # -- processes (fault and load tests, benchmarks) ----------------------------------------
    def gateway_processes(self) -> GatewayProcesses:
        """The gateway's children now: its ``rclone rcd`` (the generation's process), the
        HAProxy master and the master's workers (dead, unreaped ones left out)."""
        assert self.gateway is not None and self.gateway.proc is not None
        table = process_table()
        below = [pid for pid, (ppid, _) in table.items() if ppid == self.gateway.proc.pid]
        rclone = [pid for pid in below if "rcd" in cmdline(pid)]
        masters = [pid for pid in below if table[pid][1] == "haproxy"]
        workers = [pid for pid, (ppid, _) in table.items() if ppid in masters]
        return GatewayProcesses(rclone, masters[0] if masters else None, workers)

    def repository_dir(self, mid: str) -> Path:
        """Where module ``mid``'s repository of the node's ``cluster`` destination lies."""
        assert self.gateway is not None
        return self.gateway.repo_dir / mid.rstrip("0123456789") / module_uuid(mid)

    def wait_backing_up(self, run_pid: int, mid: str, timeout: float = 60) -> int:
        """Until module ``mid``'s ``restic backup`` (a process below the run ``run_pid``) is
        running and holds its lock in the repository: the backup is under way, talking to
        the gateway. Return restic's pid."""
        module_dir = str((self.modules_dir / mid).resolve())
        locks = self.repository_dir(mid) / "locks"
        deadline = time.monotonic() + timeout
        while True:
            for pid in descendants(run_pid):
                args = cmdline(pid)
                if args[:1] and args[0].endswith("restic") and "backup" in args:
                    try:
                        cwd = os.readlink(f"/proc/{pid}/cwd")
                    except OSError:
                        continue
                    if cwd == module_dir and locks.is_dir() and any(locks.iterdir()):
                        return pid
            if time.monotonic() > deadline:
                raise AssertionError(f"no restic backup of {mid} under way after {timeout} s")
            time.sleep(0.02)


@attrs.frozen
class GatewayProcesses:
    rclone: list[int]
    """``rclone rcd``: one per generation still running."""
    haproxy_master: int | None
    haproxy_workers: list[int]

    @property
    def all(self) -> list[int]:
        master = [self.haproxy_master] if self.haproxy_master else []
        return [*self.rclone, *master, *self.haproxy_workers]


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every live process (zombies left out)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] not in ("Z", "X"):
            table[int(entry.name)] = (int(fields[1]), name)
    return table


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (whatever session it started)."""
    table = process_table()
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` now (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time the processes ``pids`` have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks
