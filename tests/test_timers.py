"""systemd timers (``nsbackup schedule start-timers|stop-timers|list-timers``).

systemd is not PID 1 on the test machine (nor in containers), so the commands are tested for
what they must do here: exit 5 naming ``nsbackup scheduler`` and run nothing. What they would
run is tested as pure functions (the ``systemd-run`` command, the run command, the
``EnvironmentFile=`` checked by a real POSIX shell, whose double-quote rules systemd follows);
creating real timers needs a machine booted with systemd and is not tested here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nsbackup import Cluster, Settings
from nsbackup.errors import ValidationFailed
from nsbackup.runs.command import (
    child_environment,
    environment_file,
    node_environment,
    run_argv,
)
from nsbackup.runs.timers import (
    SystemdUnavailable,
    parse_show,
    parse_units,
    pid1_name,
    require_systemd,
    systemd_is_pid1,
    systemd_run_argv,
)

NSBACKUP = str(Path(sys.executable).parent / "nsbackup")


def spy_path(tmp_path: Path) -> tuple[str, Path]:
    """A ``PATH`` whose ``systemd-run``, ``systemctl`` and ``runagent`` only record that they
    were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "called"
    for name in ("systemd-run", "systemctl", "runagent"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {marker}\n')
        tool.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}", marker


