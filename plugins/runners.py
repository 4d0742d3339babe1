"""Built-in module runners: how the node reaches a module's context.

- ``local``: modules are directories on this machine, ``<modules dir>/<module id>/`` with
  NS8's shape (``state/``, ``state/agent.env`` holding the module's ``REDIS_USER`` and
  ``REDIS_PASSWORD``, mode 0600; ``etc/state-include.conf``, ``etc/state-exclude.conf``). The
  module side runs as a child process with the module's credentials and nothing of the node's.
- ``ns8``: NS8's own ``runagent -m <module id> nsbackup ...`` on the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from nsbackup import hookimpl
from nsbackup.errors import NsbackupError, PermissionDenied, ValidationFailed
from nsbackup.plugins import ModuleRunner, RunnerResult, RunnerSettings
from nsbackup.rclone import clean_env
from nsbackup.runs import children

STDERR_KEPT = 16 * 1024
_MODULE_ID = "[A-Za-z0-9][A-Za-z0-9_-]{0,63}"


def _check_id(module_id: str) -> None:
    import re

    if not re.fullmatch(_MODULE_ID, module_id):
        raise ValidationFailed.one("module", module_id, "pattern", "invalid module id")


def read_agent_env(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an NS8 ``agent.env`` (quotes around the value removed). The file
    must be a regular file not readable by group or others."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise NsbackupError(f"{path} not found: the module has no credentials there") from None
    if not stat.S_ISREG(info.st_mode):
        raise PermissionDenied(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise PermissionDenied(
            f"{path} is readable by others (mode {info.st_mode & 0o777:04o}); it holds the "
            "module's password: chmod 600 it"
        )
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def stream(
    command: Sequence[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    timeout: float,
    on_line: Callable[[str], None],
) -> RunnerResult:
    """Run ``command``; stderr lines go to ``on_line`` as they arrive (the end is kept)."""
    try:
        proc = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        raise NsbackupError(f"cannot start {command[0]}: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    children.track(proc)  # a run stopped by a signal stops its module sides too
    kept: list[str] = []
    out: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    ended = threading.Event()
    overdue: list[bool] = []

    def watchdog() -> None:
        # The module side's own bounds should end it long before; this one makes sure a run
        # never waits for ever on a module side that does not end.
        if not ended.wait(timeout):
            overdue.append(True)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    threading.Thread(target=watchdog, daemon=True).start()
    size = 0
    for line in proc.stderr:
        on_line(line.rstrip("\n"))
        if line.startswith("nsbackup-progress "):
            continue
        kept.append(line)
        size += len(line)
        while size > STDERR_KEPT and len(kept) > 1:
            size -= len(kept.pop(0))
    try:
        proc.wait()
    finally:
        ended.set()
        children.untrack(proc)
    reader.join(timeout=30)
    if overdue:
        kept.append(f"nsbackup: the module side was stopped after {timeout:g} s\n")
    return RunnerResult(proc.returncode, "".join(out), "".join(kept))


class LocalRunner:
    """Modules as directories on this machine (``--modules-dir``)."""

    name = "local"

    def available(self, settings: RunnerSettings) -> bool:
        return bool(settings.modules_dir) and Path(str(settings.modules_dir)).is_dir()

    def run(
        self,
        module_id: str,
        args: Sequence[str],
        settings: RunnerSettings,
        *,
        timeout: float,
        on_line: Callable[[str], None],
    ) -> RunnerResult:
        _check_id(module_id)
        if not settings.modules_dir:
            raise NsbackupError("the local runner needs a modules directory (--modules-dir)")
        module_dir = Path(settings.modules_dir) / module_id
        if not (module_dir / "state").is_dir():
            raise NsbackupError(f"module {module_id} has no directory {module_dir}/state")
        agent = read_agent_env(module_dir / "state" / "agent.env")
        env = clean_env(settings.env)
        env.update(
            {
                "REDIS_USER": agent.get("REDIS_USER", f"module/{module_id}"),
                "REDIS_PASSWORD": agent.get("REDIS_PASSWORD", ""),
                "MODULE_ID": module_id,
                "NSBACKUP_REDIS_URL": settings.redis_url,
                "NSBACKUP_GATEWAY_URL": settings.gateway_url,
                "NSBACKUP_MODULE_DIR": str(module_dir),
            }
        )
        return stream(
            [*settings.command, *args],
            env=env,
            cwd=str(module_dir),
            timeout=timeout,
            on_line=on_line,
        )


class Ns8Runner:
    """NS8's ``runagent -m <module id>``: the module's own environment and credentials."""

    name = "ns8"

    def available(self, settings: RunnerSettings) -> bool:
        return shutil.which("runagent") is not None

    def run(
        self,
        module_id: str,
        args: Sequence[str],
        settings: RunnerSettings,
        *,
        timeout: float,
        on_line: Callable[[str], None],
    ) -> RunnerResult:
        _check_id(module_id)
        runagent = shutil.which("runagent")
        if runagent is None:
            raise NsbackupError("runagent not found: the ns8 runner works on NS8 nodes only")
        env = clean_env(settings.env)
        env["NSBACKUP_GATEWAY_URL"] = settings.gateway_url
        return stream(
            [runagent, "-m", module_id, "nsbackup", *args],
            env=env,
            cwd=None,
            timeout=timeout,
            on_line=on_line,
        )


@hookimpl
def nsbackup_register_module_runners(register: Callable[[ModuleRunner], None]) -> None:
    register(LocalRunner())
    register(Ns8Runner())
