"""restic backup throughput through the gateway, and how fast the gateway follows Redis events.

In one run, side by side:

- (a) restic into a local repository (``restic -r /path``);
- (b) restic into a direct ``rclone serve restic`` over TCP on 127.0.0.1 (the baseline);
- (c) restic as module mail1 through one real gateway (``nsbackup gateway serve``: HAProxy in
  front of ``rclone rcd``), repository ``<dest-uuid>/mail/<mail1-uuid>`` of a ``cluster``
  destination hosted by node 1.

Every round backs up the same mixed data set (large random files, thousands of small files,
compressible text) once into each target, in a rotating order; each target gets a fresh
repository per round (``restic init`` is not timed) and every run uses ``--no-cache``, so each
timed ``restic backup`` uploads the whole data set. Then it measures how long the gateway takes
to accept a new module user after ``cluster/event/acl-changed`` and to serve a new destination
after ``cluster/event/backup-destination-changed``.

Besides wall-clock times it prints the CPU time of restic and of the serving processes per
backup, which a busy host disturbs much less than the wall clock.

Run: .venv/bin/python bench/gateway.py [--rounds N] [--acl-changes N] [--destination-changes N]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
import requests

from nsbackup import acl
from nsbackup.gateway.context import PROBE_NAME, REST_ACCEPT, GatewaySettings
from nsbackup.plugins import PluginHost, load_plugins
from nsbackup.restic import restic_env, restic_version, run_restic
from nsbackup.store import EVENT_ACL_CHANGED
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    RESTIC_PASSWORD,
    GatewayProcess,
    add_destination,
    seed_loopback_cluster,
)
from tests.redis_server import RedisServer
from tests.servers import _kill_pids, _RcloneServe, free_port

SEED = 20240601
MIN_DATA_BYTES = 300_000_000
POLL_INTERVAL = 0.010
POLL_DEADLINE = 30.0
RESTIC_TIMEOUT = 1800.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KiB = 1024
MiB = 1024 * KiB


# -- the data set ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    root: Path
    files: int
    total_bytes: int
    parts: dict[str, tuple[int, int]]
    """kind -> (files, bytes)"""


def _words(rng: random.Random, count: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(count)]


def _text(rng: random.Random, vocabulary: list[str], size: int) -> bytes:
    """About ``size`` bytes of log-like, compressible text."""
    chunks: list[str] = []
    length = 0
    line = 0
    while length < size:
        words = rng.choices(vocabulary, k=12 * 256)
        block = "\n".join(
            f"{line + i:08d} INFO " + " ".join(words[i * 12 : (i + 1) * 12]) for i in range(256)
        )
        chunks.append(block + "\n")
        length += len(chunks[-1])
        line += 256
    return "".join(chunks).encode()[:size]


def make_data_set(
    root: Path,
    *,
    large: Sequence[int] = (64 * MiB, 64 * MiB, 48 * MiB),
    small_files: int = 3000,
    small_range: tuple[int, int] = (1 * KiB, 64 * KiB),
    text_files: int = 24,
    text_size: int = 2 * MiB,
) -> DataSet:
    """Write a deterministic mixed data set under ``root``."""
    rng = random.Random(SEED)
    parts: dict[str, tuple[int, int]] = {}

    big = root / "large"
    big.mkdir(parents=True)
    for index, size in enumerate(large):
        (big / f"blob{index}.bin").write_bytes(rng.randbytes(size))
    parts["large random"] = (len(large), sum(large))

    small = root / "small"
    total = 0
    for index in range(small_files):
        directory = small / f"d{index // 100:03d}"
        if index % 100 == 0:
            directory.mkdir(parents=True)
        size = rng.randint(*small_range)
        (directory / f"f{index:05d}.dat").write_bytes(rng.randbytes(size))
        total += size
    parts["small random"] = (small_files, total)

    text = root / "text"
    text.mkdir()
    vocabulary = _words(rng, 4000)
    for index in range(text_files):
        (text / f"log{index:02d}.txt").write_bytes(_text(rng, vocabulary, text_size))
    parts["text"] = (text_files, text_files * text_size)

    files = sum(count for count, _ in parts.values())
    size = sum(size for _, size in parts.values())
    if size < MIN_DATA_BYTES:
        raise RuntimeError(f"data set too small: {size} bytes")
    return DataSet(root, files, size, parts)


# -- the servers ----------------------------------------------------------------------------


class RcloneResticServer(_RcloneServe):
    """``rclone serve restic`` over a local directory, on 127.0.0.1, no authentication."""

    name = "rclone-restic"
    protocol = "restic"

    def __init__(self, root: Path, extra: Sequence[str] = ()) -> None:
        super().__init__(root)
        self.extra = list(extra)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [*self._base_command(), *self.extra]


@dataclass
class Cluster:
    """Redis seeded with the loopback cluster, a ``cluster`` destination and one gateway."""

    redis_server: RedisServer
    client: redis.Redis
    host: PluginHost
    gateway: GatewayProcess
    destination: str
    markers: tuple[str, ...]
    """paths that only the gateway's processes have on their command line"""