@pytest.mark.parametrize("command", ["start-timers", "stop-timers", "list-timers"])
def test_without_systemd_as_pid1_each_command_exits_5_naming_the_scheduler(
    command: str, tmp_path: Path
) -> None:
    assert not systemd_is_pid1(), "this test expects a machine where systemd is not PID 1"
    path, marker = spy_path(tmp_path)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "backup7.prom").write_text("node_backup_status 1\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NSBACKUP_", "REDIS_"))},
        "PATH": path,
        # Nothing listens there: the command must stop before reading Redis.
        "NSBACKUP_REDIS_URL": "redis://127.0.0.1:9/0",
        "NSBACKUP_METRICS_DIR": str(metrics),
        "NSBACKUP_STATE_DIR": str(tmp_path / "state"),
        "NODE_ID": "1",
    }
    for json_flag in ([], ["--json"]):
        proc = subprocess.run(
            [NSBACKUP, *json_flag, "schedule", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 5, proc.stderr
        assert "`nsbackup scheduler`" in proc.stderr
        assert "systemd is not PID 1" in proc.stderr
        if json_flag:
            assert json.loads(proc.stdout)["error"] == "systemd_unavailable"
    assert not marker.exists(), marker.read_text()  # no systemd-run, systemctl or runagent
    assert (metrics / "backup7.prom").exists()  # nothing purged
    assert not (tmp_path / "state").exists()  # no environment file written


def test_the_api_raises_systemd_unavailable_before_anything(tmp_path: Path) -> None:
    cluster = Cluster.from_url("redis://127.0.0.1:9/0", node_id="1")
    assert cluster.timers.available is False
    for call in (cluster.timers.start, cluster.timers.stop, cluster.timers.list):
        with pytest.raises(SystemdUnavailable) as caught:
            call()
        assert caught.value.exit_code == 5
        assert "nsbackup scheduler" in str(caught.value)


def fake_root(tmp_path: Path, *, systemd_dir: bool, comm: str | None) -> tuple[Path, Path]:
    run = tmp_path / "run" / "systemd" / "system"
    if systemd_dir:
        run.mkdir(parents=True)
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    if comm is not None:
        (proc / "1" / "comm").write_text(comm + "\n")
    return run, proc


@pytest.mark.parametrize(
    ("systemd_dir", "comm", "expected"),
    [
        (True, "systemd", True),  # a host booted with systemd
        (False, "bash", False),  # a container
        (False, "systemd", False),  # systemd's files missing: sd_booted() would say no
        (True, "bash", False),  # a container with the host's /run/systemd mounted in
        (True, "tini", False),
        (True, None, False),  # /proc/1 unreadable
    ],
)
def test_pid1_detection(
    tmp_path: Path, systemd_dir: bool, comm: str | None, expected: bool
) -> None:
    run, proc = fake_root(tmp_path, systemd_dir=systemd_dir, comm=comm)
    assert systemd_is_pid1(run, proc) is expected
    if expected:
        require_systemd(run, proc)
    else:
        with pytest.raises(SystemdUnavailable, match="nsbackup scheduler"):
            require_systemd(run, proc)


def test_pid1_detection_on_this_machine() -> None:
    comm = Path("/proc/1/comm").read_text().strip()
    expected = Path("/run/systemd/system").is_dir() and comm == "systemd"
    assert systemd_is_pid1() is expected
    assert pid1_name() == comm or pid1_name() == "systemd"
    if not expected:
        with pytest.raises(SystemdUnavailable) as caught:
            require_systemd()
        assert repr(comm) in str(caught.value)


def test_the_systemd_run_command() -> None:
    ns8 = run_argv(12, ns8=True)
    assert ns8 == ["runagent", "-m", "node", "nsbackup", "backup", "run", "12"]
    assert systemd_run_argv(12, "*-*-* 01:00:00", ns8, systemd_run="/usr/bin/systemd-run") == [
        "/usr/bin/systemd-run",
        "--unit",
        "backup12",
        "--on-calendar",
        "*-*-* 01:00:00",
        "--timer-property=Persistent=true",
        "--description",
        "Backup 12 schedule",
        "--",
        "runagent",
        "-m",
        "node",
        "nsbackup",
        "backup",
        "run",
        "12",
    ]
    local = run_argv(3, ns8=False, jobs=2, wait=60, python="/opt/venv/bin/python")
    assert local == [
        "/opt/venv/bin/python",
        *("-m", "nsbackup", "backup", "run", "3", "--jobs", "2", "--wait", "60"),
    ]
    argv = systemd_run_argv(3, "Mon *-*-* 02:00:00", local, environment_file="/var/lib/x/t.env")
    assert argv[:9] == [
        "systemd-run",
        "--unit",
        "backup3",
        "--on-calendar",
        "Mon *-*-* 02:00:00",
        "--timer-property=Persistent=true",
        "--description",
        "Backup 3 schedule",
        "--property=EnvironmentFile=/var/lib/x/t.env",
    ]
    assert argv[9:] == ["--", *local]
    assert run_argv(3, ns8=False)[0] == sys.executable
    with pytest.raises(ValidationFailed):
        run_argv(3, ns8=False, jobs=0)
    with pytest.raises(ValidationFailed):
        run_argv(3, ns8=False, wait=-1)


def test_the_environment_file_reads_back_in_a_posix_shell(tmp_path: Path) -> None:
    values = {
        "REDIS_PASSWORD": "p$a`s\\s\"w'o rd $(id) ${HOME} %s",
        "NSBACKUP_REDIS_URL": "redis://127.0.0.1:6379/0",
        "NSBACKUP_STATE_DIR": "/var/lib/ns backup",
    }
    path = tmp_path / "timers.env"
    path.write_text(environment_file(values))
    for key, value in values.items():
        shown = subprocess.run(
            ["sh", "-c", f'. "$1" && printf %s "${key}"', "sh", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={"PATH": os.environ["PATH"]},
        ).stdout
        assert shown == value
    for bad in ("a\nb", "a\rb", "a\0b"):
        with pytest.raises(ValidationFailed):
            environment_file({"REDIS_PASSWORD": bad})


def test_the_node_environment_comes_from_the_clusters_clients() -> None:
    settings = Settings(
        gateway_url="http://127.0.0.2:4694",
        state_dir="/srv/state",
        metrics_dir="/srv/metrics",
        runner="local",
        modules_dir="/srv/modules",
        repo_dir="/srv/repo",
    )
    cluster = Cluster.from_url(
        "redis://127.0.0.1:6380/0",
        leader_url="redis://cluster:leader%40pw@10.5.4.1:6379/0",
        username="node/1",
        password="node-pw",
        node_id="1",
        settings=settings,
    )
    env = node_environment(cluster)
    assert env == {
        "NSBACKUP_REDIS_URL": "redis://127.0.0.1:6380/0",
        "REDIS_USER": "node/1",
        "REDIS_PASSWORD": "node-pw",
        # other credentials for the leader: in its URL (an environment variable, no argv)
        "NSBACKUP_REDIS_LEADER_URL": "redis://cluster:leader%40pw@10.5.4.1:6379/0",
        "NODE_ID": "1",
        "NSBACKUP_REPO_DIR": "/srv/repo",
        "NSBACKUP_GATEWAY_URL": "http://127.0.0.2:4694",
        "NSBACKUP_STATE_DIR": "/srv/state",
        "NSBACKUP_METRICS_DIR": "/srv/metrics",
        "NSBACKUP_RUNNER": "local",
        "NSBACKUP_MODULES_DIR": "/srv/modules",
    }
    # What a run then reads is what the scheduler's Cluster had.
    assert Settings.from_env(env) == Settings(
        redis_url="redis://127.0.0.1:6380/0",
        leader_url="redis://cluster:leader%40pw@10.5.4.1:6379/0",
        username="node/1",
        password="node-pw",
        node_id="1",
        repo_dir="/srv/repo",
        gateway_url="http://127.0.0.2:4694",
        state_dir="/srv/state",
        metrics_dir="/srv/metrics",
        runner="local",
        modules_dir="/srv/modules",
    )
    parent = {"PATH": "/bin", "REDIS_ADDRESS": "10.0.0.1:6379", "MODULE_ID": "x", "TZ": "UTC"}
    child = child_environment(env, parent)
    assert child["PATH"] == "/bin" and child["TZ"] == "UTC"
    assert "REDIS_ADDRESS" not in child and "MODULE_ID" not in child


def test_parsing_systemctl_output() -> None:
    units = parse_units(
        "backup1.timer   loaded active waiting Backup 1 schedule\n"
        "backup12.timer  loaded active waiting Backup 12 schedule\n"
        "backup-home.timer loaded active waiting someone else's\n"
    )
    assert units == ["backup1.timer", "backup12.timer"]
    shown = parse_show(
        "Id=backup1.timer\nDescription=Backup 1 schedule\nActiveState=active\n"
        "TimersCalendar={ OnCalendar=*-*-* 01:00:00 ; next_elapse=Tue 2024-01-02 01:00:00 UTC }\n"
        "\n"
        "Id=backup12.timer\nPersistent=yes\n"
    )
    assert shown == [
        {
            "Id": "backup1.timer",
            "Description": "Backup 1 schedule",
            "ActiveState": "active",
            "TimersCalendar": (
                "{ OnCalendar=*-*-* 01:00:00 ; next_elapse=Tue 2024-01-02 01:00:00 UTC }"
            ),
        },
        {"Id": "backup12.timer", "Persistent": "yes"},
    ]
