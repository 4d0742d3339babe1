"""The encrypted cluster dump: ``nsbackup dump export|import|restore`` against a real Redis with
NS8's ACL users and the real ``gpg``, files checked with NS8's own gpg command line."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from nsbackup import Cluster
from nsbackup.destinations import prepare
from nsbackup.errors import PermissionDenied, ValidationFailed
from nsbackup.model import DestinationRequest, Schedule
from nsbackup.obscure import reveal
from nsbackup.plugins import PluginHost
from nsbackup.store import Store
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.ns8_acl import dump_all
from tests.redis_server import RedisServer
from tests.test_store import Events

NSBACKUP = str(Path(sys.executable).parent / "nsbackup")
PASSPHRASE = "correct horse battery staple"
CLUSTER_UUID = "c3a7a9a8-3e1c-4b68-9d3c-9e0a3f0d1c11"  # tests/cluster_seed.py
OTHER_CLUSTER = "0b9e2b1e-55d4-4f0e-9d1a-3c1f8e6f0a42"
GPG = shutil.which("gpg")
RCLONE_CONF = "private/nodes/backup_destination/rclone_conf"
RESTIC_PASSWORD = "private/agents/backup_destination/restic_password"


@pytest.fixture(autouse=True)
def _gpg_present() -> None:
    if GPG is None:
        pytest.fail("gpg is missing: run scripts/setup (Debian package gnupg)")


# -- NS8's side of the files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ns8_home() -> Iterator[Path]:
    """The GNUPGHOME of NS8's own gpg command lines: one for the module, so that its agent
    calibrates its S2K count once (seconds) instead of in every test."""
    home = Path(tempfile.mkdtemp(prefix="ns8g-"))
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def ns8_decrypt(data: bytes, passphrase: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    """Exactly NS8's import-backup-destinations: ``gpg --decrypt --batch --pinentry-mode
    loopback --passphrase-fd <pipe>`` with the ciphertext on stdin."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, passphrase.encode() + b"\n")
    os.close(write_fd)
    try:
        return subprocess.run(
            [
                "gpg",
                "--decrypt",
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase-fd",
                str(read_fd),
            ],
            input=data,
            capture_output=True,
            pass_fds=(read_fd,),
            env={**os.environ, "GNUPGHOME": str(home)},
            timeout=60,
            check=False,
        )
    finally:
        os.close(read_fd)


def ns8_open(path: Path, passphrase: str, home: Path) -> tuple[bytes, dict[str, Any]]:
    """The gzip'd plaintext of a dump file and its JSON, opened as NS8 opens it."""
    done = ns8_decrypt(path.read_bytes(), passphrase, home)
    assert done.returncode == 0, done.stderr.decode()
    document = json.loads(gzip.decompress(done.stdout))
    return done.stdout, document


def ns8_encrypt(document: Any, passphrase: str, out: Path, home: Path) -> Path:
    """A dump as NS8's cluster-backup writes it: JSON with sorted keys, ``gzip -n``, then
    ``gpg --batch -c --pinentry-mode loopback --passphrase-file``."""
    plain = out.with_suffix("")
    plain.write_bytes(gzip.compress(json.dumps(document, sort_keys=True).encode(), mtime=0))
    secret = out.parent / "ns8-passphrase"
    secret.write_text(passphrase + "\n")
    try:
        subprocess.run(
            [
                "gpg",
                "--batch",
                "-c",
                "--pinentry-mode",
                "loopback",
                "--passphrase-file",
                str(secret),
                "--output",
                str(out),
                str(plain),
            ],
            env={**os.environ, "GNUPGHOME": str(home)},
            check=True,
            capture_output=True,
            timeout=60,
        )
    finally:
        plain.unlink()
        secret.unlink()
    return out


# -- a cluster with destinations and schedules ----------------------------------------------


def store_destination(
    client: redis.Redis, host: PluginHost, payload: dict[str, Any], password: str
) -> str:
    prepared = prepare(host, DestinationRequest.from_payload(payload))
    Store(client).add_destination(prepared, password)
    return prepared.id


def store_schedule(client: redis.Redis, repository: str, instances: list[str], **kw: Any) -> int:
    schedule = Schedule(
        id=0,
        name=kw.pop("name", "Nightly"),
        repository=repository,
        schedule="*-*-* 01:00:00",
        retention=kw.pop("retention", 7),
        enabled=kw.pop("enabled", True),
        instances=tuple(instances),
        schedule_hint={"interval": "daily", "time": "01:00"},
        **kw,
    )
    return Store(client).add_schedule(schedule).id


WEBDAV = {
    "provider": "webdav",
    "name": "Nextcloud",
    "url": "webdav:https://dav.example.org/remote.php/dav/files/bk",
    "parameters": {"webdav_user": "bk", "webdav_pass": "dav-secret", "webdav_vendor": "nextcloud"},
}
RAW = {
    "provider": "rclone",
    "name": "Raw S3",
    "url": "",
    "parameters": {
        "rclone_conf_secret": "type = s3\nprovider = Minio\nendpoint = https://minio.example.org"
        "\naccess_key_id = ak\nsecret_access_key = raw-secret",
        "basepath": "bucket9/nsbackup",
    },
}
B2 = {
    "provider": "backblaze",
    "name": "",
    "url": "b2:bucket-b2/ns8",
    "parameters": {"b2_account_id": "id123", "b2_account_key": "b2-secret"},
}


