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
    for name in ("node.env", "cluster.env"):
        assert (kept / name).stat().st_mode & 0o077 == 0 and name in done.stdout
    explore_again(kept)
    # a second quickstart may not reuse a directory: nothing of the first is overwritten
    again = subprocess.run(
        [NSBACKUP, "quickstart", "--keep", str(kept)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2 and "--keep needs a new directory" in again.stderr
    assert "Traceback" not in again.stderr


def explore_again(kept: Path) -> None:
    """What the printed commands say: Redis and the gateway started again from the kept
    directory, and with node.env alone a run, the repositories and the listing work."""
    import os
    import signal
    import time

    import requests

    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSBACKUP_", "REDIS_"))}
    for line in (kept / "node.env").read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    redis = subprocess.Popen(
        ["redis-server", str(kept / "redis" / "redis.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    gateway = None
    try:
        url = env["NSBACKUP_GATEWAY_URL"]
        deadline = time.monotonic() + 30
        while True:
            ping = subprocess.run(
                [NSBACKUP, "--json", "backup", "list"], env=env, capture_output=True, text=True
            )
            if ping.returncode == 0:
                break
            assert time.monotonic() < deadline, ping.stderr
            time.sleep(0.1)
        gateway = subprocess.Popen(
            [
                NSBACKUP, "gateway", "serve", "--state-dir", str(kept / "gateway"),
                "--repo-dir", str(kept / "repo"), "--listen", url.removeprefix("http://"),
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        while True:
            try:
                if requests.get(url + "/", timeout=2).status_code == 401:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline + 30, "the kept gateway did not start again"
            time.sleep(0.1)
        for args in (("backup", "run", "1"), ("destination", "repositories")):
            done = subprocess.run(
                [NSBACKUP, "--json", *args], env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, (args, done.stderr[-2000:])
    finally:
        for proc in (gateway, redis):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
