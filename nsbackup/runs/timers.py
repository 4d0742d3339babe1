"""systemd timers of the node's schedules (NS8's ``schedule-backup``, ref §6.1).

One transient timer per enabled schedule with a calendar, as NS8 creates them, plus
``Persistent=true`` so that a run missed while the node was down happens at boot (ref §14.29)::

    systemd-run --unit backup<id> --on-calendar <schedule> --timer-property=Persistent=true \\
        --description "Backup <id> schedule" -- <the node's run command>

The run command is :func:`nsbackup.runs.command.run_argv`: ``runagent -m node nsbackup backup
run <id>`` on NS8; elsewhere this Python with the node's settings in an ``EnvironmentFile=``
(``<state dir>/timers.env``, mode 0600) so that no credential reaches a command line or a unit
file.

Transient timers need systemd as PID 1. Where it is not (containers, this kind of test
machine), every method raises :class:`SystemdUnavailable` (exit 5) naming ``nsbackup
scheduler``, the foreground scheduler with the same calendar semantics; nothing is run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsbackup.errors import NsbackupError, Unreachable
from nsbackup.files import write_atomic
from nsbackup.runs.command import (
    DEFAULT_JOBS,
    DEFAULT_WAIT,
    PASSED_THROUGH,
    check_run_options,
    environment_file,
    node_environment,
    on_ns8,
    run_argv,
)

if TYPE_CHECKING:
    from nsbackup.api import Cluster

log = logging.getLogger(__name__)

UNIT_PREFIX = "backup"
TIMERS = "backup[0-9]*.timer"
"""The glob of nsbackup's timers. NS8 stops ``backup*.timer``, which also matches an
administrator's own ``backup-home.timer``; a schedule id is digits only."""
SERVICES = "backup[0-9]*.service"
SYSTEMD_DIR = Path("/run/systemd/system")
PROC = Path("/proc")
TIMEOUT = 60.0
SHOWN_PROPERTIES = (
    "Id",
    "Description",
    "ActiveState",
    "TimersCalendar",
    "NextElapseUSecRealtime",
    "LastTriggerUSec",
    "Persistent",
    "Unit",
)


class SystemdUnavailable(Unreachable):
    """systemd is not PID 1 here: transient timers cannot exist; ``nsbackup scheduler`` does
    their work."""

    code = "systemd_unavailable"


def systemd_is_pid1(systemd_dir: Path = SYSTEMD_DIR, proc: Path = PROC) -> bool:
    """Whether systemd runs this machine: ``/run/systemd/system`` is a directory (what
    ``sd_booted()`` checks) **and** PID 1 is systemd (its ``comm``, or the target of its
    ``exe`` when readable), so that a container with the host's ``/run/systemd`` mounted in
    does not count."""
    if not systemd_dir.is_dir():
        return False
    return pid1_name(proc) == "systemd"


def pid1_name(proc: Path = PROC) -> str:
    """The name of PID 1 (``comm``; the basename of ``exe`` when ``comm`` is not systemd's,
    e.g. started as ``/sbin/init``), or ``""`` when unreadable."""
    name = ""
    with contextlib.suppress(OSError):
        name = (proc / "1" / "comm").read_text(encoding="utf-8", errors="replace").strip()
    if name != "systemd":
        with contextlib.suppress(OSError):
            exe = os.path.basename(os.readlink(proc / "1" / "exe"))
            if exe == "systemd":
                return exe
    return name


def require_systemd(systemd_dir: Path = SYSTEMD_DIR, proc: Path = PROC) -> None:
    """Raise :class:`SystemdUnavailable` unless :func:`systemd_is_pid1`."""
    if systemd_is_pid1(systemd_dir, proc):
        return
    pid1 = pid1_name(proc) or "unknown"
    missing = "" if systemd_dir.is_dir() else f"{systemd_dir} does not exist, "
    raise SystemdUnavailable(
        f"systemd is not PID 1 here ({missing}PID 1 is {pid1!r}): transient backup timers "
        "cannot run on this machine; run `nsbackup scheduler` instead (a foreground "
        "scheduler with systemd's calendar semantics)"
    )


