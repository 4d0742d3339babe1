"""Snapshot and `backup list` cost against a real redis-server, small vs large cluster.

Builds a cluster of 30 nodes, 10,000 modules, 200 destinations and 100 schedules (and a small
one beside it), then prints Redis round trips and median times for loading the snapshot and
for `backup list`, side by side, with the large/small ratios. Run: .venv/bin/python bench/store.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nsbackup.schedules import ScheduleService
from nsbackup.store import Store
from tests.redis_server import RedisServer


def build(client, nodes: int, modules: int, destinations: int, schedules: int) -> None:  # type: ignore[no-untyped-def]
    client.flushall()
    pipe = client.pipeline(transaction=False)
    pipe.hset("cluster/environment", "NODE_ID", "1")
    pipe.set("cluster/network", "10.5.0.0/16")
    for n in range(1, nodes + 1):
        pipe.hset(f"node/{n}/vpn", "ip_address", f"10.5.{n // 250}.{n % 250 + 1}")
    mids = [f"app{i}" for i in range(modules)]
    for i, mid in enumerate(mids):
        pipe.hset("cluster/module_node", mid, str(i % nodes + 1))
        pipe.hset("cluster/module_uuid", mid, str(uuid.uuid4()))
        pipe.hset(f"module/{mid}/environment", "IMAGE_URL", "ghcr.io/x/app:1")
        pipe.set(f"module/{mid}/ui_name", f"App {i}")
    dests = [str(uuid.uuid4()) for _ in range(destinations)]
    for d in dests:
        pipe.hset(
            f"cluster/backup_repository/{d}",
            mapping={
                "url": f"b2:b-{d[:8]}",
                "name": d[:8],
                "provider": "backblaze",
                "basepath": "",
            },
        )
        pipe.hset(
            "private/nodes/backup_destination/rclone_conf",
            d,
            f"[{d}]\ntype = b2\naccount = a\nkey = k\n",
        )
        pipe.hset("private/agents/backup_destination/restic_password", d, "p" * 64)
    per = max(1, modules // schedules)
    for b in range(1, schedules + 1):
        members = mids[(b - 1) * per : b * per]
        pipe.hset(
            f"cluster/backup/{b}",
            mapping={
                "name": f"B{b}",
                "repository": dests[b % destinations],
                "schedule": "daily",
                "schedule_hint": "{}",
                "retention": "3",
                "enabled": "1",
                "instances": " ".join(members),
            },
        )
        for mid in members:
            node = mids.index(mid) % nodes + 1 if modules < 2000 else int(mid[3:]) % nodes + 1
            pipe.hset(
                f"node/{node}/backup_status/{b}",
                mid,
                json.dumps({"start": 1, "end": 2, "errors": 0}),
            )
    pipe.set("cluster/backup_sequence", str(schedules))
    pipe.execute()


def measure(store: Store, func, repeat: int = 5) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    times = []
    trips = 0
    for _ in range(repeat):
        before = store.round_trips
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
        trips = store.round_trips - before
    return trips, statistics.median(times)


def main() -> None:
    sizes = {"small": (3, 20, 2, 2), "large": (30, 10_000, 200, 100)}
    rows = {}
    with RedisServer() as server:
        for label, (nodes, modules, dests, scheds) in sizes.items():
            build(server.client(), nodes, modules, dests, scheds)
            store = Store(server.client())
            service = ScheduleService(store)
            rows[label] = {
                "snapshot (gateway)": measure(store, lambda s=store: s.load(details=False)),
                "snapshot (details)": measure(store, store.load),
                "snapshot+status": measure(store, lambda s=store: s.load(statuses=True)),
                "backup list": measure(store, service.list),
            }
    print(
        f"{'operation':<20} {'small: trips':>12} {'time':>9} {'large: trips':>13} "
        f"{'time':>9} {'time ratio':>10}"
    )
    for op in rows["small"]:
        (st, stime), (lt, ltime) = rows["small"][op], rows["large"][op]
        print(
            f"{op:<20} {st:>12} {stime * 1000:>7.1f}ms {lt:>13} {ltime * 1000:>7.1f}ms "
            f"{ltime / stime:>9.1f}x"
        )
    print(
        "large = 30 nodes, 10,000 modules, 200 destinations, 100 schedules; "
        "small = 3 nodes, 20 modules, 2 destinations, 2 schedules"
    )


if __name__ == "__main__":
    main()
