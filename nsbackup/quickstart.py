"""``nsbackup quickstart``: the main job on an embedded default, checked step by step.

In a temporary directory, with nothing but what ``scripts/setup`` installs: a private
``redis-server`` (ACL users as NS8 has them: ``cluster``, the node, one user per module, and
NS8's password-less ``default``), a local-disk destination served by the node's gateway, two
sample modules with their own credentials and generated data, and a schedule. The backup runs
through the gateway; then the narrative shows what was checked: a module cannot read another's
repository nor delete its own snapshots (the HTTP statuses it got), the run's status, the
snapshots, a restored file compared with its original, and the metrics file. Everything is
stopped and removed at the end (``keep`` leaves the directory, with the commands to explore it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from nsbackup import acl
from nsbackup.errors import NsbackupError, Unreachable

MODULES = ("dokuwiki1", "nextcloud1")
REST = {"Accept": "application/vnd.x.restic.rest.v2"}
NS8_DEFAULT_USER = (
    "user default on nopass resetkeys ~cluster/* ~node/* ~module/* resetchannels &* "
    "nocommands +@read +@connection +subscribe +psubscribe -@admin"
)
"""NS8's unprivileged ``default`` user (install-finalize.sh), as the private Redis has it."""


@attrs.define
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class QuickstartFailed(NsbackupError):
    """A check of the quickstart did not hold."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


class _World:
    """The private cluster of one quickstart."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.redis_port = _free_port()
        self.gateway_port = _free_port()
        self.passwords = {"cluster": secrets.token_hex(16), "node/1": secrets.token_hex(16)}
        self.passwords.update({f"module/{m}": secrets.token_hex(16) for m in MODULES})
        self.uuids = {m: str(uuid.uuid4()) for m in MODULES}
        self.redis: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.destination = ""

    # -- processes ------------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unreachable("redis-server not found (scripts/setup installs it)")
        directory = self.base / "redis"
        directory.mkdir(mode=0o700)
        users = [
            NS8_DEFAULT_USER,
            f"user cluster on #{_sha256(self.passwords['cluster'])} ~* &* +@all",
        ]
        users.append(
            " ".join(
                ["user node/1 on", f"#{_sha256(self.passwords['node/1'])}", *acl.node_rules("1")]
            )
        )
        for mid in MODULES:
            digest = _sha256(self.passwords[f"module/{mid}"])
            users.append(" ".join([f"user module/{mid} on", f"#{digest}", *acl.module_rules(mid)]))
        _write_private(directory / "users.acl", "\n".join(users) + "\n")
        _write_private(
            directory / "redis.conf",
            "\n".join(
                [
                    f"port {self.redis_port}",
                    "bind 127.0.0.1",
                    f"dir {directory}",
                    "save 60 1",
                    "appendonly no",
                    f"aclfile {directory / 'users.acl'}",
                    f"logfile {directory / 'redis.log'}",
                ]
            )
            + "\n",
        )
        self.redis = subprocess.Popen(
            [binary, str(directory / "redis.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = self.client("cluster")
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except Exception as exc:
                if self.redis.poll() is not None or time.monotonic() > deadline:
                    raise Unreachable(f"the private redis-server did not start: {exc}") from None
                time.sleep(0.05)

    def client(self, user: str) -> Any:
        import redis

        return redis.Redis(
            host="127.0.0.1",
            port=self.redis_port,
            username=user,
            password=self.passwords[user],
            decode_responses=True,
            socket_timeout=10,
        )

    def seed(self) -> None:
        client = self.client("cluster")
        pipe = client.pipeline(transaction=True)
        pipe.set("cluster/uuid", str(uuid.uuid4()))
        pipe.set("cluster/network", "127.0.0.0/8")
        pipe.hset("cluster/environment", "NODE_ID", "1")
        pipe.hset("node/1/vpn", "ip_address", "127.0.0.1")
        for mid in MODULES:
            pipe.hset("cluster/module_node", mid, "1")
            pipe.hset("cluster/module_uuid", mid, self.uuids[mid])
            image = mid.rstrip("0123456789")
            pipe.hset(f"module/{mid}/environment", "IMAGE_URL", f"ghcr.io/nethserver/{image}:1.0.0")
            pipe.set(f"module/{mid}/ui_name", f"Sample {image}")
        lines = [acl.acl_line("node/1", _sha256(self.passwords["node/1"]), acl.node_rules("1"))] + [
            acl.acl_line(f"module/{m}", _sha256(self.passwords[f"module/{m}"]), acl.module_rules(m))
            for m in MODULES
        ]
        pipe.sadd("cluster/acls", *lines)
        pipe.execute()
        client.close()

    def node_env(self) -> dict[str, str]:
        from nsbackup.rclone import clean_env

        env = clean_env()
        env.update({"REDIS_USER": "node/1", "REDIS_PASSWORD": self.passwords["node/1"]})
        return env

    def start_gateway(self) -> None:
        log = (self.base / "gateway.log").open("ab")
        self.gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nsbackup",
                "--redis",
                self.redis_url,
                "--node",
                "1",
                "gateway",
                "serve",
                "--state-dir",
                str(self.base / "gateway"),
                "--listen",
                f"127.0.0.1:{self.gateway_port}",
                "--repo-dir",
                str(self.base / "repo"),
            ],
            env=self.node_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_http(lambda status: status == 401, "/", "the gateway")

    def wait_http(self, ready: Callable[[int], bool], path: str, what: str) -> None:
        import requests

        deadline = time.monotonic() + 30
        while True:
            if self.gateway is not None and self.gateway.poll() is not None:
                raise Unreachable(f"{what} exited: {self.gateway_log()}")
            try:
                if ready(requests.get(self.gateway_url + path, timeout=2).status_code):
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise Unreachable(f"{what} did not come up: {self.gateway_log()}")
            time.sleep(0.05)

    def gateway_log(self) -> str:
        try:
            return (self.base / "gateway.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def make_modules(self) -> None:
        for n, mid in enumerate(MODULES):
            state = self.base / "modules" / mid / "state"
            (state / "data").mkdir(parents=True)
            (state / "environment").write_text(f"MODULE_ID={mid}\nMODULE_UUID={self.uuids[mid]}\n")
            (state / "data" / "database.bin").write_bytes(os.urandom((2 + n) * 1024 * 1024))
            for page in range(20):
                (state / "data" / f"page{page}.txt").write_text(f"{mid} page {page}\n" * 40)
            user = f"module/{mid}"
            _write_private(
                state / "agent.env", f"REDIS_USER={user}\nREDIS_PASSWORD={self.passwords[user]}\n"
            )

    def stop(self) -> None:
        for proc in (self.gateway, self.redis):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def quickstart(
    *,
    keep: Path | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> dict[str, Any]:
    """Run the whole demonstration; return ``{"ok", "steps", "directory"}``. Raise
    :class:`QuickstartFailed` naming the first check that did not hold."""
    if keep is not None:
        from nsbackup.errors import ValidationFailed

        try:
            keep.mkdir(parents=True, exist_ok=False, mode=0o700)
        except OSError as exc:
            raise ValidationFailed.one(
                "keep", str(keep), "not_new", f"--keep needs a new directory: {exc.strerror}"
            ) from None
        base = keep.resolve()
    else:
        base = Path(tempfile.mkdtemp(prefix="nsbackup-quickstart-"))
    os.chmod(base, 0o700)
    world = _World(base)
    steps: list[Step] = []

    @contextlib.contextmanager
    def step(name: str) -> Iterator[list[str]]:
        started = time.monotonic()
        detail: list[str] = []
        try:
            yield detail
        except NsbackupError as exc:
            done = Step(name, False, str(exc), round(time.monotonic() - started, 2))
            steps.append(done)
            if on_step is not None:
                on_step(done)
            raise QuickstartFailed(f"{name}: {exc}") from None
        done = Step(name, True, "; ".join(detail), round(time.monotonic() - started, 2))
        steps.append(done)
        if on_step is not None:
            on_step(done)

    started = time.monotonic()
    try:
        _demonstrate(world, step)
    finally:
        world.stop()
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            _keep_environment(world)
    return {
        "ok": all(s.ok for s in steps),
        "seconds": round(time.monotonic() - started, 2),
        "steps": [s.to_json() for s in steps],
        "directory": str(base) if keep else None,
    }


def _demonstrate(world: _World, step: Callable[[str], Any]) -> None:
    import requests

    from nsbackup.api import Cluster, Settings

    base = world.base
    with step("a private Redis with NS8's users") as said:
        world.start_redis()
        world.seed()
        said.append(
            f"redis-server on 127.0.0.1:{world.redis_port}; users cluster, node/1, "
            + ", ".join(f"module/{m}" for m in MODULES)
            + " and NS8's password-less default"
        )
    settings = Settings(
        redis_url=world.redis_url,
        node_id="1",
        repo_dir=str(base / "repo"),
        gateway_url=world.gateway_url,
        state_dir=str(base / "nsbackup"),
        metrics_dir=str(base / "metrics"),
        runner="local",
        modules_dir=str(base / "modules"),
        dump_passphrase_file=str(base / "dump-passphrase"),
    )
    _write_private(base / "dump-passphrase", secrets.token_urlsafe(24) + "\n")
    admin = Cluster(world.client("cluster"), node_id="1", settings=settings)
    node = Cluster(world.client("node/1"), node_id="1", settings=settings)
    with step("the node's gateway (HAProxy + rclone)") as said:
        (base / "repo").mkdir(mode=0o700)
        world.start_gateway()
        said.append(f"listening on {world.gateway_url}")
    with step("a local-disk destination, validated with rclone") as said:
        added = admin.destinations.add(
            {
                "provider": "cluster",
                "name": "Quickstart disk",
                "url": f"webdav:http://127.0.0.1:{world.gateway_port}",
                "password": "",
                "parameters": {},
            }
        )
        world.destination = added["id"]
        probe = f"/{world.destination}/_probe_rest_404"
        world.wait_http(lambda status: status == 404, probe, "the destination")
        said.append(
            f"destination {added['id']} on {base / 'repo'}, served by the gateway "
            "(its health check answers 404)"
        )
    with step("two sample modules with their own credentials") as said:
        world.make_modules()
        said.append(", ".join(MODULES) + " in " + str(base / "modules"))
    with step("a schedule") as said:
        backup_id = admin.schedules.add(
            {
                "name": "Quickstart",
                "repository": world.destination,
                "schedule": "*-*-* 01:00:00",
                "retention": 3,
                "instances": list(MODULES),
                "enabled": True,
            }
        )
        said.append(f"backup {backup_id}: every day at 01:00, keep 3")
    with step("the backup, through the gateway") as said:
        report = node.runs.run(backup_id, jobs=2)
        for module in report["modules"]:
            if not module["success"]:
                raise QuickstartFailed(f"{module['module_id']}: {module['message']}")
        said.append(
            f"{len(report['modules'])} modules backed up with their own credentials in "
            f"{report['duration']:.1f} s, {report['added_bytes'] // 1024} KiB added"
        )
    one, other = MODULES
    one_path = f"{one.rstrip('0123456789')}/{world.uuids[one]}"
    other_path = f"{other.rstrip('0123456789')}/{world.uuids[other]}"
    auth = (f"module/{one}", world.passwords[f"module/{one}"])
    with step("a module cannot read another module's repository") as said:
        url = f"{world.gateway_url}/{world.destination}/{other_path}/config"
        status = requests.get(url, auth=auth, headers=REST, timeout=10).status_code
        if status != 403:
            raise QuickstartFailed(f"module/{one} read {other}'s repository: {status}")
        said.append(f"module/{one} GET {other}'s config: {status}")
    with step("a module cannot delete its own snapshots") as said:
        listing = requests.get(
            f"{world.gateway_url}/{world.destination}/{one_path}/snapshots/",
            auth=("node/1", world.passwords["node/1"]),
            headers=REST,
            timeout=10,
        ).json()
        name = listing[0]["name"]
        snapshot_url = f"{world.gateway_url}/{world.destination}/{one_path}/snapshots/{name}"
        status = requests.delete(snapshot_url, auth=auth, headers=REST, timeout=10).status_code
        if status != 403:
            raise QuickstartFailed(f"module/{one} deleted its snapshot: {status}")
        still = requests.head(
            snapshot_url, auth=("node/1", world.passwords["node/1"]), headers=REST, timeout=10
        ).status_code
        said.append(f"module/{one} DELETE snapshots/{name[:8]}: {status}; still there: {still}")
    with step("the run's status, as NS8's list-backups shows it") as said:
        listed = admin.schedules.list()
        for item in listed["backups"][0]["instances"]:
            status_ = item["status"]
            if not status_ or not status_["success"]:
                raise QuickstartFailed(f"{item['module_id']} has no successful status")
            said.append(
                f"{item['module_id']}: success, {status_['total_file_count']} files, "
                f"{status_['total_size'] // 1024} KiB"
            )
    with step("the snapshots") as said:
        for mid, path in ((one, one_path), (other, other_path)):
            snapshots = node.runs.snapshots({"repository": world.destination, "path": path})
            said.append(f"{mid}: {len(snapshots)} snapshot(s), latest {snapshots[-1]['id'][:8]}")
    with step("a restored file, compared with its original") as said:
        lost = base / "modules" / one / "state" / "data" / "database.bin"
        original = hashlib.sha256(lost.read_bytes()).hexdigest()
        lost.unlink()
        admin.restore.run(
            {"repository": world.destination, "path": one_path, "snapshot": "", "module": one}
        )
        restored = hashlib.sha256(lost.read_bytes()).hexdigest()
        if restored != original:
            raise QuickstartFailed("the restored file differs from its original")
        said.append(f"{one}'s data/database.bin deleted, restored: sha256 {restored[:16]}… equal")
    with step("the encrypted cluster dump the leader uploaded") as said:
        note = report["notes"].get("cluster_dump", {})
        uploaded = requests.get(
            f"{world.gateway_url}/{world.destination}/"
            f"cluster-backup-{admin.store.load(details=False).cluster_uuid}.json.gz.gpg",
            auth=("node/1", world.passwords["node/1"]),
            timeout=10,
        )
        if uploaded.status_code != 200 or uploaded.content[:1] not in (b"\x8c", b"\xc3"):
            raise QuickstartFailed(f"no encrypted dump on the destination: {note}")
        said.append(
            f"{len(uploaded.content)} bytes of OpenPGP (symmetric) beside the repositories; "
            f"a module gets {requests.get(uploaded.url, auth=auth, timeout=10).status_code} on it"
        )
    with step("the metrics file node_exporter reads") as said:
        prom = base / "metrics" / f"backup{backup_id}.prom"
        try:
            text = prom.read_text()
        except OSError as exc:
            raise QuickstartFailed(f"{prom} was not written: {exc.strerror}") from None
        gauge = [line for line in text.splitlines() if line.startswith("node_backup_status")]
        if not gauge or not gauge[0].rstrip().endswith(("1", "1.0")):
            raise QuickstartFailed(f"{prom}: {gauge or 'no node_backup_status'}")
        said.append(f"{prom.name}: {gauge[0]}")


def _keep_environment(world: _World) -> None:
    """``node.env`` and ``cluster.env`` in a kept directory: each identity's credentials with
    every setting the quickstart used, so that commands run there as they ran in it."""
    base = world.base
    settings = (
        f"NSBACKUP_REDIS_URL={world.redis_url}\nNODE_ID=1\n"
        f"NSBACKUP_GATEWAY_URL={world.gateway_url}\n"
        f"NSBACKUP_STATE_DIR={base / 'nsbackup'}\nNSBACKUP_METRICS_DIR={base / 'metrics'}\n"
        f"NSBACKUP_RUNNER=local\nNSBACKUP_MODULES_DIR={base / 'modules'}\n"
        f"NSBACKUP_DUMP_PASSPHRASE_FILE={base / 'dump-passphrase'}\n"
    )
    for name, user in (("node.env", "node/1"), ("cluster.env", "cluster")):
        _write_private(
            base / name,
            f"REDIS_USER={user}\nREDIS_PASSWORD={world.passwords[user]}\n{settings}",
        )


def explore_commands(directory: str) -> list[str]:
    """How to look at a kept quickstart directory again."""
    base = Path(directory)
    return [
        f"redis-server {base / 'redis' / 'redis.conf'} --daemonize yes  # the cluster again",
        f"set -a; . {base / 'node.env'}; set +a  # the node's user and settings",
        f"nsbackup gateway serve --state-dir {base / 'gateway'} --repo-dir {base / 'repo'} "
        '--listen "${NSBACKUP_GATEWAY_URL#http://}" &  # the gateway again',
        "nsbackup backup list; nsbackup destination repositories; nsbackup backup run 1",
        f"(set -a; . {base / 'cluster.env'}; nsbackup destination list)  # as the cluster user",
        f"ls {base / 'repo'}  # the destination: one restic repository per module",
        f"cat {base / 'metrics'}/backup*.prom",
        f"less {base / 'gateway' / 'haproxy.cfg'} {base / 'gateway' / 'auth.map'}",
        f"cat {base / 'modules' / MODULES[0] / 'state' / 'agent.env'}  # a module's credentials",
    ]
