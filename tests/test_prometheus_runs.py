"""The ``prometheus`` sink end to end: real ``nsbackup backup run`` and ``backup check`` on a
whole node (tests/run_world.py) write the files into ``NSBACKUP_METRICS_DIR``; a failed module
turns NS8's gauge to 0 and keeps the last success; a disabled schedule's files are purged."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nsbackup.api import Cluster, Settings
from tests.cluster_seed import PASSWORDS
from tests.redis_server import RedisServer
from tests.run_world import RunWorld

NAME = 'Nightly "prod" C:\\bk'
OTHERS = {"node_cpu.prom": "node_cpu_x 1\n", "backupX.prom": "x 1\n", "backup.prom": "x 1\n"}


def metrics(path: Path) -> dict[tuple[str, str], float]:
    """(metric name, module label or "") -> value; every sample must carry id and name."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            assert s.labels["id"] == path.name.removeprefix("backup").split(".")[0].split("-")[0]
            assert s.labels["name"] == NAME
            found[(s.name, s.labels.get("module") or s.labels.get("state") or "")] = s.value
    return found


@pytest.fixture()
def world(redis_db: RedisServer, tmp_path: Path) -> Iterator[RunWorld]:
    world = RunWorld(redis_db, tmp_path, {"mail1": "1"}, megabytes=0.2).start()
    try:
        yield world
    finally:
        world.stop()


def test_runs_and_checks_write_the_files_and_a_disabled_schedule_loses_them(
    world: RunWorld,
) -> None:
    world.metrics_dir.mkdir()
    for name, text in OTHERS.items():
        (world.metrics_dir / name).write_text(text)
    bid = world.add_schedule(["mail1"], name=NAME)
    prom = world.metrics_dir / f"backup{bid}.prom"

    code, first, err = world.run(bid)
    assert code == 0, err
    assert first["outcome"] == "success" and first["sink_failures"] == {}
    assert prom.read_text().splitlines()[:3] == [
        "# HELP node_backup_status Status of the backup (0 = failure, 1 = success)",
        "# TYPE node_backup_status gauge",
        f'node_backup_status{{id="{bid}",name="Nightly \\"prod\\" C:\\\\bk"}} 1.0',
    ]
    assert metrics(prom) == {
        ("node_backup_status", ""): 1.0,
        ("nsbackup_backup_last_success_timestamp_seconds", ""): first["end"],
        ("nsbackup_backup_last_run_timestamp_seconds", ""): first["end"],
        ("nsbackup_backup_duration_seconds", ""): pytest.approx(first["duration"], abs=1e-3),
        ("nsbackup_backup_added_bytes", ""): first["added_bytes"],
        ("nsbackup_backup_modules", "ok"): 1.0,
        ("nsbackup_backup_modules", "failed"): 0.0,
        ("nsbackup_backup_module_status", "mail1"): 1.0,
        ("nsbackup_backup_module_restic_exit_code", "mail1"): 0.0,
        ("nsbackup_backup_module_duration_seconds", "mail1"): first["modules"][0]["duration"],
    }
    assert first["added_bytes"] > 0

    # mail1's module side cannot log in to Redis any more (wrong agent.env password)
    env = world.modules_dir / "mail1" / "state" / "agent.env"
    env.write_text("REDIS_USER=module/mail1\nREDIS_PASSWORD=wrong\n")
    os.chmod(env, 0o600)
    code, second, err = world.run(bid)
    assert code == 1, err
    assert second["outcome"] == "failure" and second["sink_failures"] == {}
    m = metrics(prom)
    assert m[("node_backup_status", "")] == 0
    assert m[("nsbackup_backup_last_success_timestamp_seconds", "")] == first["end"]
    assert m[("nsbackup_backup_last_run_timestamp_seconds", "")] == second["end"] > first["end"]
    assert (
        m[("nsbackup_backup_modules", "ok")] == 0 and m[("nsbackup_backup_modules", "failed")] == 1
    )
    assert m[("nsbackup_backup_module_status", "mail1")] == 0
    code_of_restic = second["modules"][0]["restic_exit_code"]
    assert m.get(("nsbackup_backup_module_restic_exit_code", "mail1")) == code_of_restic

    code, check, err = world.nsbackup("--json", "backup", "check", str(bid))
    assert code == 0 and check["ok"] and check["sink_failures"] == {}, err
    checked = metrics(world.metrics_dir / f"backup{bid}-check.prom")
    assert checked == {
        ("nsbackup_backup_last_check_timestamp_seconds", ""): check["end"],
        ("nsbackup_backup_check_ok", ""): 1.0,
        ("nsbackup_backup_check_repositories", "ok"): 1.0,
        ("nsbackup_backup_check_repositories", "failed"): 0.0,
    }
    # an unusable metrics directory is reported, and the command still succeeds
    blocker = world.base / "not-a-dir"
    blocker.write_text("")
    code, check, err = world.nsbackup(
        "--json", "backup", "check", str(bid), "--metrics-dir", str(blocker / "metrics")
    )
    assert code == 0 and check["ok"], err
    assert "cannot write" in check["sink_failures"]["prometheus"]

    # a second, enabled schedule keeps its file; a removed one (99) loses it
    other = world.add_schedule(["mail1"], name=NAME)
    for gone in (other, 99):
        (world.metrics_dir / f"backup{gone}.prom").write_bytes(prom.read_bytes())
    request = {
        "id": bid,
        "name": NAME,
        "schedule": "*-*-* 01:00:00",
        "retention": 3,
        "instances": ["mail1"],
        "enabled": False,
    }
    code, _, err = world.nsbackup(
        "--json", "backup", "alter", "--data", json.dumps(request), user="cluster"
    )
    assert code == 0, err
    cluster = Cluster.from_url(
        world.env()["NSBACKUP_REDIS_URL"],
        username="node/1",
        password=PASSWORDS["node/1"],
        settings=Settings(node_id="1", metrics_dir=str(world.metrics_dir)),
    )
    assert cluster.runs.purge_metrics() == [other]
    assert sorted(os.listdir(world.metrics_dir)) == sorted([*OTHERS, f"backup{other}.prom"])
    assert all((world.metrics_dir / n).read_text() == t for n, t in OTHERS.items())

    # running the disabled schedule does not bring its file back
    code, disabled, err = world.run(bid)
    assert code == 0 and disabled["outcome"] == "disabled", err
    assert sorted(os.listdir(world.metrics_dir)) == sorted([*OTHERS, f"backup{other}.prom"])