def start_cluster(stack: contextlib.ExitStack, base: Path) -> Cluster:
    server = RedisServer().start()
    stack.callback(server.stop)
    client = server.client()
    stack.callback(client.close)
    seed_loopback_cluster(client)
    host = load_plugins(disabled=set())
    port = free_port("127.0.0.2")
    prepared = add_destination(
        client,
        host,
        {
            "provider": "cluster",
            "name": "bench",
            "url": f"webdav:http://127.0.0.2:{port}",
            "parameters": {},
        },
    )
    gateway = GatewayProcess(server, "1", port, base)
    # Sockets may move out of the state directory when its path is long (see run_dir).
    run_dir = GatewaySettings(gateway.state_dir.resolve()).run_dir
    markers = (str(base.resolve()), str(run_dir))
    stack.callback(_stop_gateway, gateway, markers)
    gateway.start()
    return Cluster(server, client, host, gateway, prepared.id, markers)


def _stop_gateway(gateway: GatewayProcess, markers: Sequence[str]) -> None:
    """Stop the gateway; then end what it left behind (its HAProxy and rclone run in their
    own sessions), found by our private directory on their command line."""
    started = time.perf_counter()
    try:
        code = gateway.stop()
        if code != 0:
            print(f"warning: gateway exited {code}:\n{gateway.log()}", file=sys.stderr)
    except Exception as exc:  # still clean up the rest
        print(
            f"warning: gateway did not stop within its timeout "
            f"({time.perf_counter() - started:.0f}s, {type(exc).__name__}); log tail:\n"
            f"{gateway.log()[-1500:]}",
            file=sys.stderr,
        )
    leftovers = _pids_mentioning(*markers)
    if leftovers:
        print(f"warning: ending {len(leftovers)} process(es) the gateway left", file=sys.stderr)
        _kill_pids(leftovers)


def _pids_mentioning(*texts: str) -> list[int]:
    """Our own processes whose command line contains one of ``texts`` (private temp paths),
    each once."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if any(text.encode() in cmdline for text in texts):
                    pids.append(int(entry.name))
    return pids


# -- restic targets -------------------------------------------------------------------------


@dataclass
class Target:
    key: str
    label: str
    env: Callable[[int], dict[str, str]]
    """round -> restic environment of that round's repository"""
    storage: Callable[[int], Path]
    """round -> where that round's repository lies on disk (removed before and after)"""
    server_pids: Callable[[], list[int]] = list
    """the processes serving this target (their CPU time is counted)"""
    seconds: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    added: list[int] = field(default_factory=list)


def local_target(root: Path) -> Target:
    return Target(
        "a",
        "local repository",
        lambda n: {"RESTIC_REPOSITORY": str(root / f"r{n}"), "RESTIC_PASSWORD": RESTIC_PASSWORD},
        lambda n: root / f"r{n}",
    )


def rclone_target(server: RcloneResticServer) -> Target:
    return Target(
        "b",
        "rclone serve restic",
        lambda n: {
            "RESTIC_REPOSITORY": f"rest:{server.url}/r{n}/",
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
        },
        lambda n: server.root / f"r{n}",
        lambda: [server.proc.pid] if server.proc else [],
    )


def gateway_target(cluster: Cluster) -> Target:
    """Module mail1 through the gateway: always its one repository, emptied on disk."""
    mail1 = module_uuid("mail1")
    env = restic_env(
        repository_path=f"{cluster.destination}/mail/{mail1}",
        user="module/mail1",
        password=PASSWORDS["module/mail1"],
        restic_password=RESTIC_PASSWORD,
        gateway_url=cluster.gateway.url,
    )
    return Target(
        "c",
        "gateway as mail1",
        lambda n: env,
        lambda n: cluster.gateway.repo_dir / "mail" / mail1,
        lambda: _pids_mentioning(*cluster.markers),
    )


def _restic(args: Sequence[str], env: dict[str, str], what: str, cwd: Path | None = None) -> str:
    result = run_restic(args, env, timeout=RESTIC_TIMEOUT, cwd=str(cwd) if cwd else None)
    if result.returncode != 0:
        raise RuntimeError(
            f"restic {what} failed ({result.returncode}):\n{result.stderr[-3000:]}"
            f"\n{result.stdout[-1000:]}"
        )
    return result.stdout


