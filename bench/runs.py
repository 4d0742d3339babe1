"""What a run costs beyond restic itself, what --jobs buys, and how fast a lock is handed over.

One real node (Redis, the gateway serving a ``cluster`` destination on local disk, eight
module directories of mixed data, >= 40 MB each) measured side by side in one run:

  direct  eight sequential ``restic init`` + ``restic backup`` of the modules' ``state/`` with
          their own credentials through the same gateway (what the work costs without nsbackup)
  + stats the same loop also times, after each backup, the ``restic stats --json latest`` with
          node credentials that NS8's contract asks of every run (ref §5.3): the work a run
          does beyond ``direct``, done by hand, so the two ratios tell restic's share of the
          overhead from nsbackup's own
  jobs 1  ``nsbackup backup run --jobs 1`` of the same eight modules (module side, stats,
          retention, status, metadata, report)
  jobs 4  the same with ``--jobs 4``

Each round uses a new destination directory so every backup is a first, full one. Rounds are
interleaved; medians are printed with the ratios: run overhead (jobs 1 / direct, target <=
1.10), the same against direct + stats, and the speed-up of jobs 4 over jobs 1. Then the lock
hand-over latency: a run waiting for a module held by another schedule's run, from the release
to the take-over (median of 5; NS8 polls every 60 s).

Run: .venv/bin/python bench/runs.py [ROUNDS] [MEGABYTES]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nsbackup.restic import restic_env, run_restic
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.redis_server import RedisServer
from tests.run_world import RunWorld, module_password

MODULES = [f"app{n}" for n in range(1, 9)]


def direct(world: RunWorld, destination: str) -> tuple[float, float]:
    """Seconds of init + backup, and seconds of the node's stats, for the eight modules."""
    assert world.gateway is not None
    password = world.restic_password()
    backups = stats = 0.0
    for mid in MODULES:
        repository = f"{destination}/{mid.rstrip('0123456789')}/{module_uuid(mid)}"
        env = restic_env(
            repository_path=repository,
            user=f"module/{mid}",
            password=module_password(mid),
            restic_password=password,
            gateway_url=world.gateway.url,
            cache_dir=str(world.base / "direct-cache" / mid),
        )
        started = time.perf_counter()
        assert run_restic(["init"], env).returncode == 0
        done = run_restic(["backup", "state"], env, cwd=str(world.modules_dir / mid))
        assert done.returncode == 0, done.stderr
        backups += time.perf_counter() - started
        node = restic_env(
            repository_path=repository,
            user="node/1",
            password=PASSWORDS["node/1"],
            restic_password=password,
            gateway_url=world.gateway.url,
            cache_dir=str(world.base / "direct-cache" / "node"),
        )
        started = time.perf_counter()
        done = run_restic(["stats", "--json", "latest"], node)
        assert done.returncode == 0, done.stderr
        stats += time.perf_counter() - started
    return backups, stats


def nsbackup_run(world: RunWorld, bid: int, jobs: int) -> float:
    started = time.perf_counter()
    code, _report, err = world.run(bid, "--jobs", str(jobs))
    elapsed = time.perf_counter() - started
    assert code == 0, err
    return elapsed


def handover(world: RunWorld, samples: int) -> list[float]:
    client = world.server.client()
    try:
        world.add_module(client, "shared1")
    finally:
        client.close()
    one = world.add_schedule(["shared1"], name="one")
    two = world.add_schedule(["shared1"], name="two")
    latencies = []
    for _ in range(samples):
        first = world.popen("--json", "backup", "run", str(one))
        lock = world.state_dir / "locks" / "module-shared1.lock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if lock.read_text().strip() == str(first.pid):
                    break
            except OSError:
                pass
            time.sleep(0.01)
        code, second, err = world.run(two)
        out, _ = first.communicate(timeout=300)
        assert code == 0, err
        held = json.loads(out)["modules"][0]
        latencies.append(second["modules"][0]["locked_at"] - held["unlocked_at"])
    return latencies


def main(rounds: int = 3, megabytes: float = 40.0) -> None:
    base = Path(tempfile.mkdtemp(prefix="nsbackup-bench-runs-"))
    with RedisServer() as server:
        world = RunWorld(server, base, {mid: "1" for mid in MODULES}, megabytes=megabytes)
        world.start()
        try:
            times: dict[str, list[float]] = {
                "direct": [],
                "+ stats": [],
                "jobs 1": [],
                "jobs 4": [],
            }
            for round_ in range(rounds):
                for name in times:
                    if name == "+ stats":
                        continue  # measured with direct
                    # a fresh repository for every measurement: always a first, full backup
                    shutil.rmtree(world.base / "node1" / "repo", ignore_errors=True)
                    (world.base / "node1" / "repo").mkdir(parents=True)
                    if name == "direct":
                        backups, stats = direct(world, world.destination)
                        times["direct"].append(backups)
                        times["+ stats"].append(backups + stats)
                    else:
                        bid = world.add_schedule(MODULES, name=f"{name} {round_}")
                        times[name].append(nsbackup_run(world, bid, int(name.split()[1])))
            size = sum(
                f.stat().st_size
                for mid in MODULES
                for f in (world.modules_dir / mid / "state").rglob("*")
                if f.is_file()
            )
            print(f"8 modules, {size / 2**20:.0f} MiB in all, {rounds} interleaved rounds")
            medians = {name: statistics.median(values) for name, values in times.items()}
            for name, value in medians.items():
                samples = ", ".join(f"{v:.2f}" for v in times[name])
                print(f"  {name:<7} median {value:6.2f} s   ({samples})")
            print(f"run overhead  jobs 1 / direct = {medians['jobs 1'] / medians['direct']:.3f}")
            print(
                "              jobs 1 / (direct + stats) = "
                f"{medians['jobs 1'] / medians['+ stats']:.3f}"
                "  (restic stats with node credentials is NS8's contract, ref §5.3)"
            )
            print(f"speed-up      jobs 1 / jobs 4 = {medians['jobs 1'] / medians['jobs 4']:.3f}")
            latencies = handover(world, 5)
            print(
                "lock hand-over: median "
                f"{statistics.median(latencies) * 1000:.0f} ms "
                f"({', '.join(f'{v * 1000:.0f}' for v in latencies)} ms; NS8: up to 60 s)"
            )
        finally:
            world.stop()
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 3,
        float(sys.argv[2]) if len(sys.argv) > 2 else 40.0,
    )
