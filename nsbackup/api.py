"""``nsbackup.Cluster``: the one way in for agent code, plugin authors' tests and the CLI.

A :class:`Cluster` holds the Redis clients the caller already has (NS8's
``agent.redis_connect()`` result works as it is), the local node id and the plugin host, and
exposes each service as an attribute. Methods take NS8's JSON payloads and return NS8's JSON
shapes (:mod:`nsbackup.results`); failures are :class:`~nsbackup.errors.NsbackupError`\\ s.

Constructing a Cluster does no I/O: clients connect, plugins load and service modules are
imported on first use. A Cluster may be shared by threads (redis-py's connection pools are
thread-safe; the services keep no per-call state).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from nsbackup.errors import ValidationFailed

if TYPE_CHECKING:
    from nsbackup.destinations import DestinationService
    from nsbackup.dr.dump import DumpService
    from nsbackup.dr.restore import RestoreService
    from nsbackup.gateway.service import GatewayService
    from nsbackup.plugins import PluginHost
    from nsbackup.results import MigrationReport, PluginsReport, ProviderInfo
    from nsbackup.runs.module import ModuleService
    from nsbackup.runs.node import RunService
    from nsbackup.runs.scheduler import Scheduler
    from nsbackup.runs.timers import TimerService
    from nsbackup.schedules import ScheduleService
    from nsbackup.store import Store

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REPO_DIR = "/var/lib/nsbackup/repo"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:4694"
DEFAULT_STATE_DIR = "/var/lib/nsbackup"
DEFAULT_METRICS_DIR = "/var/lib/nethserver/node/state/node_exporter"
DEFAULT_DUMP_PASSPHRASE_FILE = "/var/lib/nethserver/cluster/state/backup/passphrase"


def check_url(url: str) -> None:
    """Refuse a URL redis-py would not take as a Redis address (no redis-py import needed)."""
    from urllib.parse import urlsplit

    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise bad_url(hide_password(url), str(exc)) from None
    if scheme not in ("redis", "rediss", "unix"):
        raise bad_url(hide_password(url), "the scheme must be redis://, rediss:// or unix://")


def bad_url(url: str, why: str) -> ValidationFailed:
    return ValidationFailed.one("redis", url, "invalid_url", f"invalid Redis URL {url}: {why}")


def hide_password(url: str) -> str:
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where the cluster is, as the environment says: the one reading of it that both
    :meth:`Cluster.from_env` and the CLI use (CLI options override it).

    ============================  =============================================================
    variable                      meaning
    ============================  =============================================================
    ``NSBACKUP_REDIS_URL``        Redis to read (NS8: the local replica); default
                                  ``redis://<REDIS_ADDRESS>/0``, else
                                  ``redis://127.0.0.1:6379/0``
    ``REDIS_ADDRESS``             ``host:port`` (NS8 agents' variable), when no URL is set
    ``NSBACKUP_REDIS_LEADER_URL`` Redis to write (NS8: the leader); default: the same
    ``REDIS_USER``                Redis user when the URL names none (NS8 agents' variable)
    ``REDIS_PASSWORD``            its password
    ``NODE_ID``                   the local node id
    ``NSBACKUP_REPO_DIR``         the local disk served for ``cluster`` destinations
    ``NSBACKUP_GATEWAY_URL``      the node's gateway; default ``http://127.0.0.1:4694``
    ``NSBACKUP_STATE_DIR``        this node's nsbackup state (locks, restic cache); default
                                  ``/var/lib/nsbackup``
    ``NSBACKUP_METRICS_DIR``      node_exporter's textfile directory; default NS8's
                                  ``/var/lib/nethserver/node/state/node_exporter``
    ``NSBACKUP_RUNNER``           the module runner; default ``ns8`` when ``runagent`` is on
                                  ``PATH``, else ``local``
    ``NSBACKUP_MODULES_DIR``      where the ``local`` runner finds modules (``<dir>/<id>/``)
    ``MODULE_ID``                 the module a module-side command runs for (else the
                                  ``module/<id>`` of ``REDIS_USER``)
    ``NSBACKUP_MODULE_DIR``       the module's directory (``state/``, ``etc/``); default the
                                  working directory
    ``NSBACKUP_DUMP_PASSPHRASE_FILE``
                                  the cluster dump passphrase the leader encrypts with before
                                  each run; default NS8's
                                  ``/var/lib/nethserver/cluster/state/backup/passphrase``
    ``NSBACKUP_RESTIC_STALL``     seconds a backup or restore may make no progress before
                                  restic is stopped (default 900)
    ``NSBACKUP_STATUS_RETRY``     seconds the end of a run keeps writing the statuses Redis
                                  refused during it (default 60)
    ============================  =============================================================
    """

    redis_url: str = DEFAULT_REDIS_URL
    leader_url: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    node_id: str | None = None
    repo_dir: str = DEFAULT_REPO_DIR
    gateway_url: str = DEFAULT_GATEWAY_URL
    state_dir: str = DEFAULT_STATE_DIR
    metrics_dir: str = DEFAULT_METRICS_DIR
    runner: str | None = None
    modules_dir: str | None = None
    module_id: str | None = None
    module_dir: str | None = None
    dump_passphrase_file: str = DEFAULT_DUMP_PASSPHRASE_FILE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        address = env.get("REDIS_ADDRESS")
        default = f"redis://{address}/0" if address else DEFAULT_REDIS_URL
        return cls(
            redis_url=env.get("NSBACKUP_REDIS_URL") or default,
            leader_url=env.get("NSBACKUP_REDIS_LEADER_URL") or None,
            username=env.get("REDIS_USER") or None,
            password=env.get("REDIS_PASSWORD") or None,
            node_id=env.get("NODE_ID") or None,
            repo_dir=env.get("NSBACKUP_REPO_DIR") or DEFAULT_REPO_DIR,
            gateway_url=env.get("NSBACKUP_GATEWAY_URL") or DEFAULT_GATEWAY_URL,
            state_dir=env.get("NSBACKUP_STATE_DIR") or DEFAULT_STATE_DIR,
            metrics_dir=env.get("NSBACKUP_METRICS_DIR") or DEFAULT_METRICS_DIR,
            runner=env.get("NSBACKUP_RUNNER") or None,
            modules_dir=env.get("NSBACKUP_MODULES_DIR") or None,
            module_id=env.get("MODULE_ID") or None,
            module_dir=env.get("NSBACKUP_MODULE_DIR") or None,
            dump_passphrase_file=env.get("NSBACKUP_DUMP_PASSPHRASE_FILE")
            or DEFAULT_DUMP_PASSPHRASE_FILE,
        )


