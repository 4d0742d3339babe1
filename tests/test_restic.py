"""The restic environment through the gateway: credentials never on a command line."""

from __future__ import annotations

from nsbackup.restic import explain, restic_env, restic_version


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
