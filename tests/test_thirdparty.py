"""Third-party plugins, installed for real: the example ``nsbackup-sftp`` package and a broken one.

Each package under ``tests/data`` is installed with the real pip into its own target directory
(built from a copy, so the source tree gets no ``build/`` or ``*.egg-info``); the real
``nsbackup`` console script then runs with ``PYTHONPATH`` pointing there, which is how it finds
the packages' entry points. The live test proves the config the CLI renders for ``sftp`` works
against ``rclone serve sftp``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nsbackup import ini, rclone
from nsbackup.destinations import display_conf, prepare
from nsbackup.model import DestinationRequest, StoredDestination
from nsbackup.obscure import reveal
from nsbackup.plugins import DISABLE_ENV, PluginHost, load_plugins
from nsbackup.probe import probe
from nsbackup.testing import check_provider
from tests.builtin import BUILTIN_PLUGINS, BUILTIN_PROVIDERS, build_isolation_args
from tests.servers import RcloneSftpServer, free_port

DATA = Path(__file__).resolve().parent / "data"
USER = "sftpuser"
PASSWORD = "pa ss,w0rd'\"=%#;"  # awkward characters on purpose
CLI_TIMEOUT = 60


# -- installing and running -------------------------------------------------------------------


def pip_install(package: Path, target: Path, scratch: Path) -> Path:
    """Install ``package`` (a source directory) with pip into ``target``; return ``target``."""
    source = scratch / package.name
    shutil.copytree(
        package, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        *build_isolation_args(),
        "--target",
        str(target),
        str(source),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (
        f"pip install {package.name} failed ({result.returncode}):\n{result.stdout}\n"
        f"{result.stderr}"
    )
    return target


def nsbackup(
    *args: str,
    pythonpath: Sequence[Path] = (),
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``nsbackup`` console script with only ``pythonpath`` added."""
    script = Path(sys.executable).parent / "nsbackup"
    assert script.is_file(), f"{script} is missing: run `pip install -e '.[test]'` (scripts/setup)"
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", DISABLE_ENV)}
    if pythonpath:
        environ["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    environ.update(env or {})
    return subprocess.run(
        [str(script), *args],
        cwd=cwd,
        env=environ,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory outside the repository."""
    return tmp_path_factory.mktemp("thirdparty")


@pytest.fixture(scope="module")
def sftp_target(scratch: Path) -> Path:
    return pip_install(DATA / "nsbackup-sftp", scratch / "site-sftp", scratch)


@pytest.fixture(scope="module")
def broken_target(scratch: Path) -> Path:
    return pip_install(DATA / "nsbackup-broken", scratch / "site-broken", scratch)


@pytest.fixture(scope="module")
def sftp_host(sftp_target: Path) -> Iterator[PluginHost]:
    """All plugins loaded in this process through entry points, the installed sftp one too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(sftp_target))
        try:
            host = load_plugins(disabled=set())
            assert not host.failures, [str(f) for f in host.failures]
            module = sys.modules["nsbackup_sftp"]
            assert Path(module.__file__ or "").is_relative_to(sftp_target)
            yield host
        finally:
            sys.modules.pop("nsbackup_sftp", None)


def sftp_request(url: str, **parameters: str) -> DestinationRequest:
    params = {"sftp_user": USER, "sftp_pass": PASSWORD, **parameters}
    return DestinationRequest.from_payload({"provider": "sftp", "url": url, "parameters": params})


# -- discovery through the CLI ----------------------------------------------------------------


def test_providers_lists_the_installed_sftp_provider_and_the_builtins(
    sftp_target: Path, scratch: Path
) -> None:
    providers = json_of(nsbackup("--json", "providers", pythonpath=[sftp_target], cwd=scratch))
    by_name = {p["name"]: p for p in providers}
    assert set(by_name) == BUILTIN_PROVIDERS | {"sftp"}
    sftp = by_name["sftp"]
    assert sftp["plugin"] == "sftp"
    assert sftp["url_form"] == "sftp:<host>[:<port>]/<path>"
    params = {p["name"]: p for p in sftp["parameters"]}
    assert list(params) == ["sftp_user", "sftp_pass", "sftp_port"]
    assert params["sftp_user"]["required"] and not params["sftp_user"]["secret"]
    assert params["sftp_pass"]["secret"] and params["sftp_pass"]["obscured"]
    assert not params["sftp_port"]["required"] and not params["sftp_port"]["secret"]


def test_plugins_shows_the_sftp_plugin_with_its_distribution(
    sftp_target: Path, scratch: Path
) -> None:
    data = json_of(nsbackup("--json", "plugins", pythonpath=[sftp_target], cwd=scratch))
    assert data["failures"] == []
    plugins = {p["name"]: p for p in data["plugins"]}
    assert set(plugins) == BUILTIN_PLUGINS | {"sftp"}
    assert plugins["sftp"]["distribution"] == "nsbackup-sftp"
    assert plugins["sftp"]["version"] == "1.0.0"
    assert plugins["sftp"]["hooks"] == ["nsbackup_register_providers"]
    assert plugins["sftp"]["registered"] == {"provider": ["sftp"]}
    assert {plugins[name]["distribution"] for name in BUILTIN_PLUGINS} == {"nsbackup"}


def test_broken_plugins_are_reported_and_everything_else_still_loads(
    sftp_target: Path, broken_target: Path, scratch: Path
) -> None:
    path = [sftp_target, broken_target]
    result = nsbackup("--json", "plugins", pythonpath=path, cwd=scratch)
    data = json_of(result)  # exit status 0 despite the failures
    failures = {f["name"]: f for f in data["failures"]}
    assert set(failures) == {"broken_import", "broken_register"}
    for name, failure in failures.items():
        assert failure["distribution"] == "nsbackup-broken"
        assert failure["version"] == "0.0.1"
        prefix = f"plugin {name} (nsbackup-broken 0.0.1) failed to load: "
        assert failure["message"] == prefix + failure["error"]
        assert prefix in result.stderr  # and the operator is told on stderr
    assert failures["broken_import"]["error"] == (
        "ImportError: nsbackup_broken needs the module 'no_such_dependency'"
    )
    assert failures["broken_register"]["error"].startswith(
        "provider 'half' does not implement Provider"
    )
    assert {p["name"] for p in data["plugins"]} == BUILTIN_PLUGINS | {"sftp"}

    providers = json_of(nsbackup("--json", "providers", pythonpath=path, cwd=scratch))
    assert {p["name"] for p in providers} == BUILTIN_PROVIDERS | {"sftp"}

    # The text form says FAILED for each, and the exit status is still 0.
    text = nsbackup("plugins", pythonpath=path, cwd=scratch)
    assert text.returncode == 0, text.stderr
    assert "FAILED plugin broken_import (nsbackup-broken 0.0.1) failed to load: " in text.stdout
    assert "FAILED plugin broken_register (nsbackup-broken 0.0.1) failed to load: " in text.stdout

    # Disabling a distribution by name silences both of its plugins.
    quiet = json_of(
        nsbackup(
            "--json", "plugins", pythonpath=path, cwd=scratch, env={DISABLE_ENV: "nsbackup-broken"}
        )
    )
    assert quiet["failures"] == []


def test_disable_plugins_hides_sftp(sftp_target: Path, scratch: Path) -> None:
    env = {DISABLE_ENV: "sftp"}
    providers = json_of(
        nsbackup("--json", "providers", pythonpath=[sftp_target], cwd=scratch, env=env)
    )
    assert {p["name"] for p in providers} == BUILTIN_PROVIDERS
    data = json_of(nsbackup("--json", "plugins", pythonpath=[sftp_target], cwd=scratch, env=env))
    assert {p["name"] for p in data["plugins"]} == BUILTIN_PLUGINS
    assert data["failures"] == []


def test_render_hides_the_sftp_password_unless_asked(sftp_target: Path, scratch: Path) -> None:
    payload = json.dumps(
        {
            "provider": "sftp",
            "url": "sftp:backup.example.org:2222/restic",
            "parameters": {"sftp_user": USER, "sftp_pass": PASSWORD},
        }
    )
    hidden = nsbackup(
        "destination", "render", "--data", "-", pythonpath=[sftp_target], cwd=scratch, stdin=payload
    )
    assert hidden.returncode == 0, hidden.stderr
    assert "pass = ***" in hidden.stdout
    assert PASSWORD not in hidden.stdout + hidden.stderr
    bad = nsbackup(
        "--json",
        "destination",
        "render",
        "--data",
        "-",
        pythonpath=[sftp_target],
        cwd=scratch,
        stdin=json.dumps(
            {"provider": "sftp", "url": "sftp:h:0/x", "parameters": {"sftp_pass": PASSWORD}}
        ),
    )
    assert bad.returncode == 2
    errors = {(e["parameter"], e["error"]) for e in json.loads(bad.stdout)}
    assert errors == {("sftp_user", "required"), ("url", "pattern")}
    assert PASSWORD not in bad.stdout + bad.stderr


# -- the provider in process ------------------------------------------------------------------


def test_sftp_provider_passes_the_conformance_suite(sftp_host: PluginHost) -> None:
    check_provider(
        sftp_host.providers["sftp"],
        [
            {
                "provider": "sftp",
                "name": "",
                "url": "sftp:backup.example.org/restic",
                "parameters": {"sftp_user": USER, "sftp_pass": PASSWORD},
            },
            {
                "provider": "sftp",
                "name": "",
                "url": "sftp:10.0.0.5:2222/srv/backup",
                "parameters": {"sftp_user": USER, "sftp_pass": PASSWORD},
            },
            {
                "provider": "sftp",
                "name": "",
                "url": "sftp:backup.example.org/restic",
                "parameters": {"sftp_user": USER, "sftp_pass": PASSWORD, "sftp_port": "2200"},
            },
        ],
    )


def test_sftp_identity_is_where_not_who(sftp_host: PluginHost) -> None:
    base = prepare(sftp_host, sftp_request("sftp:Backup.example.org/restic"))
    same = [
        sftp_request("sftp:backup.example.org:22/restic/", sftp_user="other", sftp_pass="x"),
        sftp_request("sftp:backup.example.org/restic", sftp_port="22"),
    ]
    other = [
        sftp_request("sftp:backup.example.org:2222/restic"),
        sftp_request("sftp:backup.example.org/restic", sftp_port="2222"),
        sftp_request("sftp:backup.example.org/restic/node2"),
        sftp_request("sftp:backup2.example.org/restic"),
    ]
    assert {prepare(sftp_host, r).id for r in same} == {base.id}
    assert base.id not in {prepare(sftp_host, r).id for r in other}
    assert base.basepath == "restic"
    assert base.name == "SFTP backup.example.org/restic"
    assert dict(base.section, **{"pass": ""}) == {
        "type": "sftp",
        "host": "backup.example.org",
        "port": "22",
        "user": USER,
        "pass": "",
        "shell_type": "none",
    }
    assert reveal(base.section["pass"]) == PASSWORD
    assert "pass = ***" in display_conf(base)


def test_sftp_alter_keeps_the_stored_password(sftp_host: PluginHost) -> None:
    first = prepare(sftp_host, sftp_request("sftp:host.example/x", sftp_port="2200"))
    stored = StoredDestination(
        first.id,
        "sftp",
        first.url,
        first.name,
        first.public_basepath,
        ini.parse(first.rclone_conf)[first.id],
    )
    altered = prepare(
        sftp_host,
        DestinationRequest.from_payload(
            {"id": first.id, "provider": "sftp", "parameters": {"sftp_pass": ""}},
            alter=True,
        ),
        stored,
    )
    assert altered.id == first.id
    assert reveal(altered.section["pass"]) == PASSWORD
    assert altered.section["port"] == "2200"


# -- live: the rendered config against rclone serve sftp ---------------------------------------


@pytest.mark.live
def test_rendered_sftp_config_works_against_rclone_serve_sftp(
    sftp_target: Path, sftp_host: PluginHost, scratch: Path, tmp_path: Path
) -> None:
    with RcloneSftpServer(tmp_path / "served", USER, PASSWORD) as server:
        url = f"sftp:{server.host}:{server.port}/backups/node1"
        payload = {
            "provider": "sftp",
            "url": url,
            "parameters": {"sftp_user": server.user, "sftp_pass": server.password},
        }
        rendered = json_of(
            nsbackup(
                "--json",
                "destination",
                "render",
                "--show-secrets",
                "--data",
                "-",
                pythonpath=[sftp_target],
                cwd=scratch,
                stdin=json.dumps(payload),
            )
        )
        uid = rendered["id"]
        section = ini.parse(rendered["rclone_conf"])[uid]
        assert reveal(section["pass"]) == PASSWORD
        assert section["shell_type"] == "none"

        # The CLI's config, used as it is by rclone: it writes where the URL says and rclone
        # leaves the file alone (without shell_type it would write its shell guess back).
        config = tmp_path / "rclone.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(rendered["rclone_conf"])
        for args in (["mkdir", f"{uid}:backups/node1"], ["touch", f"{uid}:backups/node1/f"]):
            done = rclone.run([*args, *rclone.QUICK_FLAGS], config=config, timeout=60)
            assert done.returncode == 0, done.stderr
        assert (server.root / "backups" / "node1" / "f").is_file()
        assert config.read_text(encoding="utf-8") == rendered["rclone_conf"]

        # In process: the same destination, probed through the real rclone.
        prepared = prepare(sftp_host, DestinationRequest.from_payload(payload))
        assert prepared.id == uid
        result = probe(prepared)
        assert result.ok, result
        assert sorted(p.name for p in (server.root / "backups" / "node1").iterdir()) == ["f"]

        wrong = prepare(sftp_host, sftp_request(url, sftp_pass="wrong-password"))
        result = probe(wrong)
        assert (result.ok, result.reason, result.step) == (False, "no_read_permission", "list")
        assert "unable to authenticate" in result.detail
        server.assert_running()

    # Nothing listens on a fresh free port any more: not accessible, and said within seconds.
    gone = prepare(sftp_host, sftp_request(f"sftp:127.0.0.1:{free_port()}/backups"))
    result = probe(gone, step_timeout=20)
    assert (result.ok, result.reason) == (False, "backup_repository_not_accessible"), result
