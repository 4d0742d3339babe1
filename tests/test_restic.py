"""restic through the gateway, restic 0.14 and 0.18: credentials never on a command line, the
environment each generation understands, and what its failures mean."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from nsbackup.plugins import PluginHost
from nsbackup.restic import classify_failure, explain, restic_env, restic_version, run_restic
from tests import restic_versions
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    RESTIC_PASSWORD,
    GatewayProcess,
    add_local_destination,
    seed_loopback_cluster,
    wait_for,
)
from tests.redis_server import RedisServer
from tests.restic_versions import BINARIES, Restic, all_restics, find_restic
from tests.servers import free_port

restic_bin = restic_versions.restic_bin  # the fixture: one run per restic generation


def test_restic_014_takes_credentials_inside_the_repository_url() -> None:
    env = restic_env(
        repository_path="/d/mail/u/",
        user="module/mail1",
        password="p@ss:w/rd",
        restic_password="r",
        gateway_url="http://127.0.0.1:4694",
        version=(0, 14, 0),
    )
    assert env == {
        "RESTIC_PASSWORD": "r",
        "RESTIC_REPOSITORY": "rest:http://module%2Fmail1:p%40ss%3Aw%2Frd@127.0.0.1:4694/d/mail/u",
    }


def test_newer_restic_takes_credentials_from_the_environment() -> None:
    env = restic_env(
        repository_path="d/mail/u",
        user="node/1",
        password="pw",
        restic_password="r",
        gateway_url="http://127.0.0.1:4694/",
        cache_dir="/c",
        version=(0, 17, 3),
    )
    assert env == {
        "RESTIC_PASSWORD": "r",
        "RESTIC_REPOSITORY": "rest:http://127.0.0.1:4694/d/mail/u",
        "RESTIC_REST_USERNAME": "node/1",
        "RESTIC_REST_PASSWORD": "pw",
        "RESTIC_CACHE_DIR": "/c",
    }


def test_installed_restic_version_and_exit_codes() -> None:
    assert restic_version() >= (0, 14, 0)
    assert "locked" in explain(11) and "password" in explain(12) and "partial" in explain(3)
    assert explain(42) == "restic exited with status 42"


def test_both_generations_are_installed() -> None:
    versions = {restic.name: restic.version for restic in all_restics()}
    assert list(versions) == ["restic-0.14", "restic-0.18"]
    assert versions["restic-0.14"][:2] == (0, 14) and versions["restic-0.18"][:2] == (0, 18)


def test_the_environment_follows_the_binary_that_will_run(monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = all_restics()

    def env(binary: str | None = None) -> dict[str, str]:
        return restic_env(
            repository_path="d/mail/u", user="u", password="p", restic_password="r", binary=binary
        )

    assert "RESTIC_REST_PASSWORD" not in env(old.binary)
    assert env(new.binary)["RESTIC_REST_PASSWORD"] == "p"
    # the default binary is asked for its own version, whichever was asked before
    monkeypatch.setenv("NSBACKUP_RESTIC", new.binary)
    assert restic_version() == new.version and "RESTIC_REST_PASSWORD" in env()
    monkeypatch.setenv("NSBACKUP_RESTIC", old.binary)
    assert restic_version() == old.version and "RESTIC_REST_PASSWORD" not in env()


def test_run_restic_runs_the_binary_it_is_given(restic_bin: Restic) -> None:
    result = run_restic(["version"], {}, binary=restic_bin.binary, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("restic {}.{}.{} ".format(*restic_bin.version))


def test_a_missing_generation_fails_naming_scripts_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BINARIES, "restic-0.18", Path("/nonexistent/restic"))
    with pytest.raises(RuntimeError, match=r"restic-0\.18 .*scripts/setup"):
        find_restic("restic-0.18")
    monkeypatch.setitem(BINARIES, "restic-0.18", BINARIES["restic-0.14"])  # the wrong version
    with pytest.raises(RuntimeError, match=r"not restic-0\.18.*scripts/setup"):
        find_restic("restic-0.18")


# -- what failures mean: real outputs of restic 0.14.0 and 0.18.0 through the gateway -----------

V014, V018 = (0, 14, 0), (0, 18, 0)
LOCATION = (
    "127.0.0.2:47483/db998da4-b152-5123-9859-2603aca0703c"
    "/mail/d1e09ae3-0c88-58a6-ad4a-c45fac101739/"
)
AT_014 = (
    f"Is there a repository at the following location?\nrest:http://module/mail1:***@{LOCATION}\n"
)
AT_018 = f"Is there a repository at the following location?\nrest:http://{LOCATION}\n"
LOCKED = (
    "unable to create lock in backend: repository is already locked by PID 14247 on vm by root"
    " (UID 0, GID 0)\nlock was created at 2026-12-01 13:56:06 (572.64978ms ago)\n"
    "storage ID 13319e68\nthe `unlock` command can be used to remove stale locks\n"
)
CAPTURED = [
    # restic 0.14: everything but a partial backup exits 1, the reason is in words
    (
        V014,
        1,
        "Fatal: unable to open config file: <config/> does not exist\n" + AT_014,
        "no_repository",
    ),
    (
        V014,
        1,
        "Fatal: unable to open config file: stat /tmp/r/config: no such file or directory\n"
        "Is there a repository at the following location?\n/tmp/r\n",
        "no_repository",
    ),
    (
        V014,
        1,
        "Fatal: unable to open config file: unexpected HTTP response (401): 401 Unauthorized\n"
        + AT_014,
        "fatal",
    ),
    (
        V014,
        1,
        f"Fatal: create repository at rest:http://module/mail1:***@{LOCATION} failed: "
        "Fatal: config file already exists\n\n",
        "fatal",
    ),
    (V014, 1, "Fatal: wrong password or no key found\n", "wrong_password"),
    (V014, 1, LOCKED, "locked"),
    (
        V014,
        3,
        "error: read /proc/self/mem: input/output error\n"
        "Warning: at least one source file could not be read\n",
        "partial",
    ),
    (V014, 130, "\x1b[2Ksignal interrupt received, cleaning up\n", "fatal"),
    # restic 0.18: exit codes 10, 11, 12; the same words
    (
        V018,
        10,
        "Fatal: repository does not exist: unable to open config file: <config/> does not exist\n"
        + AT_018,
        "no_repository",
    ),
    (
        V018,
        10,
        '{"message_type":"exit_error","code":10,"message":"Fatal: repository does not exist: '
        "unable to open config file: \\u003cconfig/\\u003e does not exist\\nIs there a repository"
        f' at the following location?\\nrest:http://{LOCATION}"}}\n',
        "no_repository",
    ),
    (
        V018,
        1,
        "Stat(<config/>) failed: unexpected HTTP response (401): 401 Unauthorized\n"
        "Fatal: unable to open config file: unexpected HTTP response (401): 401 Unauthorized\n"
        + AT_018,
        "fatal",
    ),
    (
        V018,
        1,
        "Stat(<config/>) failed: unexpected HTTP response (403): 403 Forbidden\n"
        '{"message_type":"exit_error","code":1,"message":"Fatal: unable to open config file: '
        "unexpected HTTP response (403): 403 Forbidden\\nIs there a repository at the following"
        f' location?\\nrest:http://{LOCATION}"}}\n',
        "fatal",
    ),
    (V018, 12, "Fatal: wrong password or no key found\n", "wrong_password"),
    (
        V018,
        12,
        '{"message_type":"exit_error","code":12,'
        '"message":"Fatal: wrong password or no key found"}\n',
        "wrong_password",
    ),
    (V018, 11, LOCKED, "locked"),
    (
        V018,
        3,
        "error: failed to save /proc/self/mem: read /proc/self/mem: input/output error\n"
        "Warning: at least one source file could not be read\n",
        "partial",
    ),
    # codes a version does not have mean nothing special; 0.17.0 named a wrong password in words
    (V014, 10, "", "fatal"),
    ((0, 17, 0), 12, "", "fatal"),
    ((0, 17, 0), 1, "Fatal: wrong password or no key found\n", "wrong_password"),
    (V018, -9, "", "fatal"),
]


@pytest.mark.parametrize(("version", "returncode", "stderr", "expected"), CAPTURED)
def test_classify_failure(
    version: tuple[int, int, int], returncode: int, stderr: str, expected: str
) -> None:
    assert classify_failure(returncode, stderr, version) == expected


def test_success_is_not_a_failure() -> None:
    with pytest.raises(ValueError, match="succeeded"):
        classify_failure(0, "", V018)


# -- live, through a real gateway, once per restic generation -----------------------------------


class Gateway(NamedTuple):
    process: GatewayProcess
    destination: str
    disk: Path  # the node's local disk behind the destination

    def env(
        self,
        restic: Restic,
        repository: str,
        user: str,
        *,
        password: str | None = None,
        restic_password: str = RESTIC_PASSWORD,
    ) -> dict[str, str]:
        return restic_env(
            repository_path=f"{self.destination}/{repository}",
            user=user,
            password=PASSWORDS[user] if password is None else password,
            restic_password=restic_password,
            gateway_url=self.process.url,
            cache_dir=str(self.disk.parent / "restic-cache"),
            binary=restic.binary,
        )


@pytest.fixture()
def gateway(redis_db: RedisServer, host: PluginHost, tmp_path: Path) -> Iterator[Gateway]:
    client = redis_db.client()
    seed_loopback_cluster(client)
    port = free_port(NODE_IPS["1"])
    destination = add_local_destination(client, host, port)
    with GatewayProcess(redis_db, "1", port, tmp_path) as process:
        yield Gateway(process, destination.id, process.repo_dir)


MAIL1 = f"mail/{module_uuid('mail1')}"


def restic_children(binary: str) -> list[int]:
    """Running processes of ``binary`` started by this test process."""
    target, found = os.path.realpath(binary), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            exe = os.readlink(entry / "exe")
        except (OSError, IndexError, ValueError):
            continue  # gone, or not ours to read
        if parent == os.getpid() and exe == target:
            found.append(int(entry.name))
    return found


@pytest.mark.live
def test_a_running_backup_has_its_credentials_only_in_its_environment(
    restic_bin: Restic, gateway: Gateway, tmp_path: Path
) -> None:
    module = gateway.env(restic_bin, MAIL1, "module/mail1")
    assert run_restic(["init"], module, binary=restic_bin.binary).returncode == 0
    data = tmp_path / "data"
    data.mkdir()
    (data / "random.bin").write_bytes(os.urandom(1024 * 1024))
    args = ["backup", "--limit-upload", "1", str(data)]  # 1 KiB/s: it runs until killed
    outcome: dict[str, subprocess.CompletedProcess[str]] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            result=run_restic(args, module, binary=restic_bin.binary, timeout=600)
        )
    )
    worker.start()
    try:
        wait_for(lambda: restic_children(restic_bin.binary), timeout=20, what="restic to start")
        (pid,) = restic_children(restic_bin.binary)
        locks = gateway.disk / MAIL1 / "locks"
        wait_for(lambda: locks.is_dir() and any(locks.iterdir()), what="the backup's lock")

        raw_cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert raw_cmdline.split(b"\0")[:-1] == [restic_bin.binary.encode()] + [
            a.encode() for a in args
        ]
        for secret in (PASSWORDS["module/mail1"], RESTIC_PASSWORD, "module/mail1", "module%2F"):
            assert secret.encode() not in raw_cmdline

        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
            if "=" in item
        )
        url = gateway.process.url
        if restic_bin.version >= (0, 16, 0):
            assert environ["RESTIC_REPOSITORY"] == f"rest:{url}/{gateway.destination}/{MAIL1}"
            assert environ["RESTIC_REST_USERNAME"] == "module/mail1"
            assert environ["RESTIC_REST_PASSWORD"] == PASSWORDS["module/mail1"]
        else:
            host_port = url.removeprefix("http://")
            assert environ["RESTIC_REPOSITORY"] == (
                f"rest:http://module%2Fmail1:{PASSWORDS['module/mail1']}@{host_port}"
                f"/{gateway.destination}/{MAIL1}"
            )
            assert "RESTIC_REST_PASSWORD" not in environ

        # the backup's lock keeps the node's prune out: exit 11 from restic 0.17, words before
        node = gateway.env(restic_bin, MAIL1, "node/1")
        pruned = run_restic(["prune"], node, binary=restic_bin.binary, timeout=120)
        assert pruned.returncode == (11 if restic_bin.version >= (0, 17, 0) else 1), pruned
        assert "repository is already locked by PID" in pruned.stderr
        assert classify_failure(pruned.returncode, pruned.stderr, restic_bin.version) == "locked"
    finally:
        for pid in restic_children(restic_bin.binary):
            os.kill(pid, signal.SIGKILL)
        worker.join(timeout=60)
    assert outcome["result"].returncode == -signal.SIGKILL


@pytest.mark.live
def test_failures_by_exit_code_or_words(
    restic_bin: Restic, gateway: Gateway, tmp_path: Path
) -> None:
    version = restic_bin.version
    code_10, code_12 = version >= (0, 17, 0), version >= (0, 17, 1)  # else 1 and words

    def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
        result = run_restic(args, env, binary=restic_bin.binary, timeout=120)
        for secret in (PASSWORDS["module/mail1"], RESTIC_PASSWORD, "wrong-gateway-pw", "wrong-r"):
            assert secret not in result.stderr + result.stdout
        return result.returncode, result.stderr

    module = gateway.env(restic_bin, MAIL1, "module/mail1")
    returncode, stderr = run(["snapshots", "--json"], module)
    assert returncode == (10 if code_10 else 1), stderr
    assert "unable to open config file: " in stderr and "Is there a repository at" in stderr
    if code_10:
        assert '"message_type":"exit_error","code":10' in stderr
    assert classify_failure(returncode, stderr, version) == "no_repository"

    local = {"RESTIC_REPOSITORY": str(tmp_path / "none"), "RESTIC_PASSWORD": RESTIC_PASSWORD}
    returncode, stderr = run(["cat", "config"], local)
    assert returncode == (10 if code_10 else 1), stderr
    assert classify_failure(returncode, stderr, version) == "no_repository"

    # the gateway refusing the credentials is not a missing repository, though restic asks
    refused = gateway.env(restic_bin, MAIL1, "module/mail1", password="wrong-gateway-pw")
    returncode, stderr = run(["snapshots"], refused)
    assert returncode == 1 and "401 Unauthorized" in stderr and "Is there a repository" in stderr
    assert classify_failure(returncode, stderr, version) == "fatal"

    assert run(["init"], module)[0] == 0
    wrong = gateway.env(restic_bin, MAIL1, "module/mail1", restic_password="wrong-restic-pw")
    returncode, stderr = run(["snapshots"], wrong)
    assert returncode == (12 if code_12 else 1), stderr
    assert "wrong password or no key found" in stderr
    assert classify_failure(returncode, stderr, version) == "wrong_password"

    # reading /proc/self/mem fails (EIO at offset 0) even for root: a partial snapshot
    data = tmp_path / "data"
    data.mkdir()
    (data / "file.txt").write_text("kept\n")
    returncode, stderr = run(["backup", str(data), "/proc/self/mem"], module)
    assert returncode == 3, stderr
    assert "at least one source file could not be read" in stderr
    assert classify_failure(returncode, stderr, version) == "partial"
    assert run(["snapshots", "--json"], module)[0] == 0
