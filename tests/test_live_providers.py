"""Each provider's rendered config against a real server, through the real rclone binary.

generic-s3 -> ``rclone serve s3``; webdav -> ``rclone serve webdav`` (with a password, and a
read-only one); azure -> Azurite; smb -> Samba ``smbd`` on a loopback port; cluster -> a local
directory; raw rclone -> ``rclone serve sftp`` and ``rclone serve s3``. B2 has no local server:
it is covered at config level only (tests/test_providers.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nsbackup.destinations import prepare
from nsbackup.model import DestinationRequest, PreparedDestination
from nsbackup.obscure import obscure
from nsbackup.plugins import PluginHost
from nsbackup.probe import most_important, probe
from tests.servers import (
    AzuriteServer,
    RcloneS3Server,
    RcloneSftpServer,
    RcloneWebdavServer,
    SambaServer,
    free_port,
)

pytestmark = pytest.mark.live

PASSWORD = "pw-Live%secret 1"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live")


@pytest.fixture(scope="module")
def s3(root: Path) -> Iterator[RcloneS3Server]:
    (root / "s3" / "bucket1").mkdir(parents=True)
    with RcloneS3Server(root / "s3", "AKLIVE", PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def dav(root: Path) -> Iterator[RcloneWebdavServer]:
    with RcloneWebdavServer(root / "dav", "davuser", PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def dav_ro(root: Path) -> Iterator[RcloneWebdavServer]:
    with RcloneWebdavServer(root / "dav-ro", "davuser", PASSWORD, read_only=True) as server:
        yield server


@pytest.fixture(scope="module")
def azurite() -> Iterator[AzuriteServer]:
    with AzuriteServer() as server:
        yield server


@pytest.fixture(scope="module")
def samba(root: Path) -> Iterator[SambaServer]:
    with SambaServer(root / "smb", "smbuser", PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def sftp(root: Path) -> Iterator[RcloneSftpServer]:
    with RcloneSftpServer(root / "sftp", "sftpuser", PASSWORD) as server:
        yield server


def make(host: PluginHost, payload: dict[str, Any]) -> PreparedDestination:
    return prepare(host, DestinationRequest.from_payload(payload))


def s3_request(s3: RcloneS3Server, secret: str = PASSWORD, path: str = "ns8") -> dict[str, Any]:
    return {
        "provider": "generic-s3",
        "name": "",
        "url": f"s3:{s3.endpoint}/bucket1/{path}",
        "parameters": {"aws_access_key_id": s3.access_key, "aws_secret_access_key": secret},
    }


def dav_request(server: RcloneWebdavServer, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "provider": "webdav",
        "name": "",
        "url": f"webdav:{server.url.rstrip('/')}/backups",
        "parameters": {
            "webdav_user": server.user,
            "webdav_pass": password,
            "webdav_vendor": "rclone",
        },
    }


def azure_request(server: AzuriteServer, key: str | None = None) -> dict[str, Any]:
    return {
        "provider": "azure",
        "name": "",
        "url": "azure:ns8backups/sub",
        "parameters": {
            "azure_account_name": server.account,
            "azure_account_key": key or server.key,
            "endpoint": server.endpoint,
        },
    }


def smb_request(server: SambaServer, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "provider": "smb",
        "name": "",
        "url": f"smb:{server.share}/ns8",
        "parameters": {
            "smb_host": server.host,
            "smb_port": str(server.port),
            "smb_user": server.user,
            "smb_pass": password,
            "smb_domain": "WORKGROUP",
        },
    }


def raw_sftp_request(server: RcloneSftpServer, password: str = PASSWORD) -> dict[str, Any]:
    conf = (
        f"[my-sftp]\ntype = sftp\nhost = {server.host}\nport = {server.port}\n"
        f"user = {server.user}\npass = {obscure(password)}\nshell_type = none\n"
    )
    return {
        "provider": "rclone",
        "name": "",
        "url": "",
        "parameters": {"rclone_conf_secret": conf, "basepath": "srv/backups"},
    }


def raw_s3_request(s3: RcloneS3Server) -> dict[str, Any]:
    conf = (
        f"type = s3\nprovider = Rclone\nendpoint = {s3.endpoint}\n"
        f"access_key_id = {s3.access_key}\nsecret_access_key = {s3.secret_key}\n"
    )
    return {
        "provider": "rclone",
        "name": "",
        "url": "",
        "parameters": {"rclone_conf_secret": conf, "basepath": "bucket1/raw"},
    }


def assert_ok(prepared: PreparedDestination, basepath: str | None = None) -> None:
    result = probe(prepared, basepath)
    assert result.ok, result


def assert_fails(prepared: PreparedDestination, reason: str) -> None:
    result = probe(prepared)
    assert not result.ok and result.reason == reason, result
    assert PASSWORD not in result.detail


def test_generic_s3(host: PluginHost, s3: RcloneS3Server, root: Path) -> None:
    assert_ok(make(host, s3_request(s3)))
    assert not any((root / "s3" / "bucket1").rglob(".nsbackup-probe-*"))  # cleaned up
    assert_fails(make(host, s3_request(s3, secret="wrong")), "no_read_permission")


def test_webdav(host: PluginHost, dav: RcloneWebdavServer, root: Path) -> None:
    assert_ok(make(host, dav_request(dav)))
    assert (root / "dav" / "backups").is_dir()
    assert not any((root / "dav").rglob(".nsbackup-probe-*"))
    assert_fails(make(host, dav_request(dav, "wrong")), "no_read_permission")


def test_read_only_webdav_is_no_write_permission(
    host: PluginHost, dav_ro: RcloneWebdavServer
) -> None:
    assert_fails(make(host, dav_request(dav_ro)), "no_write_permission")


def test_azure_on_azurite(host: PluginHost, azurite: AzuriteServer) -> None:
    assert_ok(make(host, azure_request(azurite)))
    wrong = "A" * 86 + "=="
    assert_fails(make(host, azure_request(azurite, key=wrong)), "no_read_permission")


def test_smb_on_samba(host: PluginHost, samba: SambaServer, root: Path) -> None:
    assert_ok(make(host, smb_request(samba)))
    assert (root / "smb" / "ns8").is_dir()
    assert_fails(make(host, smb_request(samba, "wrong")), "no_read_permission")


def test_cluster_local_directory(host: PluginHost, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    prepared = make(
        host,
        {"provider": "cluster", "name": "", "url": "webdav:http://10.5.4.1:4694", "parameters": {}},
    )
    assert_ok(prepared, str(repo))
    assert repo.is_dir() and list(repo.iterdir()) == []


def test_raw_rclone_over_sftp_and_s3(
    host: PluginHost, sftp: RcloneSftpServer, s3: RcloneS3Server
) -> None:
    assert_ok(make(host, raw_sftp_request(sftp)))
    assert_fails(make(host, raw_sftp_request(sftp, "wrong")), "no_read_permission")
    assert_ok(make(host, raw_s3_request(s3)))


def test_dead_endpoint_answers_within_seconds(host: PluginHost) -> None:
    port = free_port()  # nothing listens there
    prepared = make(
        host,
        {
            "provider": "generic-s3",
            "url": f"s3:http://127.0.0.1:{port}/b1x",
            "parameters": {"aws_access_key_id": "a", "aws_secret_access_key": "b"},
        },
    )
    started = time.monotonic()
    assert_fails(prepared, "backup_repository_not_accessible")
    assert time.monotonic() - started < 30


def test_reason_ranking() -> None:
    assert most_important(["no_read_permission", "no_write_permission"]) == "no_write_permission"
    assert (
        most_important(["backup_repository_not_accessible", "no_delete_permission"])
        == "no_delete_permission"
    )
    assert most_important([]) == "backup_repository_not_accessible"