@pytest.fixture()
def seeded(ns8_redis: RedisServer, host: PluginHost) -> dict[str, Any]:
    """Three destinations (one with a ``basepath``), a fourth without its Restic password,
    and schedules on them; one schedule names a module UUID not yet restored."""
    client = ns8_redis.client()
    webdav = store_destination(client, host, WEBDAV, "w" * 64)
    raw = store_destination(client, host, RAW, "r" * 64)
    b2 = store_destination(client, host, B2, "b" * 64)
    client.hdel(RESTIC_PASSWORD, b2)
    pending = "6f1c3e2a-0d4b-4c5e-8f7a-9b0c1d2e3f40"
    nightly = store_schedule(client, webdav, ["mail1", "nextcloud3"])
    client.hset(f"cluster/backup/{nightly}", "uinstances", pending)
    weekly = store_schedule(client, raw, ["dokuwiki1"], name="Weekly", enabled=False)
    orphan = store_schedule(client, b2, ["mail1"], name="On B2")
    client.close()
    return {
        "webdav": webdav,
        "raw": raw,
        "b2": b2,
        "pending": pending,
        "nightly": nightly,
        "weekly": weekly,
        "orphan": orphan,
    }


def run_cli(
    server: RedisServer,
    *args: str,
    user: str = "node/1",
    extra: Mapping[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> tuple[int, Any, str]:
    password = server.admin_password if user == "cluster" else PASSWORDS[user]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSBACKUP_", "REDIS_"))}
    env.update(
        {
            "NSBACKUP_REDIS_URL": f"redis://{server.host}:{server.port}/0",
            "REDIS_USER": user,
            "REDIS_PASSWORD": password,
            "NODE_ID": "1",
            **(extra or {}),
        }
    )
    done = subprocess.run(
        [NSBACKUP, "--json", "dump", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        pass_fds=pass_fds,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    out = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, out, done.stderr


@pytest.fixture()
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")  # as NS8 writes it (echo)
    path.chmod(0o600)
    return path


# -- export ---------------------------------------------------------------------------------


def test_export_is_ns8_v4_field_by_field(
    ns8_redis: RedisServer,
    seeded: dict[str, Any],
    passphrase_file: Path,
    tmp_path: Path,
    ns8_home: Path,
) -> None:
    out = tmp_path / "out" / "dump.json.gz.gpg"
    out.parent.mkdir()
    code, result, err = run_cli(
        ns8_redis, "export", "--out", str(out), "--passphrase-file", str(passphrase_file)
    )
    # The destination without a Restic password is left out, said on stderr, exit 3.
    assert code == 3, err
    b2, orphan = seeded["b2"], seeded["orphan"]
    assert result["skipped_destinations"] == [{"id": b2, "reason": "no Restic password"}]
    assert result["skipped_backups"] == [
        {"id": orphan, "reason": f"destination {b2} is not exported"}
    ]
    assert f"destination {b2} left out of the dump: no Restic password" in err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in out.parent.iterdir()) == ["dump.json.gz.gpg"]

    packed, document = ns8_open(out, PASSPHRASE, ns8_home)
    # gzip -n: no timestamp, no file name; the JSON has sorted keys.
    assert packed[3] & 0x08 == 0 and packed[4:8] == b"\0\0\0\0"
    assert gzip.decompress(packed).decode() == json.dumps(document, sort_keys=True)
    assert result["digest"] == hashlib.sha256(packed).hexdigest()

    client = ns8_redis.client()
    confs, passwords = client.hgetall(RCLONE_CONF), client.hgetall(RESTIC_PASSWORD)

    def destination(uid: str) -> dict[str, str]:
        public = client.hgetall(f"cluster/backup_repository/{uid}")
        return {**public, "rclone_conf": confs[uid], "restic_password": passwords[uid]}

    def schedule(bid: int, uinstances: list[str]) -> dict[str, str]:
        raw = client.hgetall(f"cluster/backup/{bid}")
        return {**raw, "instances": "", "uinstances": " ".join(sorted(uinstances))}

    webdav, raw = seeded["webdav"], seeded["raw"]
    expected = {
        "version": 4,
        "modules": {},
        "cluster": {
            "uuid": CLUSTER_UUID,
            "network": "10.5.4.0/24",
            "backup_repository": {webdav: destination(webdav), raw: destination(raw)},
            "backup": {
                str(seeded["nightly"]): schedule(
                    seeded["nightly"],
                    [module_uuid("mail1"), module_uuid("nextcloud3"), seeded["pending"]],
                ),
                str(seeded["weekly"]): schedule(seeded["weekly"], [module_uuid("dokuwiki1")]),
            },
        },
    }
    client.close()
    assert document == expected
    assert type(document["version"]) is int
    assert document["cluster"]["backup_repository"][raw]["basepath"] == "bucket9/nsbackup"
    assert set(document["cluster"]["backup_repository"][webdav]) == {
        "provider",
        "url",
        "name",
        "basepath",
        "rclone_conf",
        "restic_password",
    }
    assert result["destinations"] == sorted([webdav, raw])
    assert result["backups"] == [seeded["nightly"], seeded["weekly"]]


def test_export_twice_gives_the_same_plaintext_and_new_ciphertext(
    ns8_redis: RedisServer, seeded: dict[str, Any], tmp_path: Path, ns8_home: Path
) -> None:
    dump = Cluster(ns8_redis.client("node/1", PASSWORDS["node/1"])).dump
    first = dump.export(tmp_path / "a.gpg", passphrase=PASSPHRASE)
    second = dump.export(tmp_path / "b.gpg", passphrase=PASSPHRASE)
    assert first["digest"] == second["digest"]
    assert (tmp_path / "a.gpg").read_bytes() != (tmp_path / "b.gpg").read_bytes()  # salt, IV
    home = ns8_home
    a, _ = ns8_open(tmp_path / "a.gpg", PASSPHRASE, home)
    b, _ = ns8_open(tmp_path / "b.gpg", PASSPHRASE, home)
    assert a == b
    # A change in the cluster changes the plaintext.
    ns8_redis.client().hset(f"cluster/backup/{seeded['nightly']}", "retention", "9")
    third = dump.export(tmp_path / "a.gpg", passphrase=PASSPHRASE)
    assert third["digest"] != first["digest"]


def test_a_module_may_not_export(
    ns8_redis: RedisServer, seeded: dict[str, Any], passphrase_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, result, err = run_cli(
        ns8_redis,
        "export",
        "--out",
        str(out / "dump.gpg"),
        "--passphrase-file",
        str(passphrase_file),
        user="module/mail1",
    )
    assert code == 5, err
    assert result["error"] == "permission_denied" and "module/mail1" in result["message"]
    assert list(out.iterdir()) == []
    with pytest.raises(PermissionDenied):
        Cluster(ns8_redis.client("module/mail1", PASSWORDS["module/mail1"])).dump.export(
            out / "dump.gpg", passphrase=PASSPHRASE
        )
    assert list(out.iterdir()) == []


# -- the passphrase and the plaintext never reach a disk, a command line or an environment ---


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _bytes_waiting(path: str) -> int:
    """Bytes in the pipe ``path`` (a ``/proc/<pid>/fd/<n>`` link), without reading any."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)
    finally:
        os.close(fd)


def _files(*roots: Path) -> dict[Path, bytes]:
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                with contextlib.suppress(OSError):  # a file gone meanwhile
                    found[path] = path.read_bytes()
    return found


def _wait(condition: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_no_plaintext_on_disk_and_no_passphrase_in_argv_or_env(
    ns8_redis: RedisServer,
    seeded: dict[str, Any],
    passphrase_file: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    ns8_home: Path,
) -> None:
    # A canary secret, and enough incompressible data that gpg's output cannot fit the pipe
    # it writes to: the stand-in below holds that pipe shut, so gpg stays alive mid-export
    # for as long as the test looks at it.
    canary = "canary-" + secrets.token_hex(16)
    bulk = base64.b64encode(secrets.token_bytes(150_000)).decode()
    client = ns8_redis.client()
    uid = "5d6e7f80-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
    client.hset(RCLONE_CONF, uid, f"[{uid}]\ntype = s3\nsecret_access_key = {canary}{bulk}\n")
    client.hset(RESTIC_PASSWORD, uid, "p" * 64)
    client.hset(f"cluster/backup_repository/{uid}", mapping={"provider": "rclone", "url": "u"})
    client.close()

    # A TMPDIR of our own, short enough for gpg-agent's socket paths.
    tmpdir = Path(tempfile.mkdtemp(prefix="nsb-"))
    request.addfinalizer(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    state, outdir = tmp_path / "state", tmp_path / "out"
    for d in (state, outdir):
        d.mkdir()
    release = tmp_path / "release"
    os.mkfifo(release)
    stand_in = tmp_path / "bin" / "gpg"
    stand_in.parent.mkdir()
    # The real gpg with the same arguments and environment; its output is held until released.
    stand_in.write_text(
        f'#!/bin/bash\nset -o pipefail\n{GPG} "$@" | {{ read -r _ < {release}; exec cat; }}\n'
    )
    stand_in.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSBACKUP_", "REDIS_"))}
    env.update(
        {
            "NSBACKUP_REDIS_URL": f"redis://{ns8_redis.host}:{ns8_redis.port}/0",
            "REDIS_USER": "node/1",
            "REDIS_PASSWORD": PASSWORDS["node/1"],
            "NSBACKUP_STATE_DIR": str(state),
            "NSBACKUP_GPG": str(stand_in),
            "TMPDIR": str(tmpdir),
        }
    )
    out = outdir / "dump.json.gz.gpg"
    proc = subprocess.Popen(
        [
            NSBACKUP,
            "--json",
            "dump",
            "export",
            "--out",
            str(out),
            "--passphrase-file",
            str(passphrase_file),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    during: dict[Path, bytes] = {}
    real_gpg = os.path.realpath(str(GPG))
    try:
        gpg_pid = _wait(
            lambda: next((p for p in _descendants(proc.pid) if _exe(p) == real_gpg), None),
            "gpg to start",
        )
        # gpg has read the passphrase and the plaintext and is writing ciphertext.
        _wait(lambda: _bytes_waiting(f"/proc/{gpg_pid}/fd/1") > 0, "gpg's first output")

        secret = PASSPHRASE.encode()
        argv = Path(f"/proc/{gpg_pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{gpg_pid}/environ").read_bytes()
        assert secret not in b"\0".join(argv) and secret not in environ
        assert b"--passphrase-fd" in argv and b"--pinentry-mode" in argv and b"--batch" in argv
        assert b"REDIS_PASSWORD" not in environ  # nothing of the caller's reaches gpg
        passphrase_fd = argv[argv.index(b"--passphrase-fd") + 1].decode()
        assert os.readlink(f"/proc/{gpg_pid}/fd/{passphrase_fd}").startswith("pipe:")
        for pid in (proc.pid, *_descendants(proc.pid)):
            for name in ("cmdline", "environ"):
                with contextlib.suppress(FileNotFoundError):  # a process gone meanwhile
                    assert secret not in Path(f"/proc/{pid}/{name}").read_bytes()
        # The private GNUPGHOME is the only thing in TMPDIR, 0700.
        (home,) = list(tmpdir.iterdir())
        assert home.name.startswith("nsbackup-gpg-") and stat.S_IMODE(home.stat().st_mode) == 0o700
        argv_home = argv[argv.index(b"--homedir") + 1].decode()
        assert argv_home == str(home)
        during = _files(tmpdir, state, outdir)
        assert any(p.parent == outdir for p in during)  # the 0600 temporary output
        for path, content in during.items():
            assert canary.encode() not in content, path
            assert b'"backup_repository"' not in content, path
            if path.parent == outdir:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        with open(release, "w") as go:
            go.write("go\n")
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr  # the seeded B2 destination has no Restic password
    result = json.loads(stdout)
    assert uid in result["destinations"]

    assert list(tmpdir.iterdir()) == []  # GNUPGHOME removed
    assert [p.name for p in outdir.iterdir()] == [out.name]
    packed, document = ns8_open(out, PASSPHRASE, ns8_home)
    assert canary in document["cluster"]["backup_repository"][uid]["rclone_conf"]
    after = _files(tmpdir, state, outdir)
    for path, content in {**during, **after}.items():
        assert canary.encode() not in content, path
        assert packed not in content and packed[:64] not in content, path


# -- reading dumps --------------------------------------------------------------------------


def test_wrong_passphrase_and_bad_files_exit_2_and_write_nothing(
    ns8_redis: RedisServer,
    seeded: dict[str, Any],
    passphrase_file: Path,
    tmp_path: Path,
    ns8_home: Path,
) -> None:
    good = tmp_path / "dump.gpg"
    Cluster(ns8_redis.client("node/1", PASSWORDS["node/1"])).dump.export(
        good, passphrase=PASSPHRASE
    )
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    damaged = tmp_path / "damaged.gpg"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.gpg"
    truncated.write_bytes(good.read_bytes()[: len(data) // 2])
    text = tmp_path / "text.gpg"
    text.write_text("this is not an OpenPGP message\n")
    not_gzip = ns8_encrypt_raw(b'{"version": 4}', tmp_path / "plain.gpg", ns8_home)
    not_json = ns8_encrypt_raw(gzip.compress(b"\xff\xfe{"), tmp_path / "nj.gpg", ns8_home)
    # A real dump in an OpenPGP literal packet: gpg --decrypt exits 0 on it whatever the
    # passphrase, and anybody who can write to a destination can make one.
    plaintext = subprocess.run(
        ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", PASSPHRASE, "-d"],
        input=good.read_bytes(),
        env={**os.environ, "GNUPGHOME": str(ns8_home)},
        capture_output=True,
        check=True,
    ).stdout
    unencrypted = tmp_path / "stored.gpg"
    subprocess.run(
        ["gpg", "--batch", "--store", "--output", str(unencrypted)],
        input=plaintext,
        env={**os.environ, "GNUPGHOME": str(ns8_home)},
        capture_output=True,
        check=True,
    )
    # 80 MiB that OpenPGP's compression keeps in a few dozen KiB: gpg stops at the limit.
    bomb = ns8_encrypt_raw(bytes(80 * 2**20), tmp_path / "bomb.gpg", ns8_home)
    assert bomb.stat().st_size < 2**20

    before = dump_all(ns8_redis)
    cases = [
        (good, wrong, "invalid_passphrase", "passphrase"),
        (damaged, passphrase_file, "invalid_file", "file"),
        (truncated, passphrase_file, "invalid_file", "file"),
        (text, passphrase_file, "invalid_file", "file"),
        (not_gzip, passphrase_file, "invalid_file", "file"),
        (not_json, passphrase_file, "invalid_file", "file"),
        (unencrypted, wrong, "invalid_file", "file"),
        (unencrypted, passphrase_file, "invalid_file", "file"),
        (bomb, passphrase_file, "invalid_file", "file"),
    ]
    dump = Cluster(ns8_redis.client()).dump
    for path, secret, error, field in cases:
        code, result, err = run_cli(
            ns8_redis, "import", str(path), "--passphrase-file", str(secret), user="cluster"
        )
        assert code == 2, (path.name, err)
        assert [(e["error"], e["field"]) for e in result] == [(error, field)], path.name
        with pytest.raises(ValidationFailed) as failed:
            dump.restore(path, passphrase=secret.read_text().strip())
        assert [(e.error, e.field) for e in failed.value.errors] == [(error, field)], path.name
    assert dump_all(ns8_redis) == before


def ns8_encrypt_raw(plaintext: bytes, out: Path, home: Path) -> Path:
    """Encrypt arbitrary bytes as NS8 encrypts its dump (for files that are not dumps)."""
    secret = out.parent / "ns8-passphrase"
    secret.write_text(PASSPHRASE + "\n")
    subprocess.run(
        [
            "gpg",
            "--batch",
            "-c",
            "--pinentry-mode",
            "loopback",
            "--passphrase-file",
            str(secret),
            "--output",
            str(out),
        ],
        input=plaintext,
        env={**os.environ, "GNUPGHOME": str(home)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    secret.unlink()
    return out


def v3_dump(existing: str) -> dict[str, Any]:
    """A pre-3.20 (version "3") dump of another cluster, as ref §8.2/§8.4 describe it: the
    secrets are flat fields of each destination and ``password`` is the Restic password."""
    return {
        "version": "3",
        "modules": {module_uuid("mail1"): {"backups": ["1"]}},
        "vpn": {"endpoint": "ns8.example.org:55820"},
        "cluster": {
            "uuid": OTHER_CLUSTER,
            "network": "10.5.4.0/24",
            "backup": {},
            "backup_repository": {
                "11111111-1111-5111-8111-111111111111": {
                    "provider": "backblaze",
                    "url": "b2:bucket-old/ns8",
                    "name": "Old B2",
                    "password": "pw-b2",
                    "b2_account_id": "acct42",
                    "b2_account_key": "b2-key-secret",
                },
                "22222222-2222-5222-8222-222222222222": {
                    "provider": "aws",
                    "url": "s3:s3.amazonaws.com/bucket-aws/sub",
                    "name": "Old AWS",
                    "password": "pw-aws",
                    "aws_access_key_id": "AKIAOLD",
                    "aws_secret_access_key": "aws-secret",
                    "aws_default_region": "eu-west-1",
                },
                "33333333-3333-5333-8333-333333333333": {
                    "provider": "azure",
                    "url": "azure:container-old/p",
                    "name": "Old Azure",
                    "password": "pw-az",
                    "azure_account_name": "acctold",
                    "azure_account_key": "YXp1cmUta2V5",
                },
                "44444444-4444-5444-8444-444444444444": {
                    "provider": "smb",
                    "url": "smb:share-old/dir",
                    "name": "Old SMB",
                    "password": "pw-smb",
                    "smb_host": "nas.example.org",
                    "smb_user": "bob",
                    "smb_pass": "smb-secret",
                    "smb_domain": "WORKGROUP",
                },
                "55555555-5555-5555-8555-555555555555": {
                    "provider": "cluster",
                    "url": "webdav:http://10.5.4.1:4694",
                    "name": "Node 1 of the other cluster",
                    "password": "pw-cluster",
                },
                existing: {
                    "provider": "backblaze",
                    "url": "b2:bucket-b2/ns8",
                    "name": "Exists",
                    "password": "pw-exists",
                    "b2_account_id": "id123",
                    "b2_account_key": "other",
                },
            },
        },
    }


def test_import_of_a_v3_dump(
    ns8_redis: RedisServer,
    seeded: dict[str, Any],
    passphrase_file: Path,
    tmp_path: Path,
    ns8_home: Path,
) -> None:
    existing = seeded["webdav"]
    path = ns8_encrypt(v3_dump(existing), PASSPHRASE, tmp_path / "v3.gpg", ns8_home)
    client = ns8_redis.client()
    before = client.hgetall(f"cluster/backup_repository/{existing}")
    events = Events(ns8_redis.client())
    code, result, err = run_cli(
        ns8_redis, "import", str(path), "--passphrase-file", str(passphrase_file), user="cluster"
    )
    assert code == 0, err
    imported = [
        "11111111-1111-5111-8111-111111111111",
        "22222222-2222-5222-8222-222222222222",
        "33333333-3333-5333-8333-333333333333",
        "44444444-4444-5444-8444-444444444444",
    ]
    assert result["imported_destinations"] == 4 and result["skipped_destinations"] == 2
    assert result["version"] == 3 and result["imported"] == imported
    assert {s["id"]: s["reason"] for s in result["skipped"]} == {
        "55555555-5555-5555-8555-555555555555": "cluster destination of another cluster",
        existing: "exists already",
    }
    assert events.collect(1) == [
        ("cluster/event/backup-destination-changed", {"destination_ids": imported})
    ]
    confs, passwords = client.hgetall(RCLONE_CONF), client.hgetall(RESTIC_PASSWORD)
    b2, aws, azure, smb = imported
    assert client.hgetall(f"cluster/backup_repository/{b2}") == {
        "provider": "backblaze",
        "url": "b2:bucket-old/ns8",
        "name": "Old B2",
        "basepath": "",
    }
    assert [passwords[u] for u in imported] == ["pw-b2", "pw-aws", "pw-az", "pw-smb"]
    from nsbackup import ini

    assert ini.parse(confs[b2]) == {b2: {"type": "b2", "account": "acct42", "key": "b2-key-secret"}}
    s3 = ini.parse(confs[aws])[aws]
    assert (s3["type"], s3["access_key_id"], s3["secret_access_key"], s3["region"]) == (
        "s3",
        "AKIAOLD",
        "aws-secret",
        "eu-west-1",
    )
    assert ini.parse(confs[azure])[azure]["key"] == "YXp1cmUta2V5"
    section = ini.parse(confs[smb])[smb]
    assert section["host"] == "nas.example.org" and section["user"] == "bob"
    assert section["pass"] != "smb-secret" and reveal(section["pass"]) == "smb-secret"
    # The existing destination is untouched, the other cluster's node disk is not imported.
    assert client.hgetall(f"cluster/backup_repository/{existing}") == before
    assert not client.exists("cluster/backup_repository/55555555-5555-5555-8555-555555555555")
    client.close()

    # Importing again skips everything and writes nothing.
    snapshot = dump_all(ns8_redis)
    code, result, err = run_cli(
        ns8_redis, "import", str(path), "--passphrase-file", str(passphrase_file), user="cluster"
    )
    assert code == 0 and result["imported_destinations"] == 0, err
    assert result["skipped_destinations"] == 6
    assert dump_all(ns8_redis) == snapshot


def test_import_of_a_v4_dump_keeps_basepath_and_same_cluster_disks(
    ns8_redis: RedisServer, seeded: dict[str, Any], host: PluginHost, tmp_path: Path
) -> None:
    client = ns8_redis.client()
    disk = store_destination(
        client, host, {"provider": "cluster", "url": "webdav:http://10.5.4.1:4694"}, "d" * 64
    )
    node = Cluster(ns8_redis.client("node/1", PASSWORDS["node/1"]))
    node.dump.export(tmp_path / "dump.gpg", passphrase=PASSPHRASE)
    keep = {u: client.hgetall(f"cluster/backup_repository/{u}") for u in (seeded["raw"], disk)}
    confs = client.hgetall(RCLONE_CONF)
    client.delete(*(f"cluster/backup_repository/{u}" for u in keep))
    client.hdel(RCLONE_CONF, *keep)
    client.hdel(RESTIC_PASSWORD, *keep)
    # Read with the passphrase on a descriptor.
    read_fd, write_fd = os.pipe()
    os.write(write_fd, PASSPHRASE.encode())
    os.close(write_fd)
    try:
        code, result, err = run_cli(
            ns8_redis,
            "import",
            str(tmp_path / "dump.gpg"),
            "--passphrase-fd",
            str(read_fd),
            user="cluster",
            pass_fds=(read_fd,),
        )
    finally:
        os.close(read_fd)
    assert code == 0, err
    assert sorted(result["imported"]) == sorted(keep)  # same cluster: its node disk too
    for uid, public in keep.items():
        assert client.hgetall(f"cluster/backup_repository/{uid}") == public
        assert client.hget(RCLONE_CONF, uid) == confs[uid]
    assert client.hget(f"cluster/backup_repository/{seeded['raw']}", "basepath") == (
        "bucket9/nsbackup"
    )
    client.close()


def test_import_skips_unreadable_entries_and_needs_the_cluster_user(
    ns8_redis: RedisServer, passphrase_file: Path, tmp_path: Path, ns8_home: Path
) -> None:
    good = "66666666-6666-5666-8666-666666666666"
    document = {
        "version": 4,
        "modules": {},
        "cluster": {
            "uuid": OTHER_CLUSTER,
            "network": "10.5.4.0/24",
            "backup": {},
            "backup_repository": {
                good: {
                    "provider": "rclone",
                    "url": "rclone:s3:h:b",
                    "name": "ok",
                    "basepath": "b",
                    "rclone_conf": f"[{good}]\ntype = s3\n",
                    "restic_password": "pw",
                },
                "77777777-7777-5777-8777-777777777777": {
                    "provider": "rclone",
                    "url": "u",
                    "name": "two sections",
                    "rclone_conf": "[77777777-7777-5777-8777-777777777777]\ntype = s3\n"
                    "[combined]\ntype = local\n",
                    "restic_password": "pw",
                },
                "not-a-uuid": {"provider": "rclone", "url": "u", "name": "n"},
            },
        },
    }
    path = ns8_encrypt(document, PASSPHRASE, tmp_path / "v4.gpg", ns8_home)
    before = dump_all(ns8_redis)
    code, result, err = run_cli(
        ns8_redis, "import", str(path), "--passphrase-file", str(passphrase_file)
    )
    assert code == 5, err  # a node may not write destinations
    assert dump_all(ns8_redis) == before
    code, result, err = run_cli(
        ns8_redis, "import", str(path), "--passphrase-file", str(passphrase_file), user="cluster"
    )
    assert code == 0, err
    assert result["imported"] == [good]
    reasons = {s["id"]: s["reason"] for s in result["skipped"]}
    assert "exactly one section" in reasons["77777777-7777-5777-8777-777777777777"]
    assert "not a UUID" in reasons["not-a-uuid"]
    assert "not imported" in err


def test_import_rewrites_each_section_with_its_provider(
    ns8_redis: RedisServer, host: PluginHost, passphrase_file: Path, tmp_path: Path, ns8_home: Path
) -> None:
    """A dump comes from a destination's storage, so its rclone sections are not trusted:
    rclone runs what a section says (``*_command``, ``ssh``) and ``type = local`` would
    serve the node's own disk. Each section is written again by its provider, as ``destination
    add`` would write it; the provider's refusals leave a destination out."""
    marker = tmp_path / "ran"

    def webdav(url: str, edit: Any) -> tuple[str, dict[str, str]]:
        prepared = prepare(host, DestinationRequest.from_payload({**WEBDAV, "url": url}))
        return prepared.id, {
            "provider": "webdav",
            "url": prepared.url,
            "name": "dav",
            "basepath": "",
            "rclone_conf": edit(prepared.rclone_conf),
            "restic_password": "pw",
        }

    command, with_command = webdav(
        "webdav:https://dav1.example.org/dav",
        lambda conf: conf + f"bearer_token_command = touch {marker}\n",
    )
    local, as_local = webdav(
        "webdav:https://dav2.example.org/dav",
        lambda conf: conf.replace("type = webdav", "type = local"),
    )
    ssh = "88888888-8888-5888-8888-888888888888"
    upper = "99999999-AAAA-5999-8999-999999999999"
    entries = {
        command: with_command,
        local: as_local,
        ssh: {
            "provider": "rclone",
            "url": "",
            "name": "sftp",
            "basepath": "b",
            "rclone_conf": f"[{ssh}]\ntype = sftp\nhost = h\nssh = touch {marker}\n",
            "restic_password": "pw",
        },
        upper: {
            "provider": "rclone",
            "url": "",
            "name": "upper",
            "basepath": "b",
            "rclone_conf": f"[{upper}]\ntype = s3\n",
            "restic_password": "pw",
        },
    }
    document = {
        "version": 4,
        "modules": {},
        "cluster": {
            "uuid": OTHER_CLUSTER,
            "network": "10.5.4.0/24",
            "backup": {},
            "backup_repository": entries,
        },
    }
    path = ns8_encrypt(document, PASSPHRASE, tmp_path / "v4.gpg", ns8_home)
    code, result, err = run_cli(
        ns8_redis, "import", str(path), "--passphrase-file", str(passphrase_file), user="cluster"
    )
    assert code == 0, err
    assert result["imported"] == [command]
    conf = ns8_redis.client().hget(RCLONE_CONF, command)
    assert "type = webdav" in conf and "command" not in conf
    reasons = {s["id"]: s["reason"] for s in result["skipped"]}
    assert "type 'local'" in reasons[local]
    assert "'ssh' is not allowed" in reasons[ssh]
    assert "lower-case" in reasons[upper]
    assert set(ns8_redis.client().hkeys(RCLONE_CONF)) == {command}
    assert not marker.exists()


# -- restore --------------------------------------------------------------------------------


def test_restore_on_an_empty_cluster(
    ns8_redis: RedisServer, seeded: dict[str, Any], passphrase_file: Path, tmp_path: Path
) -> None:
    client = ns8_redis.client()
    client.hset(RESTIC_PASSWORD, seeded["b2"], "b" * 64)  # every destination exported
    Cluster(ns8_redis.client("node/1", PASSWORDS["node/1"])).dump.export(
        tmp_path / "dump.gpg", passphrase=PASSPHRASE
    )
    ids = [seeded[k] for k in ("webdav", "raw", "b2")]
    bids = [seeded[k] for k in ("nightly", "weekly", "orphan")]
    publics = {u: client.hgetall(f"cluster/backup_repository/{u}") for u in ids}
    confs, passwords = client.hgetall(RCLONE_CONF), client.hgetall(RESTIC_PASSWORD)
    hashes = {b: client.hgetall(f"cluster/backup/{b}") for b in bids}
    # A new cluster: no destinations, no schedules, no module restored yet.
    client.delete(RCLONE_CONF, RESTIC_PASSWORD, "cluster/backup_sequence", "cluster/module_uuid")
    client.delete(*(f"cluster/backup_repository/{u}" for u in ids))
    client.delete(*(f"cluster/backup/{b}" for b in bids))
    events = Events(ns8_redis.client())

    code, result, err = run_cli(
        ns8_redis,
        "restore",
        str(tmp_path / "dump.gpg"),
        "--passphrase-file",
        str(passphrase_file),
        user="cluster",
    )
    assert code == 0, err
    assert result == {
        "version": 4,
        "restored_destinations": sorted(ids),
        "restored_backups": bids,
        "backup_sequence": max(bids),
    }
    for uid in ids:
        assert client.hgetall(f"cluster/backup_repository/{uid}") == publics[uid]  # basepath too
        assert client.hget(RCLONE_CONF, uid) == confs[uid]
        assert client.hget(RESTIC_PASSWORD, uid) == passwords[uid]
    uuids = {
        seeded["nightly"]: [module_uuid("mail1"), module_uuid("nextcloud3"), seeded["pending"]],
        seeded["weekly"]: [module_uuid("dokuwiki1")],
        seeded["orphan"]: [module_uuid("mail1")],
    }
    for bid in bids:
        restored = client.hgetall(f"cluster/backup/{bid}")
        assert restored == {
            **hashes[bid],
            "instances": "",
            "uinstances": " ".join(sorted(uuids[bid])),
        }
    assert client.get("cluster/backup_sequence") == str(max(bids))
    assert sorted(events.collect(2)) == [
        ("cluster/event/backup-destination-changed", {"destination_ids": sorted(ids)}),
        ("cluster/event/backup-schedule-changed", {"backup_ids": [str(b) for b in bids]}),
    ]
    client.close()


def test_restore_links_the_modules_a_cluster_already_has(
    ns8_redis: RedisServer, seeded: dict[str, Any], passphrase_file: Path, tmp_path: Path
) -> None:
    """Restored on a cluster that still has its modules, the schedules keep backing them up:
    a module whose UUID is in ``uinstances`` goes back into ``instances`` at once (each
    module's restore would do it; here there is none to come)."""
    client = ns8_redis.client()
    client.hset(RESTIC_PASSWORD, seeded["b2"], "b" * 64)
    Cluster(ns8_redis.client("node/1", PASSWORDS["node/1"])).dump.export(
        tmp_path / "dump.gpg", passphrase=PASSPHRASE
    )
    bids = [seeded[k] for k in ("nightly", "weekly", "orphan")]
    hashes = {b: client.hgetall(f"cluster/backup/{b}") for b in bids}
    client.delete(*(f"cluster/backup/{b}" for b in bids))
    code, _result, err = run_cli(
        ns8_redis,
        "restore",
        str(tmp_path / "dump.gpg"),
        "--passphrase-file",
        str(passphrase_file),
        user="cluster",
    )
    assert code == 0, err
    for bid in bids:
        restored = client.hgetall(f"cluster/backup/{bid}")
        assert sorted(restored["instances"].split()) == sorted(hashes[bid]["instances"].split())
    assert client.hget(f"cluster/backup/{seeded['nightly']}", "uinstances") == seeded["pending"]
    assert "uinstances" not in client.hgetall(f"cluster/backup/{seeded['weekly']}")
    client.close()


def test_restore_writes_nothing_when_any_part_is_bad(
    ns8_redis: RedisServer, passphrase_file: Path, tmp_path: Path, ns8_home: Path
) -> None:
    good = "66666666-6666-5666-8666-666666666666"
    document = {
        "version": 4,
        "modules": {},
        "cluster": {
            "uuid": CLUSTER_UUID,
            "network": "10.5.4.0/24",
            "backup_repository": {
                good: {
                    "provider": "rclone",
                    "url": "rclone:s3:h:b",
                    "name": "ok",
                    "basepath": "b",
                    "rclone_conf": f"[{good}]\ntype = s3\n",
                    "restic_password": "pw",
                }
            },
            "backup": {
                "1": {
                    "name": "ok",
                    "repository": good,
                    "schedule": "daily",
                    "retention": "3",
                    "enabled": "1",
                    "instances": "",
                    "uinstances": "",
                },
                "2": {
                    "name": "elsewhere",
                    "repository": "99999999-9999-5999-8999-999999999999",
                    "schedule": "daily",
                    "retention": "3",
                    "enabled": "1",
                },
                "3": {"name": "bad\nline", "repository": good},
            },
        },
    }
    path = ns8_encrypt(document, PASSPHRASE, tmp_path / "bad.gpg", ns8_home)
    before = dump_all(ns8_redis)
    code, result, err = run_cli(
        ns8_redis, "restore", str(path), "--passphrase-file", str(passphrase_file), user="cluster"
    )
    assert code == 2, err
    assert {e["field"] for e in result} == {"cluster.backup.2.repository", "cluster.backup.3.name"}
    assert dump_all(ns8_redis) == before


def test_restore_of_a_v3_dump_makes_schedules_portable(
    ns8_redis: RedisServer, passphrase_file: Path, tmp_path: Path, ns8_home: Path
) -> None:
    document = v3_dump("66666666-6666-5666-8666-666666666666")
    del document["cluster"]["backup_repository"]["66666666-6666-5666-8666-666666666666"]
    document["cluster"]["backup"] = {
        "1": {
            "name": "Old nightly",
            "repository": "11111111-1111-5111-8111-111111111111",
            "schedule": "daily",
            "retention": "3",
            "enabled": "1",
        }
    }
    path = ns8_encrypt(document, PASSPHRASE, tmp_path / "v3.gpg", ns8_home)
    ns8_redis.client().delete("cluster/module_uuid")  # a new cluster: mail1 not restored yet
    code, result, err = run_cli(
        ns8_redis, "restore", str(path), "--passphrase-file", str(passphrase_file), user="cluster"
    )
    assert code == 0, err
    assert result["version"] == 3 and result["restored_backups"] == [1]
    client = ns8_redis.client()
    restored = client.hgetall("cluster/backup/1")
    assert restored["instances"] == "" and restored["uinstances"] == module_uuid("mail1")
    assert client.hget(RESTIC_PASSWORD, "44444444-4444-5444-8444-444444444444") == "pw-smb"
    client.close()


def test_dump_commands_refuse_bad_passphrases(ns8_redis: RedisServer, tmp_path: Path) -> None:
    for text in ("\n", "   \t \n"):
        empty = tmp_path / "empty"
        empty.write_text(text)
        code, result, err = run_cli(
            ns8_redis, "export", "--out", str(tmp_path / "x"), "--passphrase-file", str(empty)
        )
        assert code == 2 and result[0]["error"] == "required", err
    code, result, err = run_cli(
        ns8_redis, "export", "--out", str(tmp_path / "x"), "--passphrase-file", str(tmp_path / "no")
    )
    assert code == 2 and result[0]["error"] == "unreadable_file", err
    assert not (tmp_path / "x").exists()