class Cluster:
    """An NS8-style cluster seen from one process.

    ``client`` is the redis-py client for reads (NS8: the local replica), ``leader`` the one
    for writes (default: ``client``); both may decode responses or not. ``node_id`` is the
    local node (needed by node-side commands such as the gateway). ``plugins`` are extra
    plugin objects registered beside the installed entry points (for embedding and for
    plugin authors' tests). ``repo_dir`` is the local disk the gateway serves for ``cluster``
    destinations. ``settings`` holds the node-local paths and addresses runs need
    (:class:`Settings`; its Redis fields are not used here: the clients are given).
    """

    def __init__(
        self,
        client: Any,
        *,
        leader: Any = None,
        node_id: str | int | None = None,
        plugins: Iterable[object] | None = None,
        repo_dir: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._client = client
        self._leader = leader
        settings = settings or Settings()
        self.node_id: str | None = settings.node_id if node_id in (None, "") else str(node_id)
        self._extra_plugins = tuple(plugins or ())
        self.repo_dir = repo_dir or settings.repo_dir
        self.settings = dataclasses.replace(settings, node_id=self.node_id, repo_dir=self.repo_dir)

    def __repr__(self) -> str:
        return f"Cluster(node_id={self.node_id!r})"

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        leader_url: str | None = None,
        node_id: str | int | None = None,
        plugins: Iterable[object] | None = None,
        repo_dir: str | None = None,
        username: str | None = None,
        password: str | None = None,
        settings: Settings | None = None,
    ) -> Cluster:
        """A Cluster on ``url`` (reads) and ``leader_url`` (writes). Credentials come from the
        URL, else ``username``/``password``, else ``REDIS_USER``/``REDIS_PASSWORD``. An invalid
        URL raises :class:`~nsbackup.errors.ValidationFailed` on ``redis``; nothing connects
        until the first call."""
        reader = _Connector(url, username, password)
        writer = (
            _Connector(leader_url, username, password) if leader_url and leader_url != url else None
        )
        return cls(
            reader,
            leader=writer,
            node_id=node_id,
            plugins=plugins,
            repo_dir=repo_dir,
            settings=settings,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, plugins: Iterable[object] | None = None
    ) -> Cluster:
        return cls.from_url(
            settings.redis_url,
            leader_url=settings.leader_url,
            node_id=settings.node_id,
            plugins=plugins,
            repo_dir=settings.repo_dir,
            username=settings.username or "",
            password=settings.password or "",
            settings=settings,
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, plugins: Iterable[object] | None = None
    ) -> Cluster:
        """A Cluster as the environment describes it (:class:`Settings`), exactly as the CLI
        reads it."""
        return cls.from_settings(Settings.from_env(environ), plugins=plugins)

    # -- what the services share ----------------------------------------------------------
    @cached_property
    def store(self) -> Store:
        """The Redis key layout over the two clients (for advanced use and tests)."""
        from nsbackup.store import Store

        reader = self._client.connect() if isinstance(self._client, _Connector) else self._client
        leader = self._leader.connect() if isinstance(self._leader, _Connector) else self._leader
        return Store(reader, leader)

    @cached_property
    def host(self) -> PluginHost:
        """The loaded plugins (entry points once per process, plus the extra ones)."""
        from nsbackup.plugins import plugin_host

        return plugin_host(self._extra_plugins)

    # -- services -------------------------------------------------------------------------
    @cached_property
    def destinations(self) -> DestinationService:
        """Backup destinations: ``add``, ``alter``, ``remove``, ``list``, ``validate``,
        ``render``."""
        from nsbackup.destinations import DestinationService

        return DestinationService(
            self.store,
            self.host,
            node_id=self.node_id,
            repo_dir=self.repo_dir,
            passphrase_file=self.settings.dump_passphrase_file,
        )

    @cached_property
    def schedules(self) -> ScheduleService:
        """Backup schedules: ``add``, ``alter``, ``remove``, ``list``."""
        from nsbackup.schedules import ScheduleService

        return ScheduleService(self.store)

    @cached_property
    def gateway(self) -> GatewayService:
        """This node's gateway: ``render(out_dir)``, ``server(state_dir)``."""
        from nsbackup.gateway.service import GatewayService

        return GatewayService(self.store, self.host, self.node_id, self.repo_dir)

    @cached_property
    def runs(self) -> RunService:
        """Backup runs on this node: ``run``, ``check``, ``snapshots``, ``repositories``
        (node credentials)."""
        from nsbackup.runs.node import RunService

        return RunService(self.store, self.host, self.settings)

    @cached_property
    def timers(self) -> TimerService:
        """This node's systemd timers, one per enabled schedule: ``start``, ``stop``,
        ``list``."""
        from nsbackup.runs.timers import TimerService

        return TimerService(self)

    def scheduler(self) -> Scheduler:
        """A scheduler for hosts without systemd: runs each enabled schedule at its next
        elapse (systemd's calendar semantics) until stopped."""
        from nsbackup.runs.scheduler import Scheduler

        return Scheduler(self)

    @cached_property
    def restore(self) -> RestoreService:
        """Restores: grants (``grant``, ``revoke``, ``grants``) and ``run``."""
        from nsbackup.dr.restore import RestoreService

        return RestoreService(self)

    @cached_property
    def dump(self) -> DumpService:
        """The encrypted cluster dump: ``export``, ``import_``, ``restore``."""
        from nsbackup.dr.dump import DumpService

        return DumpService(self)

    def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        """Migrate NS8's legacy (pre-3.20) layout to the current one; idempotent."""
        from nsbackup.dr.migrate import migrate

        return migrate(self, dry_run=dry_run)

    @cached_property
    def module(self) -> ModuleService:
        """The module side, run with a module's own credentials: ``backup``."""
        from nsbackup.runs.module import ModuleService

        return ModuleService(self.store, self.settings)

    @property
    def providers(self) -> list[ProviderInfo]:
        """Every destination provider with its URL form and parameters."""
        host = self.host
        return [
            {
                "name": p.name,
                "description": p.description,
                "url_form": p.url_form,
                "plugin": host.owner("provider", p.name),
                "parameters": [
                    {
                        "name": param.name,
                        "description": param.description,
                        "required": param.required,
                        "secret": param.secret,
                        "pattern": param.pattern,
                        "max_length": param.max_length,
                        "obscured": param.obscured,
                    }
                    for param in p.parameters
                ],
            }
            for p in sorted(host.providers.values(), key=lambda p: p.name)
        ]

    @property
    def plugins(self) -> PluginsReport:
        """The loaded plugins, what each registered, and the ones that failed to load."""
        host = self.host
        return {
            "plugins": [
                {
                    "name": info.name,
                    "distribution": info.dist,
                    "version": info.version,
                    "hooks": list(info.hooks),
                    "registered": {k: list(v) for k, v in info.registered.items()},
                }
                for info in host.plugins.values()
            ],
            "failures": [
                {
                    "name": f.name,
                    "distribution": f.dist,
                    "version": f.version,
                    "error": f.reason,
                    "message": str(f),
                }
                for f in host.failures
            ],
        }


@dataclasses.dataclass(frozen=True)
class _Connector:
    """A Redis URL whose client is made on first use (so that commands that never touch
    Redis never import redis-py)."""

    url: str
    username: str | None
    password: str | None = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        check_url(self.url)

    def connect(self) -> Any:
        from nsbackup.store import connect

        return connect(self.url, username=self.username, password=self.password)
