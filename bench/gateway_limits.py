"""What the gateway's HAProxy limits cost and what they buy against idle connections.

In one run:

1. **memory** - a standalone HAProxy on the gateway's own rendered ``haproxy.cfg`` (only
   ``tune.bufsize``, ``maxconn``, ``timeout http-request``, the port and the admin socket
   changed; ``no strict-limits`` so that the file-descriptor limit of a small host does not
   stop it) holds N connections that each sent part of a request header: ``half`` (60 bytes,
   what a stalled client sends) and ``full`` (as much header as one buffer takes: the worst a
   client can make HAProxy keep). Worker RSS before and with the N connections.
2. **CPU** - the same restic backup (fresh repository, ``--no-cache``) through HAProxy variants
   that differ only in ``tune.bufsize``, the same rclone servers behind them, in rotating
   order: HAProxy and rclone CPU seconds per backup (medians). CPU time is what a busy host
   disturbs least.
3. **latency under a flood** - the real gateway (``nsbackup gateway serve``, the shipped
   configuration) holding N half-header connections from this process: one authenticated
   restic REST request and one ``restic snapshots`` as module mail1, for N below and above
   ``maxconn``; and the configuration before the fix (``maxconn 2048``,
   ``timeout http-request 30s``) with 2,100.

Run: .venv/bin/python bench/gateway_limits.py [--connections N] [--bufsizes 65536,16384]
     [--rounds N] [--data-mib N] [--skip-before] [--only memory|cpu|latency]
(about 6 minutes with the defaults on 2 CPUs; the figures are in docs/operations.md)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from nsbackup.gateway.context import GatewaySettings
from nsbackup.gateway.rc import haproxy_command
from nsbackup.plugins import load_plugins
from nsbackup.restic import restic_env, run_restic
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    RESTIC_PASSWORD,
    GatewayProcess,
    add_local_destination,
    seed_loopback_cluster,
)
from tests.redis_server import RedisServer
from tests.servers import free_port
from tests.test_gateway_limits import HALF_HEADER, HeaderFlood

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REST = {"Accept": "application/vnd.x.restic.rest.v2", "Connection": "close"}
MiB = 1024 * 1024


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def info(admin: str) -> dict[str, str]:
    answer = haproxy_command(admin, "show info")
    return dict(line.split(": ", 1) for line in answer.splitlines() if ": " in line)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def steady_rss(pid: int, timeout: float = 60) -> int:
    """RSS once it stopped growing (HAProxy reads what the flood sent after accepting)."""
    deadline = time.monotonic() + timeout
    last = rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


# -- HAProxy variants of the rendered configuration ----------------------------------------


@dataclass
class Variant:
    label: str
    bufsize: int
    maxconn: int
    port: int
    admin: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        Path(self.admin).unlink(missing_ok=True)


def start_variant(
    config: Path,
    work: Path,
    label: str,
    *,
    bufsize: int,
    maxconn: int,
    http_request: str = "120s",
) -> Variant:
    text = config.read_text()
    port = free_port("127.0.0.2")
    admin = str(work / f"{label}.sock")
    replacements = [
        (r"    master-worker\n", "    no strict-limits\n"),
        (r"tune\.bufsize \d+", f"tune.bufsize {bufsize}"),
        (r"\n    maxconn \d+", f"\n    maxconn {maxconn}"),
        (r"timeout http-request \S+", f"timeout http-request {http_request}"),
        (r"bind 127\.0\.0\.2:\d+", f"bind 127.0.0.2:{port}"),
        (r"stats socket \S+", f"stats socket {admin}"),
        (r" expose-fd listeners", ""),
    ]
    for pattern, value in replacements:
        text, count = re.subn(pattern, value, text)
        if count != 1:
            raise RuntimeError(f"{pattern!r} matched {count} times in {config}")
    path = work / f"{label}.cfg"
    path.write_text(text)
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    variant = Variant(label, bufsize, maxconn, port, admin, proc)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy variant {label} exited {proc.returncode}")
        try:
            return "Pid:" in haproxy_command(admin, "show info", 2)
        except OSError:
            return False

    _wait(up, 20, f"haproxy variant {label}")
    return variant


# -- 1. memory -------------------------------------------------------------------------------


def full_header(bufsize: int) -> bytes:
    """As much header as one buffer takes (HAProxy keeps 1 KiB for rewrites), unfinished."""
    start = b"GET / HTTP/1.1\r\nHost: 127.0.0.2\r\nX-Pad: "
    return start + b"a" * (bufsize - 2048 - len(start))


def memory(config: Path, work: Path, bufsizes: Sequence[int], count: int) -> None:
    print(f"\n1. HAProxy worker RSS holding {count} connections that sent part of a header")
    print(f"{'bufsize':>8} {'payload':>8} {'before':>10} {'with N':>10} {'per conn':>10}")
    for bufsize in bufsizes:
        for kind in ("half", "full"):
            payload = HALF_HEADER if kind == "half" else full_header(bufsize)
            variant = start_variant(
                config, work, f"mem{bufsize}{kind}", bufsize=bufsize, maxconn=count + 500
            )
            try:
                before = rss_kib(variant.proc.pid)
                with HeaderFlood(("127.0.0.2", variant.port), count, payload):
                    _wait(
                        lambda v=variant: int(info(v.admin)["CurrConns"]) >= count,
                        120,
                        "the flood to be accepted",
                    )
                    held = steady_rss(variant.proc.pid)
            finally:
                variant.stop()
            print(
                f"{bufsize // 1024:>7}K {kind:>8} {before / 1024:>8.1f}Mi {held / 1024:>8.1f}Mi "
                f"{(held - before) / count:>8.1f}Ki",
                flush=True,
            )


# -- 2. CPU per backup -----------------------------------------------------------------------


def make_data(root: Path, megabytes: int) -> Path:
    rng = random.Random(8)
    root.mkdir(parents=True)
    for index in range(3):
        (root / f"large{index}.bin").write_bytes(rng.randbytes(megabytes * MiB // 3))
    for index in range(500):
        (root / f"small{index}.txt").write_bytes(rng.randbytes(rng.randint(512, 32 * 1024)))
    return root


@dataclass
class CpuTarget:
    variant: Variant
    seconds: list[float] = field(default_factory=list)
    haproxy: list[float] = field(default_factory=list)
    rclone: list[float] = field(default_factory=list)


def rclone_pids(run_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if b"rcd" in cmdline and any(str(run_dir).encode() in a for a in cmdline):
                    pids.append(int(entry.name))
    return pids


def cpu(
    config: Path,
    work: Path,
    gw: GatewayProcess,
    dest: str,
    bufsizes: Sequence[int],
    rounds: int,
    megabytes: int,
) -> None:
    data = make_data(work / "data", megabytes)
    rclone = rclone_pids(GatewaySettings(gw.state_dir.resolve()).run_dir)
    if len(rclone) != 1:
        raise RuntimeError(f"expected one rclone rcd, found {rclone}")
    targets = [
        CpuTarget(start_variant(config, work, f"cpu{b}", bufsize=b, maxconn=8000)) for b in bufsizes
    ]
    print(f"\n2. CPU per restic backup of {megabytes} MiB + 500 small files, as node/1")
    try:
        for round_no in range(rounds):
            order = targets[round_no % len(targets) :] + targets[: round_no % len(targets)]
            for target in order:
                path = f"{dest}/bench/b{target.variant.bufsize}-r{round_no}"
                env = restic_env(
                    repository_path=path,
                    user="node/1",
                    password=PASSWORDS["node/1"],
                    restic_password=RESTIC_PASSWORD,
                    gateway_url=f"http://127.0.0.2:{target.variant.port}",
                )
                done = run_restic(["--no-cache", "init"], env, timeout=300)
                if done.returncode != 0:
                    raise RuntimeError(done.stderr)
                haproxy0 = cpu_seconds(target.variant.proc.pid)
                rclone0 = cpu_seconds(rclone[0])
                started = time.perf_counter()
                done = run_restic(["--no-cache", "backup", str(data)], env, timeout=1800)
                target.seconds.append(time.perf_counter() - started)
                if done.returncode != 0:
                    raise RuntimeError(done.stderr)
                target.haproxy.append(cpu_seconds(target.variant.proc.pid) - haproxy0)
                target.rclone.append(cpu_seconds(rclone[0]) - rclone0)
                shutil.rmtree(gw.repo_dir / "bench", ignore_errors=True)
            print(f"   round {round_no + 1}/{rounds} done", flush=True)
    finally:
        for target in targets:
            target.variant.stop()
    print(f"{'bufsize':>8} {'wall s':>8} {'haproxy s':>10} {'rclone s':>9} {'both s':>8}")
    for target in targets:
        h, r = statistics.median(target.haproxy), statistics.median(target.rclone)
        print(
            f"{target.variant.bufsize // 1024:>7}K {statistics.median(target.seconds):>8.2f} "
            f"{h:>10.2f} {r:>9.2f} {h + r:>8.2f}"
        )


# -- 3. latency under a flood ----------------------------------------------------------------


def latency(
    label: str, url: str, admin: str, pid: int, repo: str, count: int, maxconn: int
) -> None:
    mail1 = ("module/mail1", PASSWORDS["module/mail1"])
    env = restic_env(
        repository_path=repo,
        user=mail1[0],
        password=mail1[1],
        restic_password=RESTIC_PASSWORD,
        gateway_url=url,
    )
    host, port = url.removeprefix("http://").split(":")
    with HeaderFlood((host, int(port)), count) as flood:
        if count:
            _wait(
                lambda: int(info(admin)["CurrConns"]) >= min(count, maxconn),
                60,
                "the flood to be accepted",
            )
        held = rss_kib(pid)
        started = time.perf_counter()
        status = requests.get(f"{url}/{repo}/config", auth=mail1, headers=REST, timeout=120)
        rest = time.perf_counter() - started
        started = time.perf_counter()
        snapshots = run_restic(["--no-cache", "snapshots"], env, timeout=300)
        restic = time.perf_counter() - started
        waiting = flood.waiting()
    print(
        f"{label:>28} {count:>7} {rest:>8.2f}s ({status.status_code}) {restic:>8.2f}s "
        f"({snapshots.returncode}) {waiting:>8} {held / 1024:>8.1f}Mi",
        flush=True,
    )


def flood_latency(
    config: Path, work: Path, gw: GatewayProcess, repo: str, count: int, skip_before: bool
) -> None:
    settings = GatewaySettings(gw.state_dir.resolve())
    admin = settings.admin_socket
    maxconn = int(info(admin)["Maxconn"])
    pid = int(info(admin)["Pid"])
    print(
        f"\n3. Authenticated requests while N half-header connections are held (maxconn {maxconn})"
    )
    print(
        f"{'configuration':>28} {'N':>7} {'REST GET':>14} {'restic snapshots':>16} "
        f"{'held':>8} {'RSS':>10}"
    )
    counts = sorted({0, 2100, min(count, maxconn - 500), maxconn + 1000})
    for n in counts:
        latency("shipped", gw.url, admin, pid, repo, n, maxconn)
    if skip_before:
        return
    before = start_variant(config, work, "before", bufsize=65536, maxconn=2048, http_request="30s")
    try:
        url = f"http://127.0.0.2:{before.port}"
        latency("before (2048, 30s)", url, before.admin, before.proc.pid, repo, 2100, 2048)
    finally:
        before.stop()


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--bufsizes", default="65536,32768,16384")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-mib", type=int, default=192)
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument("--only", choices=["memory", "cpu", "latency"])
    args = parser.parse_args(argv)
    bufsizes = [int(b) for b in args.bufsizes.split(",")]

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"file descriptors: hard limit {hard}; {os.cpu_count()} CPUs")
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="nsb-bench-limits-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        redis_server = stack.enter_context(RedisServer())
        client = redis_server.client()
        seed_loopback_cluster(client)
        host = load_plugins(disabled=set())
        port = free_port("127.0.0.2")
        dest = add_local_destination(client, host, port).id
        gw = stack.enter_context(GatewayProcess(redis_server, "1", port, work / "gw"))
        config = gw.state_dir / "haproxy.cfg"
        repo = f"{dest}/mail/{module_uuid('mail1')}"
        env = restic_env(
            repository_path=repo,
            user="module/mail1",
            password=PASSWORDS["module/mail1"],
            restic_password=RESTIC_PASSWORD,
            gateway_url=gw.url,
        )
        for command in (["init"], ["backup", str(Path(__file__).parent)]):
            done = run_restic(["--no-cache", *command], env, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
        if args.only in (None, "memory"):
            memory(config, work, bufsizes, args.connections)
        if args.only in (None, "cpu"):
            cpu(config, work, gw, dest, bufsizes, args.rounds, args.data_mib)
        if args.only in (None, "latency"):
            flood_latency(config, work, gw, repo, args.connections, args.skip_before)


if __name__ == "__main__":
    main()
