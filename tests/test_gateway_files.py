"""What the gateway writes is private, and its run directory cannot be planted (issue 8 items
5 and 6).

- Item 5: ``auth.map`` (the unsalted SHA-256 of every node and module password) was 0644 in a
  0755 state directory. Now the state directory is 0700, every file in it 0600, and rclone and
  HAProxy run with umask 077, so their sockets, pid file, caches and the backups they write
  are the gateway user's only - checked on a running gateway, before and after reloads.
- Item 6: with a long state path and no writable /run, sockets went under
  ``<tmp>/nsbackup/<hash>``, created with ``mkdir(parents=True, exist_ok=True)``: another
  local user could make it first and receive the credentials HAProxy forwards. Now a fallback
  run directory is one level, made by one ``mkdir`` 0700 and verified (a real directory, ours,
  0700) before use; anything else is refused, and a refused directory is left untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nsbackup.errors import NsbackupError
from nsbackup.gateway.context import MAX_SOCKET_DIR, GatewaySettings, choose_run_dir
from nsbackup.gateway.dirs import ensure_run_dir, ensure_state_dir
from nsbackup.plugins import PluginHost
from nsbackup.restic import restic_env, run_restic
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    NSBACKUP,
    RESTIC_PASSWORD,
    GatewayProcess,
    add_local_destination,
    seed_loopback_cluster,
    wait_for,
)
from tests.redis_server import RedisServer
from tests.servers import free_port

OTHER_UID = 4242
GATEWAY_FILES = {"rclone.conf", "haproxy.cfg", "auth.map", "modrepo.map", "rclone-gateway.env"}


@pytest.fixture()
def cluster(redis_db: RedisServer) -> redis.Redis:
    client = redis_db.client()
    seed_loopback_cluster(client)
    return client


def not_private(root: Path) -> list[str]:
    """Every entry under ``root`` (itself included) that its group or others may use."""
    found = []
    for entry in [root, *root.rglob("*")]:
        mode = entry.lstat().st_mode
        if stat.S_ISLNK(mode):
            found.append(f"{entry} is a symlink")
        elif stat.S_IMODE(mode) & 0o077:
            found.append(f"{entry} {stat.S_IMODE(mode):04o}")
    return found


def umask_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Umask:\s+([0-7]+)$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1), 8)


def gateway_pids(run_dir: Path) -> list[int]:
    result = subprocess.run(
        ["pgrep", "-f", str(run_dir)], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in result.stdout.split()]


def check_private(gw: GatewayProcess) -> None:
    state = gw.state_dir
    run = GatewaySettings(state.resolve()).run_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir() if p.is_file()}
    assert modes == dict.fromkeys(GATEWAY_FILES | {"status.json"}, 0o600)
    kinds = {stat.S_IFMT(p.lstat().st_mode) for p in run.rglob("*")}
    assert {stat.S_IFSOCK, stat.S_IFDIR, stat.S_IFREG} <= kinds  # sockets, g<n>/, pid file
    assert not_private(state) == []
    assert not_private(run) == []
    assert not_private(gw.repo_dir) == []
    pids = gateway_pids(run)
    assert len(pids) >= 3  # rclone rcd, HAProxy master and worker
    assert {umask_of(pid) for pid in pids} == {0o077}


def test_files_sockets_and_backups_are_private_across_reloads(
    cluster: redis.Redis,
    redis_db: RedisServer,
    host: PluginHost,
    tmp_path: Path,
) -> None:
    port = free_port(NODE_IPS["1"])
    dest = add_local_destination(cluster, host, port)
    with GatewayProcess(redis_db, "1", port, tmp_path) as gw:
        repo = f"{dest.id}/mail/{module_uuid('mail1')}"
        env = restic_env(
            repository_path=repo,
            user="module/mail1",
            password=PASSWORDS["module/mail1"],
            restic_password=RESTIC_PASSWORD,
            gateway_url=gw.url,
        )
        source = tmp_path / "data"
        source.mkdir()
        (source / "file.txt").write_text("private\n")
        for args in (["init"], ["backup", str(source)]):
            result = run_restic(["--no-cache", *args], env, timeout=120)
            assert result.returncode == 0, result.stderr
        assert (gw.repo_dir / "mail" / module_uuid("mail1") / "config").is_file()
        check_private(gw)

        # a destination change: a new generation of rclone, HAProxy reloaded
        add_local_destination(cluster, host, port, node="12")
        cluster.publish(
            "cluster/event/backup-destination-changed", json.dumps({"destination_ids": []})
        )
        wait_for(lambda: "generation reloaded" in gw.log(None), 60, "a generation reload")
        check_private(gw)
        # an ACL change: maps replaced in the running HAProxy
        cluster.srem(
            "cluster/acls", *[a for a in cluster.smembers("cluster/acls") if "traefik1" in a]
        )
        cluster.publish("cluster/event/acl-changed", "cluster/acls")
        wait_for(lambda: "maps reloaded" in gw.log(None), 60, "a map reload")
        check_private(gw)


# -- the run directory -------------------------------------------------------------------------


def test_choose_run_dir() -> None:
    short = Path("/var/lib/nsbackup/gw")
    long = Path("/var/lib/" + "x" * 60)
    digest = choose_run_dir(long, run_writable=True, runtime_dir=None, temp_dir="/tmp", uid=7)
    assert digest.parent == Path("/run") and digest.name.startswith("nsbackup-")
    name = digest.name.removeprefix("nsbackup-")
    assert (
        choose_run_dir(short, run_writable=False, runtime_dir="/run/user/7", temp_dir="/tmp", uid=7)
        == short / "run"
    )
    assert choose_run_dir(
        long, run_writable=False, runtime_dir="/run/user/7", temp_dir="/tmp", uid=7
    ) == Path(f"/run/user/7/nsbackup-{name}")
    for runtime in (None, "", "relative/dir", "/" + "r" * MAX_SOCKET_DIR):
        assert choose_run_dir(
            long, run_writable=False, runtime_dir=runtime, temp_dir="/tmp", uid=7
        ) == Path(f"/tmp/nsbackup-7-{name}")
    other = choose_run_dir(long / "y", run_writable=True, runtime_dir=None, temp_dir="/t", uid=7)
    assert other != digest  # one directory per state directory


def test_settings_use_this_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """render and serve both ask GatewaySettings.run_dir, in the same environment."""
    long = tmp_path / ("x" * MAX_SOCKET_DIR)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    expected = choose_run_dir(
        long,
        run_writable=os.access("/run", os.W_OK),
        runtime_dir="/run/user/4242",
        temp_dir=tempfile.gettempdir(),
        uid=os.geteuid(),
    )
    assert GatewaySettings(long).run_dir == expected


@pytest.fixture()
def short_tmp() -> Iterator[Path]:
    """A private temporary directory with a path short enough for run directories."""
    path = Path(tempfile.mkdtemp(prefix="nsb-"))
    yield path
    shutil.rmtree(path)


def test_ensure_run_dir_creates_one_private_directory(short_tmp: Path) -> None:
    old = os.umask(0o022)
    try:
        ensure_run_dir(short_tmp / "r")
    finally:
        os.umask(old)
    info = (short_tmp / "r").lstat()
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.geteuid()
    ensure_run_dir(short_tmp / "r")  # what an earlier gateway left: ours, 0700, accepted
    with pytest.raises(FileNotFoundError):
        ensure_run_dir(short_tmp / "missing-parent" / "r")  # one level, never parents


@pytest.mark.parametrize("plant", ["other-owner", "symlink", "wide-mode", "group-mode", "file"])
def test_ensure_run_dir_refuses_what_someone_else_made(short_tmp: Path, plant: str) -> None:
    path = short_tmp / "nsbackup-0-0123456789abcdef"
    decoy = short_tmp / "decoy"
    decoy.mkdir(mode=0o700)
    (decoy / "haproxy.pid").write_text("1\n")
    if plant == "other-owner":
        path.mkdir(mode=0o700)
        os.chown(path, OTHER_UID, OTHER_UID)
    elif plant == "symlink":
        path.symlink_to(decoy)
    elif plant == "file":
        path.write_text("")
    else:
        path.mkdir()
        path.chmod(0o755 if plant == "wide-mode" else 0o770)
    before = path.lstat()
    with pytest.raises(NsbackupError, match="refusing to use it"):
        ensure_run_dir(path)
    after = path.lstat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)  # left alone
    assert (decoy / "haproxy.pid").read_text() == "1\n"


@pytest.mark.parametrize(
    ("owner", "mode", "accepted"),
    [
        (None, 0o700, True),
        (None, 0o1777, True),  # sticky, like /tmp
        (None, 0o777, False),  # anyone may rename our directory away
        (None, 0o770, False),
        (OTHER_UID, 0o755, False),  # its owner may
    ],
)
def test_ensure_run_dir_checks_its_parent(
    short_tmp: Path, owner: int | None, mode: int, accepted: bool
) -> None:
    parent = short_tmp / "parent"
    parent.mkdir()
    parent.chmod(mode)
    if owner is not None:
        os.chown(parent, owner, owner)
    if accepted:
        ensure_run_dir(parent / "r")
        assert stat.S_IMODE((parent / "r").stat().st_mode) == 0o700
    else:
        with pytest.raises(NsbackupError, match="parent"):
            ensure_run_dir(parent / "r")
        assert not (parent / "r").exists()


def test_ensure_run_dir_refuses_a_path_too_long_for_sockets(tmp_path: Path) -> None:
    with pytest.raises(NsbackupError, match="too long"):
        ensure_run_dir(tmp_path / ("r" * MAX_SOCKET_DIR))


def test_ensure_state_dir(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "state"
    ensure_state_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    wide.chmod(0o755)
    ensure_state_dir(wide)  # ours: made private
    assert stat.S_IMODE(wide.stat().st_mode) == 0o700
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(foreign, OTHER_UID, OTHER_UID)
    with pytest.raises(NsbackupError, match="belongs to uid 4242"):
        ensure_state_dir(foreign)
    assert stat.S_IMODE(foreign.stat().st_mode) == 0o755


# -- end to end: render and serve agree; serve refuses a planted run directory ----------------


@pytest.fixture()
def long_base(tmp_path: Path) -> Iterator[Path]:
    """A base whose state directory is too long for ``<state>/run``: the fallback is used."""
    base = tmp_path / ("long-state-path-" * 4)
    settings = GatewaySettings((base / "node1" / "state").resolve())
    assert settings.run_dir != settings.state_dir / "run"
    yield base
    run = settings.run_dir
    if run.is_symlink() or run.is_file():
        run.unlink()
    elif run.exists():
        shutil.rmtree(run)


def _render(server: RedisServer, out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSBACKUP_", "REDIS_"))}
    env.update({"REDIS_USER": "node/1", "REDIS_PASSWORD": PASSWORDS["node/1"]})
    command = ["gateway", "render", "--out", str(out), "--listen", f"{NODE_IPS['1']}:4694"]
    return subprocess.run(
        [NSBACKUP, "--redis", f"redis://127.0.0.1:{server.port}/0", "--node", "1", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _socket_paths(config: Path) -> list[str]:
    return re.findall(r"unix@(\S+)", config.read_text())


def test_render_and_serve_use_the_same_run_dir(
    cluster: redis.Redis, redis_db: RedisServer, host: PluginHost, long_base: Path
) -> None:
    port = free_port(NODE_IPS["1"])
    add_local_destination(cluster, host, port)
    gw = GatewayProcess(redis_db, "1", port, long_base)
    rendered = _render(redis_db, gw.state_dir)
    assert rendered.returncode == 0, rendered.stderr
    sockets = _socket_paths(gw.state_dir / "haproxy.cfg")
    run_dir = GatewaySettings(gw.state_dir.resolve()).run_dir
    assert sockets and {str(Path(s).parent) for s in sockets} == {str(run_dir)}
    with gw:
        assert _socket_paths(gw.state_dir / "haproxy.cfg") == sockets
        for path in sockets:
            assert stat.S_ISSOCK(Path(path).lstat().st_mode), path
        assert stat.S_IMODE(run_dir.lstat().st_mode) == 0o700
    assert not run_dir.exists()


@pytest.mark.parametrize("plant", ["other-owner", "symlink", "wide-mode"])
def test_serve_refuses_a_planted_run_dir(
    cluster: redis.Redis,
    redis_db: RedisServer,
    host: PluginHost,
    long_base: Path,
    tmp_path: Path,
    plant: str,
) -> None:
    port = free_port(NODE_IPS["1"])
    add_local_destination(cluster, host, port)
    gw = GatewayProcess(redis_db, "1", port, long_base)
    run_dir = GatewaySettings(gw.state_dir.resolve()).run_dir
    decoy = tmp_path / "decoy"
    decoy.mkdir(mode=0o700)
    for name in ("haproxy.pid", "haproxy-admin.sock", "haproxy-master.sock"):
        (decoy / name).write_text("planted\n")
    if plant == "symlink":
        run_dir.symlink_to(decoy)
    else:
        run_dir.mkdir(mode=0o700)
        (run_dir / "haproxy.pid").write_text("planted\n")
        if plant == "other-owner":
            os.chown(run_dir, OTHER_UID, OTHER_UID)
        else:
            run_dir.chmod(0o755)
    gw.start(expect_up=False)
    assert gw.proc is not None
    try:
        assert gw.proc.wait(timeout=60) != 0
    finally:
        gw.stop()
    assert "refusing to use it" in gw.log()
    assert gateway_pids(run_dir) == []  # neither rclone nor HAProxy was started
    planted = decoy if plant == "symlink" else run_dir
    assert (planted / "haproxy.pid").read_text() == "planted\n"  # left alone
    if plant == "symlink":
        assert sorted(p.name for p in decoy.iterdir()) == [
            "haproxy-admin.sock",
            "haproxy-master.sock",
            "haproxy.pid",
        ]
