"""``gateway status``: what the running gateway of a state directory is doing.

``gateway serve`` keeps ``<state-dir>/status.json`` (mode 0600, written atomically whenever
something in it changes, removed at a clean stop): its pid, generation, served and dropped
destinations, children, Redis link and counters. :func:`read_status` adds live figures from
the admin sockets (HAProxy's connections in flight and workers, whether rclone answers) and
says whether that gateway still runs: the pid must be alive and be the same process (its start
time is recorded beside it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nsbackup.errors import Unreachable, ValidationFailed
from nsbackup.files import write_atomic
from nsbackup.gateway.rc import RcError, haproxy_command, rc_call
from nsbackup.gateway.render import FILE_MODE

STATUS_FILE = "status.json"
STATUS_VERSION = 1


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or
    ``None`` when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = text[text.rindex(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


class StatusFile:
    """Writes the status document only when its content changed (``updated`` says when)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: str | None = None

    def write(self, status: dict[str, Any]) -> bool:
        text = json.dumps(status, sort_keys=True)
        if text == self._last:
            return False
        self._last = text
        document = {**status, "updated": time.time()}
        write_atomic(self.path, json.dumps(document, indent=2, sort_keys=True) + "\n", FILE_MODE)
        return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._last = None


def read_status(state_dir: Path) -> dict[str, Any]:
    """The status of the gateway of ``state_dir`` with live figures under ``"live"``;
    :class:`~nsbackup.errors.Unreachable` when none runs (no status file, or its process is
    gone)."""
    if state_dir.exists() and not state_dir.is_dir():
        raise ValidationFailed.one(
            "state_dir", str(state_dir), "invalid_path", f"{state_dir} is not a directory"
        )
    path = state_dir / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Unreachable(
            f"no gateway is running for {state_dir} (no {STATUS_FILE}: start it with "
            "nsbackup gateway serve --state-dir)"
        ) from None
    except (OSError, ValueError) as exc:
        raise Unreachable(f"the gateway status {path} cannot be read: {exc}") from None
    if not isinstance(status, dict) or status.get("version") != STATUS_VERSION:
        raise Unreachable(f"the gateway status {path} is not one this version writes")
    pid = status.get("pid")
    if not isinstance(pid, int) or process_start(pid) != status.get("pid_start"):
        raise Unreachable(
            f"no gateway is running for {state_dir}: the one that wrote {STATUS_FILE} "
            f"(pid {pid}) has exited"
        )
    status["live"] = _live(status)
    return status


def _live(status: dict[str, Any]) -> dict[str, Any]:
    sockets = status.get("sockets", {})
    haproxy: dict[str, Any] = {"up": False, "connections": None, "workers": [], "old_workers": 0}
    master = status.get("haproxy", {}).get("master_pid")
    if isinstance(master, int) and process_start(master) is not None:
        try:
            info = _fields(haproxy_command(sockets.get("admin", ""), "show info", 2))
            haproxy["connections"] = int(info.get("CurrConns", "0"))
            haproxy["up"] = True
        except (OSError, ValueError):
            pass
        try:
            workers, old = _workers(haproxy_command(sockets.get("master", ""), "show proc", 2))
            haproxy["workers"], haproxy["old_workers"] = workers, old
        except OSError:
            pass
    rclone: dict[str, Any] = {"up": False}
    try:
        rc_call(sockets.get("rc", ""), "core/version", timeout=2)
        rclone["up"] = True
    except (OSError, RcError):
        pass
    healthy = haproxy["up"] and rclone["up"] and status.get("redis", {}).get("connected")
    return {
        "running": True,
        "haproxy": haproxy,
        "rclone": rclone,
        "healthy": bool(healthy) and not status.get("dropped"),
    }


def _fields(answer: str) -> dict[str, str]:
    result = {}
    for line in answer.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            result[key.strip()] = value.strip()
    if "Pid" not in result:
        raise ValueError("not an answer to show info")
    return result


def _workers(answer: str) -> tuple[list[int], int]:
    """``show proc`` of the master CLI: the current workers' pids, how many old ones."""
    current, _, old = answer.partition("# old workers")
    workers = [
        int(words[0])
        for words in (line.split() for line in current.splitlines())
        if len(words) > 1 and words[0].isdigit() and words[1] == "worker"
    ]
    old_count = sum(
        1
        for line in old.split("# programs", 1)[0].splitlines()
        if line.split() and line.split()[0].isdigit()
    )
    return workers, old_count
