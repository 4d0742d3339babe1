"""Sixteen module backups at once: aggregate throughput through one gateway against sixteen
direct ``rclone serve restic`` servers, and what the gateway costs in CPU per GB.

One real node (tests/run_world.py: Redis, the gateway serving a ``cluster`` destination on local
disk, sixteen module directories of incompressible data plus a few small files). In each round,
side by side:

  direct   sixteen ``rclone serve restic --append-only`` servers on 127.0.0.1, one per module,
           each knowing only that module's credentials; the sixteen ``restic backup`` at once
  gateway  the same sixteen ``restic backup`` at once through the gateway (HAProxy -> rclone
           rcd's append-only restic server), repository ``<destination>/<app>/<module uuid>``

Both sides run the same restic with each module's own credentials, ``--no-cache``, into fresh
repositories (``init`` is not timed), so only the server path differs. Rounds alternate which
side goes first. Printed: each round, then per side the median wall time (first start to last
end) and the aggregate MB/s; the throughput ratio gateway / direct (target >= 0.95); and CPU
(user + system, from /proc) per GB that restic added: the gateway's HAProxy + rclone rcd beside
the sixteen direct servers.

Run: .venv/bin/python bench/load.py [ROUNDS] [MEGABYTES]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nsbackup.restic import restic_env, restic_version, run_restic
from tests.cluster_seed import module_uuid
from tests.redis_server import RedisServer
from tests.run_world import RunWorld, cpu_seconds, module_password
from tests.servers import _RcloneServe

MODULES = [f"load{n}" for n in range(1, 17)]
RESTIC_TIMEOUT = 1800.0
TARGET = 0.95


class ModuleResticServer(_RcloneServe):
    """``rclone serve restic --append-only`` for one module: its credentials only."""

    name = "rclone-restic"
    protocol = "restic"

    def __init__(self, root: Path, user: str, password: str) -> None:
        super().__init__(root)
        self.user = user
        self.password = password

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        # no object cache, as the gateway's servers: files appear as they are written
        return [*self._base_command(), "--append-only", "--cache-objects=false"]

    def _env(self) -> dict[str, str]:
        return {"RCLONE_USER": self.user, "RCLONE_PASS": self.password}


@dataclass
class Side:
    name: str
    env: Callable[[str], dict[str, str]]
    """module -> restic environment of its repository"""
    storage: Callable[[str], Path]
    """module -> where its repository lies on disk (emptied before each round)"""
    pids: Callable[[], list[int]]
    """the serving processes (their CPU time is counted)"""
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    added: list[int] = field(default_factory=list)


def app_path(mid: str) -> str:
    return f"{mid.rstrip('0123456789')}/{module_uuid(mid)}"


def backup_all(side: Side, world: RunWorld) -> None:
    """Fresh repositories (not timed), then the sixteen backups at once (timed)."""
    for mid in MODULES:
        shutil.rmtree(side.storage(mid), ignore_errors=True)

    def init(mid: str) -> None:
        done = run_restic(["init", "--no-cache"], side.env(mid), timeout=RESTIC_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{side.name}: init of {mid} failed: {done.stderr[-1500:]}")

    def backup(mid: str) -> int:
        done = run_restic(
            ["backup", "--no-cache", "--json", "state"],
            side.env(mid),
            timeout=RESTIC_TIMEOUT,
            cwd=str(world.modules_dir / mid),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{side.name}: backup of {mid} failed: {done.stderr[-1500:]}")
        for line in reversed(done.stdout.splitlines()):
            message = json.loads(line) if line.startswith("{") else {}
            if message.get("message_type") == "summary":
                return int(message["data_added"])
        raise RuntimeError(f"{side.name}: no summary from restic for {mid}")

    with ThreadPoolExecutor(max_workers=len(MODULES)) as pool:
        list(pool.map(init, MODULES))
        pids = side.pids()
        cpu_before = cpu_seconds(pids)
        started = time.perf_counter()
        added = list(pool.map(backup, MODULES))
        side.seconds.append(time.perf_counter() - started)
        side.cpu.append(cpu_seconds(pids) - cpu_before)
    side.added.append(sum(added))


def main(rounds: int = 3, megabytes: float = 32.0) -> None:
    base = Path(tempfile.mkdtemp(prefix="nsbackup-bench-load-"))
    servers: list[ModuleResticServer] = []
    with RedisServer() as redis_server:
        world = RunWorld(redis_server, base, dict.fromkeys(MODULES, "1"), megabytes=megabytes)
        world.start()
        try:
            assert world.gateway is not None
            password = world.restic_password()
            for mid in MODULES:
                server = ModuleResticServer(
                    base / "direct" / mid, f"module/{mid}", module_password(mid)
                )
                servers.append(server.start())
            by_module = dict(zip(MODULES, servers, strict=True))
            gateway_url = world.gateway.url

            def gateway_env(mid: str) -> dict[str, str]:
                return restic_env(
                    repository_path=f"{world.destination}/{app_path(mid)}",
                    user=f"module/{mid}",
                    password=module_password(mid),
                    restic_password=password,
                    gateway_url=gateway_url,
                )

            def direct_env(mid: str) -> dict[str, str]:
                return restic_env(
                    repository_path=app_path(mid),
                    user=f"module/{mid}",
                    password=module_password(mid),
                    restic_password=password,
                    gateway_url=by_module[mid].url,
                )

            def direct_pids() -> list[int]:
                return [s.proc.pid for s in servers if s.proc is not None]

            sides = [
                Side("direct", direct_env, lambda m: by_module[m].root / app_path(m), direct_pids),
                Side(
                    "gateway",
                    gateway_env,
                    world.repository_dir,
                    lambda: world.gateway_processes().all,
                ),
            ]
            size = sum(
                f.stat().st_size
                for mid in MODULES
                for f in (world.modules_dir / mid / "state").rglob("*")
                if f.is_file()
            )
            version = ".".join(map(str, restic_version()))
            print(
                f"{len(MODULES)} modules x {megabytes:g} MiB ({size / 1e6:.0f} MB in all) at "
                f"once, restic {version}, {rounds} rounds, {os.cpu_count()} CPUs"
            )
            for round_no in range(rounds):
                order = sides if round_no % 2 == 0 else sides[::-1]
                for side in order:
                    backup_all(side, world)
                line = "  ".join(f"{s.name} {s.seconds[-1]:6.2f} s" for s in order)
                print(f"round {round_no + 1}/{rounds}: {line}", flush=True)
            report(sides, size)
        finally:
            for server in servers:
                server.stop(check=False)
            world.stop()
            shutil.rmtree(base, ignore_errors=True)


def report(sides: Sequence[Side], size: int) -> None:
    medians = {}
    for side in sides:
        wall = statistics.median(side.seconds)
        medians[side.name] = wall
        gigabytes = statistics.median(side.added) / 1e9
        cpu = statistics.median(side.cpu)
        who = "HAProxy + rclone rcd" if side.name == "gateway" else "16 rclone serve"
        print(
            f"  {side.name:<8} median {wall:6.2f} s  {size / 1e6 / wall:7.1f} MB/s aggregate  "
            f"server CPU {cpu:5.2f} s = {cpu / gigabytes:5.2f} s/GB ({who})"
        )
    ratio = medians["direct"] / medians["gateway"]
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"throughput gateway / direct = {ratio:.3f} (target >= {TARGET}: {verdict})")
    print("GB = restic's data_added, the bytes the backups stored")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 3,
        float(sys.argv[2]) if len(sys.argv) > 2 else 32.0,
    )
