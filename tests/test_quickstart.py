"""``nsbackup quickstart``: the main job on an embedded default, as a newcomer runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

NSBACKUP = str(Path(sys.executable).parent / "nsbackup")


def test_quickstart_runs_every_check_and_cleans_up(tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("nsbackup-quickstart-*"))
    started = time.monotonic()
    done = subprocess.run(
        [NSBACKUP, "--json", "quickstart"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["ok"] is True and result["directory"] is None
    names = [step["name"] for step in result["steps"]]
    assert len(names) == 13 and all(step["ok"] for step in result["steps"])
    details = " ".join(step["detail"] for step in result["steps"])
    assert "GET nextcloud1's config: 403" in details
    assert "DELETE snapshots/" in details and ": 403; still there: 200" in details
    assert "equal" in details and 'node_backup_status{id="1",name="Quickstart"} 1' in details
    assert elapsed < 60  # the budget is 30 s on this machine; CI machines vary
    assert set(Path("/tmp").glob("nsbackup-quickstart-*")) == before  # nothing left behind
    leftovers = subprocess.run(["pgrep", "-f", "nsbackup-quickstart-"], capture_output=True)
    assert leftovers.stdout == b""  # no redis-server, gateway, rclone or HAProxy left


def test_quickstart_keep_leaves_a_directory_to_explore(tmp_path: Path) -> None:
    kept = tmp_path / "demo"
    done = subprocess.run(
        [NSBACKUP, "quickstart", "--keep", str(kept)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"kept in {kept}" in done.stdout and "cluster.env" in done.stdout
    assert (kept / "cluster.env").stat().st_mode & 0o077 == 0
    assert any((kept / "repo").iterdir()) and list((kept / "metrics").glob("backup*.prom"))
    assert "ok   the backup, through the gateway" in done.stdout
    # a second quickstart may not reuse a directory: nothing of the first is overwritten
    again = subprocess.run(
        [NSBACKUP, "quickstart", "--keep", str(kept)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2 and "--keep needs a new directory" in again.stderr
    assert "Traceback" not in again.stderr
