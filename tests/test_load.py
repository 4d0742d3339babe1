"""Load: sixteen modules backed up at once through one gateway (``backup run --jobs 16``), with
real Redis, gateway, rclone and restic. Every backup succeeds, every repository checks clean,
every restore is byte-identical, and the gateway's memory stays bounded while it carries them.

Throughput is measured in bench/load.py, not here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.run_world import RunWorld, rss_bytes
from tests.test_runs import restore_equal

MODULES = [f"load{n}" for n in range(1, 17)]
MEGABYTES = 8.0
MiB = 1024 * 1024
RCLONE_RSS_BOUND = 512 * MiB
"""Generous: rclone rcd idles at ~70 MiB and carries sixteen uploads in well under this."""
HAPROXY_RSS_BOUND = 128 * MiB
"""Master and workers together: they idle at ~20 MiB; sixteen connections need a few buffers."""


class RssSampler:
    """Samples the RSS of the gateway's rclone and HAProxy processes every 50 ms; keeps the
    peak of each group's sum."""

    def __init__(self, world: RunWorld) -> None:
        self.world = world
        self.peak = {"rclone": 0, "haproxy": 0}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            processes = self.world.gateway_processes()
            master = [processes.haproxy_master] if processes.haproxy_master else []
            sums = {
                "rclone": sum(rss_bytes(pid) for pid in processes.rclone),
                "haproxy": sum(rss_bytes(pid) for pid in [*master, *processes.haproxy_workers]),
            }
            for group, value in sums.items():
                self.peak[group] = max(self.peak[group], value)
            self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture()
def world(redis_server: RedisServer, tmp_path: Path) -> Iterator[RunWorld]:
    redis_server.flush()
    world = RunWorld(redis_server, tmp_path, dict.fromkeys(MODULES, "1"), megabytes=MEGABYTES)
    world.start()
    try:
        yield world
    finally:
        world.stop()
        redis_server.flush()


def test_sixteen_modules_at_once_through_one_gateway_succeed_check_clean_and_restore_identical(
    world: RunWorld, tmp_path: Path
) -> None:
    bid = world.add_schedule(MODULES, name="load")
    with RssSampler(world) as sampler:
        code, report, err = world.run(bid, "--jobs", "16")
    assert code == 0, err
    assert [m["module_id"] for m in report["modules"]] == MODULES
    assert all(m["success"] and m["added_bytes"] > MEGABYTES * MiB for m in report["modules"])
    spans = [(m["locked_at"], m["unlocked_at"]) for m in report["modules"]]
    assert max(start for start, _ in spans) < min(end for _, end in spans), "not all at once"

    def verify(mid: str) -> None:
        checked = world.restic_as_node(mid, "check")
        assert checked.returncode == 0, f"{mid}: {checked.stdout[-1000:]}{checked.stderr[-1000:]}"
        assert "no errors were found" in checked.stdout
        restore_equal(world, mid, tmp_path / "restored" / mid)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(verify, MODULES))  # re-raises the first failure

    print(
        f"\n16 modules x {MEGABYTES:g} MiB at once in {report['duration']:.1f} s; gateway peak "
        f"RSS: rclone {sampler.peak['rclone'] / MiB:.0f} MiB, HAProxy "
        f"{sampler.peak['haproxy'] / MiB:.0f} MiB ({sampler.samples} samples)"
    )
    assert sampler.samples >= 5 and sampler.peak["rclone"] and sampler.peak["haproxy"]
    assert sampler.peak["rclone"] < RCLONE_RSS_BOUND
    assert sampler.peak["haproxy"] < HAPROXY_RSS_BOUND