def timed_backup(target: Target, round_no: int, data: DataSet) -> float:
    """Init a fresh repository (not timed), time ``restic backup``, remove the repository."""
    storage = target.storage(round_no)
    shutil.rmtree(storage, ignore_errors=True)
    env = target.env(round_no)
    _restic(["init", "--no-cache"], env, f"init ({target.label})")
    pids = target.server_pids()
    server_before = cpu_seconds(pids)
    client_before = _children_cpu()
    start = time.perf_counter()
    out = _restic(
        ["backup", "--no-cache", "--json", "--host", "bench", "."],
        env,
        f"backup ({target.label})",
        cwd=data.root,
    )
    elapsed = time.perf_counter() - start
    target.client_cpu.append(_children_cpu() - client_before)
    target.server_cpu.append(cpu_seconds(pids) - server_before)
    summary = _summary(out)
    target.seconds.append(elapsed)
    target.added.append(int(summary.get("data_added", 0)))
    if int(summary.get("total_files_processed", -1)) != data.files:
        raise RuntimeError(f"{target.label}: restic saw {summary} for {data.files} files")
    shutil.rmtree(storage, ignore_errors=True)
    return elapsed


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time the processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _summary(out: str) -> dict[str, Any]:
    for line in reversed(out.splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("message_type") == "summary":
                return message
    raise RuntimeError(f"no restic summary in: {out[-500:]}")


def run_rounds(targets: list[Target], data: DataSet, rounds: int) -> None:
    for round_no in range(rounds):
        shift = round_no % len(targets)
        order = targets[shift:] + targets[:shift]  # rotate: no target always goes first
        line = []
        for target in order:
            elapsed = timed_backup(target, round_no, data)
            line.append(f"({target.key}) {elapsed:6.2f}s")
        print(f"round {round_no + 1}/{rounds}: " + "  ".join(line), flush=True)


# -- reacting to events ---------------------------------------------------------------------


Sample = tuple[float | None, int]
"""(seconds, or None after the deadline; last HTTP status, 0 for no answer)"""


def poll(
    request: Callable[[], int], done: Callable[[int], bool], start: float | None = None
) -> Sample:
    """Call ``request`` every 10 ms until ``done(status)``; return (seconds since ``start``
    (default: now) or None after ``POLL_DEADLINE``, last status)."""
    start = time.perf_counter() if start is None else start
    deadline = start + POLL_DEADLINE
    while True:
        try:
            status = request()
        except requests.RequestException:
            status = 0
        now = time.perf_counter()
        if done(status):
            return now - start, status
        if now > deadline:
            return None, status
        time.sleep(POLL_INTERVAL)


def add_module(client: redis.Redis, mid: str, node: str, password: str) -> str:
    """Everything NS8 writes for a new module, except the event. Return its repository path
    inside a destination (``<app>/<uuid>``)."""
    user = f"module/{mid}"
    rules = acl.module_rules(mid)
    client.acl_setuser(user, enabled=True, reset=True, passwords=[f"+{password}"])
    client.execute_command("ACL", "SETUSER", user, *rules)  # type: ignore[no-untyped-call]
    digest = hashlib.sha256(password.encode()).hexdigest()
    app = mid.rstrip("0123456789")
    pipe = client.pipeline(transaction=True)
    pipe.hset("cluster/module_node", mid, node)
    pipe.hset("cluster/module_uuid", mid, module_uuid(mid))
    pipe.hset(f"module/{mid}/environment", "IMAGE_URL", f"ghcr.io/nethserver/{app}:1.0.0")
    pipe.set(f"module/{mid}/ui_name", f"Bench {mid}")
    pipe.sadd("cluster/acls", acl.acl_line(user, digest, rules))
    pipe.execute()
    return f"{app}/{module_uuid(mid)}"


def acl_change_latency(cluster: Cluster, index: int) -> Sample:
    mid = f"benchapp{index}"
    password = f"{mid}-pw"
    path = add_module(cluster.client, mid, "1", password)
    url = f"{cluster.gateway.url}/{cluster.destination}/{path}/config"

    def request() -> int:
        return requests.get(
            url, headers={"Accept": REST_ACCEPT}, auth=(f"module/{mid}", password), timeout=2
        ).status_code

    if (before := request()) != 401:
        raise RuntimeError(f"module/{mid} answered {before} before the event, expected 401")
    start = time.perf_counter()
    cluster.client.publish(EVENT_ACL_CHANGED, "cluster/acls")
    return poll(request, lambda status: status not in (401, 0), start)


def destination_change_latency(cluster: Cluster, index: int) -> Sample:
    """Add a destination (Store.add_destination publishes backup-destination-changed with
    ``{"destination_ids": [id]}`` in the same transaction) and wait until it is served."""
    host, port = cluster.gateway.ip, cluster.gateway.port + index  # only the URL differs
    payload: dict[str, object] = {
        "provider": "cluster",
        "name": f"second{index}",
        "url": f"webdav:http://{host}:{port}",
        "parameters": {},
    }
    start = time.perf_counter()
    prepared = add_destination(cluster.client, cluster.host, payload)
    url = f"{cluster.gateway.url}/{prepared.id}/{PROBE_NAME}"

    def request() -> int:
        return requests.get(url, headers={"Accept": REST_ACCEPT}, timeout=2).status_code

    return poll(request, lambda status: status == 404, start)


# -- report ---------------------------------------------------------------------------------


def describe(data: DataSet) -> str:
    parts = ", ".join(
        f"{kind}: {count} files {size / MiB:.0f} MiB" for kind, (count, size) in data.parts.items()
    )
    return f"{data.files} files, {data.total_bytes / 1e6:.0f} MB ({parts})"


def print_table(targets: list[Target], data: DataSet) -> None:
    print()
    print(
        f"{'target':<28} {'median':>8} {'min':>8} {'max':>8} {'MB/s':>6} "
        f"{'restic CPU':>10} {'server CPU':>10} {'added MB':>8}"
    )
    for t in targets:
        median = statistics.median(t.seconds)
        print(
            f"({t.key}) {t.label:<24} {median:>7.2f}s {min(t.seconds):>7.2f}s "
            f"{max(t.seconds):>7.2f}s {data.total_bytes / 1e6 / median:>6.1f} "
            f"{statistics.median(t.client_cpu):>9.2f}s {statistics.median(t.server_cpu):>9.2f}s "
            f"{statistics.median(t.added) / 1e6:>8.1f}"
        )
    wall = {t.key: statistics.median(t.seconds) for t in targets}
    cpu = {t.key: statistics.median(t.server_cpu) for t in targets}
    cb = wall["c"] / wall["b"]
    verdict = "met" if cb <= 1.05 else "NOT met"
    print(
        f"ratio c/b = {cb:.3f} (target <= 1.05: {verdict}); c/a = {wall['c'] / wall['a']:.3f}; "
        f"server CPU c/b = {cpu['c'] / cpu['b']:.2f}"
    )
    print(
        "CPU columns: medians of user+system seconds per backup; restic = the client, "
        "server = rclone serve (b) or every gateway process: rclone rcd, HAProxy, nsbackup (c); "
        "added MB = restic's data_added (before compression)"
    )


def print_latencies(title: str, samples: list[Sample]) -> None:
    values = [seconds for seconds, _ in samples if seconds is not None]
    statuses = sorted({status for _, status in samples})
    each = ", ".join(
        "timeout" if seconds is None else f"{seconds * 1000:.0f}" for seconds, _ in samples
    )
    summary = (
        f"median {statistics.median(values) * 1000:.0f} ms, min {min(values) * 1000:.0f} ms, "
        f"max {max(values) * 1000:.0f} ms"
        if values
        else "no answer"
    )
    timeouts = len(samples) - len(values)
    print(
        f"{title}: {summary} over {len(samples)}"
        + (f", {timeouts} without change after {POLL_DEADLINE:.0f}s" if timeouts else "")
        + f" (final status {statuses}; each: {each} ms)"
    )


# -- main -----------------------------------------------------------------------------------


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--acl-changes", type=int, default=5)
    parser.add_argument("--destination-changes", type=int, default=3)
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix="nsb-bench-gw-"))
        stack.callback(shutil.rmtree, base, ignore_errors=True)

        started = time.perf_counter()
        data = make_data_set(base / "data")
        print(f"data set: {describe(data)}, written in {time.perf_counter() - started:.1f}s")
        major, minor, patch = restic_version()
        print(f"restic {major}.{minor}.{patch}, --no-cache, fresh repository per backup")

        cluster = start_cluster(stack, base / "cluster")
        rclone = RcloneResticServer(base / "rclone-root").start()
        stack.callback(rclone.stop, check=False)
        local = base / "local"
        local.mkdir()
        targets = [local_target(local), rclone_target(rclone), gateway_target(cluster)]
        print(f"(b) {rclone.url}  (c) {cluster.gateway.url} destination {cluster.destination}")
        print(f"host: {os.cpu_count()} CPUs, {_load()} before the backups")
        try:
            run_rounds(targets, data, args.rounds)
        except BaseException:
            print(f"gateway log:\n{cluster.gateway.log()}", file=sys.stderr)
            raise
        print(f"host: {_load()} after the backups (a busy host blurs the wall-clock ratios)")
        print_table(targets, data)

        print()
        acl_samples = [acl_change_latency(cluster, i + 1) for i in range(args.acl_changes)]
        print_latencies("acl-changed -> new module user accepted", acl_samples)
        dest_samples = [
            destination_change_latency(cluster, i + 1) for i in range(args.destination_changes)
        ]
        print_latencies("destination added -> its probe answers 404", dest_samples)


if __name__ == "__main__":
    main()