def unit_name(backup_id: int) -> str:
    return f"{UNIT_PREFIX}{int(backup_id)}"


def systemd_run_argv(
    backup_id: int,
    calendar: str,
    command: Sequence[str],
    *,
    environment_file: str | None = None,
    systemd_run: str = "systemd-run",
) -> list[str]:
    """The ``systemd-run`` command creating the timer of ``backup_id`` (NS8's, plus
    ``Persistent=true`` and, off NS8, the ``EnvironmentFile=`` of the run)."""
    argv = [
        systemd_run,
        "--unit",
        unit_name(backup_id),
        "--on-calendar",
        calendar,
        "--timer-property=Persistent=true",
        "--description",
        f"Backup {int(backup_id)} schedule",
    ]
    if environment_file:
        argv.append(f"--property=EnvironmentFile={environment_file}")
    return [*argv, "--", *command]


def parse_units(text: str) -> list[str]:
    """Unit names from ``systemctl list-units --plain --no-legend`` (first column)."""
    names = []
    for line in text.splitlines():
        words = line.split()
        if words and re.fullmatch(r"backup\d+\.(timer|service)", words[0]):
            names.append(words[0])
    return names


def parse_show(text: str) -> list[dict[str, str]]:
    """The units of ``systemctl show`` output: blocks of ``Key=value`` lines separated by
    blank lines."""
    units: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if current:
                units.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    return units


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class TimerService:
    """``cluster.timers``: this node's transient systemd timers, one per enabled schedule.

    Every method first checks that systemd is PID 1 (:func:`require_systemd`) and raises
    :class:`SystemdUnavailable` (exit 5) otherwise, before anything is read or run."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @property
    def available(self) -> bool:
        """Whether systemd is PID 1 here (timers can be used)."""
        return systemd_is_pid1()

    def _systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        binary = shutil.which("systemctl")
        if binary is None:
            raise SystemdUnavailable("systemctl not found; run `nsbackup scheduler` instead")
        result = subprocess.run(
            [binary, *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise NsbackupError(
                f"systemctl {' '.join(args)} failed (exit {result.returncode}): "
                f"{_tail(result.stderr)}"
            )
        return result

    def _loaded(self, pattern: str) -> list[str]:
        result = self._systemctl(
            "list-units", "--all", "--plain", "--no-legend", "--no-pager", pattern
        )
        return parse_units(result.stdout)

    # -- stop -----------------------------------------------------------------------------
    def stop(self) -> dict[str, Any]:
        """``systemctl stop backup<N>.timer`` for every timer and ``reset-failed`` of their
        services. A backup already running goes on. Returns ``{"stopped": [unit, ...]}``."""
        require_systemd()
        return self._stop()

    def _stop(self) -> dict[str, Any]:
        timers = self._loaded(TIMERS)
        if timers:
            self._systemctl("stop", *timers)
        self._systemctl("reset-failed", SERVICES, check=False)  # nothing failed: not an error
        for unit in timers:
            log.info("timer %s stopped", unit)
        return {"stopped": timers}

    # -- start ----------------------------------------------------------------------------
    def start(self, *, jobs: int = DEFAULT_JOBS, wait: float = DEFAULT_WAIT) -> dict[str, Any]:
        """Stop every timer, then create one per enabled schedule with a non-empty calendar
        (the schedules read from the local Redis, not the leader: a node that boots while
        the leader is away still gets its timers), and purge the metrics of the others
        (``cluster.runs.purge_metrics``). ``jobs`` and ``wait`` go to each run.

        Returns ``{"stopped", "started": [{"id","unit","schedule"}], "skipped": [{"id",
        "reason"}], "failed": [{"id","unit","schedule","exit_code","message"}],
        "enabled": [id, ...], "exit_code"}``; ``exit_code`` is 0, 3 when some timers failed
        and others were created, 1 when every one failed. Each failure is also logged."""
        require_systemd()
        check_run_options(jobs, wait)
        systemd_run = shutil.which("systemd-run")
        if systemd_run is None:
            raise SystemdUnavailable("systemd-run not found; run `nsbackup scheduler` instead")
        stopped = self._stop()["stopped"]
        state = self.cluster.store.load()
        ns8 = on_ns8()
        env_file = None if ns8 else self._write_environment()
        started: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for bid, schedule in sorted(state.schedules.items()):
            if not schedule.enabled:
                skipped.append({"id": bid, "reason": "disabled"})
                continue
            if not schedule.schedule.strip():
                skipped.append({"id": bid, "reason": "no_schedule"})
                continue
            command = run_argv(bid, ns8=ns8, jobs=jobs, wait=wait)
            argv = systemd_run_argv(
                bid, schedule.schedule, command, environment_file=env_file, systemd_run=systemd_run
            )
            entry = {"id": bid, "unit": unit_name(bid), "schedule": schedule.schedule}
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode == 0:
                started.append(entry)
                log.info("timer %s.timer created: %s", entry["unit"], schedule.schedule)
                continue
            message = _tail(result.stderr) or f"systemd-run exited {result.returncode}"
            if self._active(f"{entry['unit']}.service"):
                # ref §14.29: systemd-run cannot create the timer while the service of the
                # same name runs.
                message += (
                    f" ({entry['unit']}.service is still running a backup: run start-timers "
                    "again when it ends)"
                )
            failed.append({**entry, "exit_code": result.returncode, "message": message})
            log.warning("timer %s.timer NOT created: %s", entry["unit"], message)
        enabled = self.cluster.runs.purge_metrics(state)
        exit_code = 0 if not failed else (3 if started else 1)
        return {
            "stopped": stopped,
            "started": started,
            "skipped": skipped,
            "failed": failed,
            "enabled": enabled,
            "exit_code": exit_code,
        }

    def _active(self, unit: str) -> bool:
        try:
            return self._systemctl("is-active", unit, check=False).stdout.strip() == "active"
        except (OSError, subprocess.SubprocessError):
            return False

    def _write_environment(self) -> str:
        """The node's settings for the runs, in ``<state dir>/timers.env`` (0600, atomic)."""
        env = node_environment(self.cluster)
        env.update({k: v for k, v in os.environ.items() if k in PASSED_THROUGH})
        text = environment_file(env)
        directory = Path(self.cluster.settings.state_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / "timers.env"
        write_atomic(path, text)
        return str(path)

    # -- list -----------------------------------------------------------------------------
    def list(self) -> dict[str, Any]:
        """The timers (``systemctl show`` of each ``backup<N>.timer``): ``{"timers":
        [{"id", "unit", "description", "active", "calendar", "next_elapse",
        "last_trigger", "persistent"}]}`` with systemd's own texts."""
        require_systemd()
        timers = self._loaded(TIMERS)
        if not timers:
            return {"timers": []}
        shown = self._systemctl("show", f"--property={','.join(SHOWN_PROPERTIES)}", *timers)
        out = []
        for unit in parse_show(shown.stdout):
            name = unit.get("Id", "")
            match = re.fullmatch(r"backup(\d+)\.timer", name)
            if match is None:
                continue
            calendar = re.search(r"OnCalendar=(.*?)\s*;", unit.get("TimersCalendar", ""))
            out.append(
                {
                    "id": int(match.group(1)),
                    "unit": name,
                    "description": unit.get("Description", ""),
                    "active": unit.get("ActiveState", ""),
                    "calendar": calendar.group(1) if calendar else "",
                    "next_elapse": unit.get("NextElapseUSecRealtime", ""),
                    "last_trigger": unit.get("LastTriggerUSec", ""),
                    "persistent": unit.get("Persistent", "") == "yes",
                }
            )
        return {"timers": sorted(out, key=lambda t: t["id"])}
