"""How this node starts ``nsbackup backup run <id>`` in another process: the systemd timers and
the scheduler share it.

- On NS8 (``runagent`` on ``PATH``): ``runagent -m node nsbackup backup run <id>``, as NS8's
  timers run ``run-backup`` (ref §5.1): runagent gives the command the node agent's
  environment (its Redis user and password, ``NODE_ID``, ``REDIS_ADDRESS``).
- Elsewhere: this Python (``sys.executable -m nsbackup backup run <id>``) with the node's
  settings in the environment (:func:`node_environment`): the Redis the caller's Cluster reads
  and writes, its user and password, and the node's paths. Credentials never reach a command
  line.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nsbackup.errors import ValidationFailed

if TYPE_CHECKING:
    from nsbackup.api import Cluster

DEFAULT_JOBS = 1
DEFAULT_WAIT = 3600.0

SETTINGS_VARIABLES = (
    "NSBACKUP_REDIS_URL",
    "NSBACKUP_REDIS_LEADER_URL",
    "REDIS_ADDRESS",
    "REDIS_USER",
    "REDIS_PASSWORD",
    "NODE_ID",
    "NSBACKUP_REPO_DIR",
    "NSBACKUP_GATEWAY_URL",
    "NSBACKUP_STATE_DIR",
    "NSBACKUP_METRICS_DIR",
    "NSBACKUP_RUNNER",
    "NSBACKUP_MODULES_DIR",
    "MODULE_ID",
    "NSBACKUP_MODULE_DIR",
)
"""What :class:`nsbackup.Settings` reads: replaced as a whole by :func:`node_environment`."""

PASSED_THROUGH = ("NSBACKUP_RESTIC", "NSBACKUP_DISABLE_PLUGINS")
"""Other variables a run honours, kept from the caller's environment."""


def check_run_options(jobs: Any, wait: Any) -> None:
    """``jobs`` an integer >= 1 and ``wait`` seconds >= 0, as ``backup run`` takes them."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValidationFailed.one("jobs", jobs, "minimum", "jobs must be an integer >= 1")
    check_seconds("wait", wait)


def check_seconds(name: str, value: Any) -> None:
    """``value`` a finite number of seconds, 0 or more: a NaN wait never ends (its deadline
    compares false with every time), and NaN or infinity cannot be echoed in JSON."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationFailed.one(name, None, "type", f"{name} must be a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise ValidationFailed.one(
            name,
            value if math.isfinite(value) else str(value),
            "minimum",
            f"{name} must be a finite number of seconds, 0 or more",
        )


def on_ns8() -> bool:
    """Whether NS8's ``runagent`` is here (then the node's runs go through it)."""
    return shutil.which("runagent") is not None


def run_argv(
    backup_id: int,
    *,
    ns8: bool,
    jobs: int = DEFAULT_JOBS,
    wait: float = DEFAULT_WAIT,
    python: str | None = None,
) -> list[str]:
    """The command line of this node's run of ``backup_id`` (no credentials in it)."""
    check_run_options(jobs, wait)
    if ns8:
        argv = ["runagent", "-m", "node", "nsbackup"]
    else:
        argv = [python or sys.executable, "-m", "nsbackup"]
    argv += ["backup", "run", str(int(backup_id))]
    if jobs != DEFAULT_JOBS:
        argv += ["--jobs", str(jobs)]
    if wait != DEFAULT_WAIT:
        argv += ["--wait", f"{wait:g}"]
    return argv


def client_url(client: Any, *, credentials: bool = False) -> str:
    """The URL of a redis-py client's server (``unix://`` or ``redis[s]://``), with its user
    and password only when ``credentials`` is true."""
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0) or 0
    auth = ""
    if credentials and (kwargs.get("username") or kwargs.get("password")):
        user = quote(str(kwargs.get("username") or ""), safe="")
        password = quote(str(kwargs.get("password") or ""), safe="")
        auth = f"{user}:{password}@"
    if kwargs.get("path"):
        return f"unix://{auth}{kwargs['path']}?db={db}"
    ssl = "SSL" in getattr(client.connection_pool.connection_class, "__name__", "")
    host = str(kwargs.get("host") or "127.0.0.1")
    if ":" in host:
        host = f"[{host}]"
    return f"{'rediss' if ssl else 'redis'}://{auth}{host}:{kwargs.get('port') or 6379}/{db}"


def _credentials(client: Any) -> tuple[str, str]:
    kwargs = client.connection_pool.connection_kwargs
    return str(kwargs.get("username") or ""), str(kwargs.get("password") or "")


def node_environment(cluster: Cluster) -> dict[str, str]:
    """The settings a run of this node needs, as the variables :class:`nsbackup.Settings`
    reads: the Redis servers and user of ``cluster``'s clients, the node id and the node's
    paths (gateway, state, metrics, runner, modules)."""
    store = cluster.store
    user, password = _credentials(store.reader)
    env = {"NSBACKUP_REDIS_URL": client_url(store.reader)}
    if user:
        env["REDIS_USER"] = user
    if password:
        env["REDIS_PASSWORD"] = password
    if store.writer is not store.reader:
        # A leader reached with other credentials carries them in its URL.
        other = _credentials(store.writer) != (user, password)
        env["NSBACKUP_REDIS_LEADER_URL"] = client_url(store.writer, credentials=other)
    settings = cluster.settings
    if cluster.node_id:
        env["NODE_ID"] = str(cluster.node_id)
    env["NSBACKUP_REPO_DIR"] = str(settings.repo_dir)
    env["NSBACKUP_GATEWAY_URL"] = str(settings.gateway_url)
    env["NSBACKUP_STATE_DIR"] = str(settings.state_dir)
    env["NSBACKUP_METRICS_DIR"] = str(settings.metrics_dir)
    if settings.runner:
        env["NSBACKUP_RUNNER"] = str(settings.runner)
    if settings.modules_dir:
        env["NSBACKUP_MODULES_DIR"] = str(settings.modules_dir)
    return env


def child_environment(node_env: Mapping[str, str], parent: Mapping[str, str]) -> dict[str, str]:
    """``parent`` (e.g. ``os.environ``) without any variable of :data:`SETTINGS_VARIABLES`,
    plus ``node_env``: what a run started by the scheduler sees."""
    env = {k: v for k, v in parent.items() if k not in SETTINGS_VARIABLES}
    env.update(node_env)
    return env


def environment_file(env: Mapping[str, str]) -> str:
    """``env`` as a systemd ``EnvironmentFile=`` (``KEY="value"`` lines, escaped as in POSIX
    double quotes: backslash before ``\\ " ` $``). CR, LF and NUL are refused."""
    lines = ["# written by nsbackup schedule start-timers: the settings of the node's runs"]
    for key, value in sorted(env.items()):
        if not key.replace("_", "A").isalnum() or key[0].isdigit():
            raise ValueError(f"invalid variable name {key!r}")
        if any(c in value for c in "\r\n\0"):
            raise ValidationFailed.one(
                key, None, "pattern", f"{key} contains a line break or NUL: it cannot be written"
            )
        escaped = "".join("\\" + c if c in '\\"`$' else c for c in value)
        lines.append(f'{key}="{escaped}"')
    return "\n".join(lines) + "\n"
