"""Plugin loading and the typed facade the rest of the core uses instead of raw pluggy calls.

Entry points of the ``nsbackup`` group are loaded one at a time (built-in ones first): a plugin
that fails to import, implements an unknown hook or registers something invalid is reported as
``plugin NAME (DIST VERSION) failed to load: ...`` and left out, and everything else keeps
working. ``NSBACKUP_DISABLE_PLUGINS=name,...`` skips plugins by entry-point or distribution name.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
import pluggy

from nsbackup import hookspecs
from nsbackup.errors import PluginError, ValidationFailed
from nsbackup.model import FieldError, Parameter
from nsbackup.provider import PROVIDER_NAME, Provider

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nsbackup"
DISABLE_ENV = "NSBACKUP_DISABLE_PLUGINS"
BUILTIN_DIST = "nsbackup"
_REGISTRATION_HOOKS = {
    "nsbackup_register_providers": "provider",
    "nsbackup_register_renderers": "renderer",
    "nsbackup_register_metric_sinks": "metric_sink",
    "nsbackup_register_module_runners": "module_runner",
}
_ITEM_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@runtime_checkable
class Renderer(Protocol):
    """Renders one gateway file from a render context (a cluster snapshot + node settings)."""

    @property
    def name(self) -> str: ...

    @property
    def filename(self) -> str: ...

    @property
    def secret(self) -> bool:
        """True when the file holds secrets: it is then written with mode 0600."""
        ...

    def render(self, context: Any) -> str: ...


@runtime_checkable
class MetricSink(Protocol):
    """Receives the report of each run (:class:`nsbackup.runs.report.RunReport`). Must not
    raise; the core catches, logs and counts.

    Optional methods, called when present: ``record_check(report)`` with the
    :class:`~nsbackup.runs.report.CheckReport` of each ``backup check``, and
    ``purge(enabled_ids)`` with the ids of the enabled schedules whenever schedules change (a
    sink drops what it keeps for the others).
    """

    @property
    def name(self) -> str: ...

    def record(self, report: Any) -> None: ...


@attrs.frozen
class RunnerSettings:
    """What a module runner may need from the node; it knows no more of the node than this.

    ``modules_dir``: where modules live as directories on this machine (the ``local`` runner);
    ``redis_url``: the Redis a module connects to, without credentials (the module side adds
    its own); ``gateway_url``: the node's gateway; ``command``: how to start ``nsbackup``
    (an argument list); ``env``: extra environment for the module side.
    """

    modules_dir: str | None
    redis_url: str
    gateway_url: str
    command: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class RunnerResult:
    """How the module side ended: its exit code, its standard output (one JSON document) and
    the end of its standard error (messages; progress lines are not kept)."""

    returncode: int
    stdout: str
    stderr: str


@runtime_checkable
class ModuleRunner(Protocol):
    """Runs ``nsbackup <args>`` in a module's context (its identity, credentials and files).

    ``on_line`` receives each standard-error line as it arrives (the module side reports
    progress there). A runner must not raise for a module that fails: it returns the exit
    code; it raises :class:`~nsbackup.errors.NsbackupError` only when it cannot start at all.
    """

    @property
    def name(self) -> str: ...

    def available(self, settings: RunnerSettings) -> bool:
        """Whether this runner can work here (e.g. its tool is installed)."""
        ...

    def run(
        self,
        module_id: str,
        args: Sequence[str],
        settings: RunnerSettings,
        *,
        timeout: float,
        on_line: Callable[[str], None],
    ) -> RunnerResult: ...


@attrs.frozen
class S3Vendor:
    """An S3 vendor: a display name and the rclone options its endpoints need."""

    name: str
    options: Mapping[str, str]


@attrs.frozen
class PluginInfo:
    name: str
    dist: str
    version: str
    hooks: tuple[str, ...]
    registered: Mapping[str, tuple[str, ...]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.dist,
            "version": self.version,
            "hooks": list(self.hooks),
            "registered": {k: list(v) for k, v in self.registered.items()},
        }


@attrs.frozen
class PluginFailure:
    name: str
    dist: str
    version: str
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.name} ({self.dist} {self.version}) failed to load: {self.reason}"


class Lookups:
    """Typed access to look-up hooks, handed to plugins that need other plugins' answers."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm

    def s3_vendor(self, host: str, parameters: Mapping[str, str]) -> S3Vendor | None:
        result = self._pm.hook.nsbackup_s3_vendor(host=host, parameters=parameters)
        if result is not None and not isinstance(result, S3Vendor):
            raise PluginError(
                f"nsbackup_s3_vendor returned {type(result).__name__}, expected S3Vendor or None"
            )
        return result


class PluginHost:
    """The loaded plugins and what they registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.lookups = Lookups(self.pm)
        self.providers: dict[str, Provider] = {}
        self.renderers: dict[str, Renderer] = {}
        self.metric_sinks: dict[str, MetricSink] = {}
        self.module_runners: dict[str, ModuleRunner] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._owner: dict[tuple[str, str], str] = {}

    # -- look-ups -------------------------------------------------------------------------
    def provider(self, name: str) -> Provider:
        """The provider called ``name``; an unknown name is a validation error on ``provider``."""
        try:
            return self.providers[name]
        except KeyError:
            raise ValidationFailed(
                [
                    FieldError(
                        "provider",
                        "provider",
                        name,
                        "backup_provider_unknown",
                        f"unknown provider {name!r}; installed: {sorted(self.providers)}",
                    )
                ]
            ) from None

    def owner(self, kind: str, name: str) -> str:
        return self._owner[(kind, name)]

    # -- registration ---------------------------------------------------------------------
    def register_plugin(
        self, plugin: object, name: str, dist: str = "", version: str = ""
    ) -> PluginInfo:
        """Register one plugin object or module; all or nothing.

        Raise :class:`PluginError` (and leave no trace of the plugin) when it implements an
        unknown hook or registers something invalid.
        """
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy's validation and duplicate-name errors
            raise PluginError(_reason(exc)) from exc
        try:
            unknown = [
                impl.function.__name__
                for hook in self.pm.hook.__dict__.values()
                if isinstance(hook, pluggy.HookCaller) and not hook.has_spec()
                for impl in hook.get_hookimpls()
                if impl.plugin is plugin
            ]
            if unknown:
                raise PluginError(f"unknown hook(s) {', '.join(sorted(unknown))}")
            staged = self._collect(plugin, name)
            self._check_staged(staged, name)
        except BaseException as exc:
            self.pm.unregister(plugin)
            if isinstance(exc, PluginError):
                raise
            if isinstance(exc, Exception):
                raise PluginError(_reason(exc)) from exc
            raise
        registered: dict[str, list[str]] = {}
        for kind, item in staged:
            getattr(self, _TABLE[kind])[item.name] = item
            self._owner[(kind, item.name)] = name
            registered.setdefault(kind, []).append(item.name)
        hooks = tuple(
            sorted(
                impl.function.__name__
                for caller in self.pm.get_hookcallers(plugin) or ()
                for impl in caller.get_hookimpls()
                if impl.plugin is plugin
            )
        )
        info = PluginInfo(name, dist, version, hooks, {k: tuple(v) for k, v in registered.items()})
        self.plugins[name] = info
        return info

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and everything it registered (used by tests and embedders)."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        for (kind, item), owner in list(self._owner.items()):
            if owner == name:
                del getattr(self, _TABLE[kind])[item]
                del self._owner[(kind, item)]
        self.plugins.pop(name, None)

    def _collect(self, plugin: object, name: str) -> list[tuple[str, Any]]:
        staged: list[tuple[str, Any]] = []
        for hook_name, kind in _REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue

                def register(item: Any, _kind: str = kind) -> None:
                    staged.append((_kind, item))

                available = {"register": register, "lookups": self.lookups}
                impl.function(*[available[arg] for arg in impl.argnames])
        return staged

    def _check_staged(self, staged: list[tuple[str, Any]], plugin_name: str) -> None:
        seen: set[tuple[str, str]] = set()
        for kind, item in staged:
            _check_item(kind, item)
            key = (kind, item.name)
            if key in self._owner:
                raise PluginError(
                    f"{kind.replace('_', ' ')} {item.name!r} is already registered by plugin "
                    f"{self._owner[key]}; plugin {plugin_name} registers it again"
                )
            if key in seen:
                raise PluginError(f"{kind.replace('_', ' ')} {item.name!r} registered twice")
            seen.add(key)


_TABLE = {
    "provider": "providers",
    "renderer": "renderers",
    "metric_sink": "metric_sinks",
    "module_runner": "module_runners",
}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_item(kind: str, item: Any) -> None:
    label = f"{kind.replace('_', ' ')} {getattr(item, 'name', item)!r}"
    if kind == "provider":
        if not isinstance(item, Provider):
            missing = _missing(item, Provider)
            raise PluginError(f"{label} does not implement Provider (missing {missing})")
        if not isinstance(item.name, str) or not PROVIDER_NAME.fullmatch(item.name):
            raise PluginError(f"{label}: name must match {PROVIDER_NAME.pattern}")
        params = list(item.parameters)
        if not all(isinstance(p, Parameter) for p in params):
            raise PluginError(f"{label}: parameters must be nsbackup.model.Parameter objects")
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise PluginError(f"{label}: duplicate parameter names")
    elif kind == "renderer":
        if not isinstance(item, Renderer):
            raise PluginError(
                f"{label} does not implement Renderer (missing {_missing(item, Renderer)})"
            )
        if not _ITEM_NAME.fullmatch(str(item.name)):
            raise PluginError(f"{label}: name must match {_ITEM_NAME.pattern}")
        if not isinstance(item.filename, str) or not _FILE_NAME.fullmatch(item.filename):
            raise PluginError(f"{label}: filename must be a plain file name")
        if not isinstance(item.secret, bool):
            raise PluginError(f"{label}: secret must be a bool")
    elif kind == "module_runner":
        if not isinstance(item, ModuleRunner):
            raise PluginError(
                f"{label} does not implement ModuleRunner (missing {_missing(item, ModuleRunner)})"
            )
        if not _ITEM_NAME.fullmatch(str(item.name)):
            raise PluginError(f"{label}: name must match {_ITEM_NAME.pattern}")
    else:
        if not isinstance(item, MetricSink):
            raise PluginError(
                f"{label} does not implement MetricSink (missing {_missing(item, MetricSink)})"
            )
        if not _ITEM_NAME.fullmatch(str(item.name)):
            raise PluginError(f"{label}: name must match {_ITEM_NAME.pattern}")


def _missing(item: Any, protocol: type) -> str:
    members = getattr(protocol, "__protocol_attrs__", None)  # Python >= 3.12
    if members is None:
        members = set(getattr(protocol, "__annotations__", {})) | {
            name for name in vars(protocol) if not name.startswith("_")
        }
    missing = [a for a in members if not hasattr(item, a)]
    return ", ".join(sorted(missing)) or "a compatible signature"


def disabled_plugins(environ: Mapping[str, str] | None = None) -> set[str]:
    value = (environ if environ is not None else os.environ).get(DISABLE_ENV, "")
    return {part.strip() for part in value.split(",") if part.strip()}


def _warn_unknown_disabled(
    skip: Iterable[str], entry_points: Sequence[importlib.metadata.EntryPoint]
) -> None:
    """A name in ``NSBACKUP_DISABLE_PLUGINS`` that matches nothing is most likely a typo: the
    plugin the operator meant is still loaded, so say so, with the names that would work."""
    names = {ep.name for ep in entry_points}
    dists = {_dist_of(ep)[0] for ep in entry_points if ep.dist}
    unknown = sorted(set(skip) - names - dists)
    if unknown:
        log.warning(
            "%s: no installed plugin is called %s, nothing disabled for it; installed "
            "plugins: %s (distributions: %s)",
            DISABLE_ENV,
            ", ".join(unknown),
            ", ".join(sorted(names)) or "none",
            ", ".join(sorted(dists)) or "none",
        )


_dists: dict[str, tuple[str, str]] = {}


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    """The name and version of the distribution of ``ep``, read once per distribution (each
    ``ep.dist.name`` parses the distribution's whole METADATA file again)."""
    dist = ep.dist
    if dist is None:
        return ("?", "?")
    key = str(getattr(dist, "_path", id(dist)))
    found = _dists.get(key)
    if found is None:
        metadata = dist.metadata
        found = _dists[key] = (str(metadata["Name"]), str(metadata["Version"]))
    return found


def load_plugins(
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    *,
    disabled: set[str] | None = None,
    on_failure: Callable[[PluginFailure], None] | None = None,
) -> PluginHost:
    """Load the ``nsbackup`` entry points into a new :class:`PluginHost`.

    Failures are collected in ``host.failures`` (and logged); they never stop the others.
    """
    host = PluginHost()
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    entry_points = list(entry_points)
    skip = disabled_plugins() if disabled is None else disabled
    _warn_unknown_disabled(skip, entry_points)

    def order(ep: importlib.metadata.EntryPoint) -> tuple[bool, str, str]:
        dist = _dist_of(ep)[0] if ep.dist else ""
        return (dist != BUILTIN_DIST, dist, ep.name)

    seen: set[tuple[str, str, str]] = set()
    for ep in sorted(entry_points, key=order):
        dist, version = _dist_of(ep)
        if ep.name in skip or dist in skip or (ep.name, ep.value, dist) in seen:
            continue
        seen.add((ep.name, ep.value, dist))
        try:
            plugin = ep.load()
            host.register_plugin(plugin, ep.name, dist, version)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, PluginError) else _reason(exc)
            failure = PluginFailure(ep.name, dist, version, reason)
            host.failures.append(failure)
            log.warning("%s", failure)
            if on_failure is not None:
                on_failure(failure)
    return host


# -- once per process ---------------------------------------------------------------------------

_entry_points: tuple[importlib.metadata.EntryPoint, ...] | None = None
_shared: dict[frozenset[str], PluginHost] = {}
_lock = threading.Lock()


def entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    """The ``nsbackup`` entry points, read from the installed distributions once per process."""
    global _entry_points
    if _entry_points is None:
        _entry_points = tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return _entry_points


def plugin_host(extra: Iterable[object] = ()) -> PluginHost:
    """The plugins of this process: the entry points (loaded once, minus
    ``NSBACKUP_DISABLE_PLUGINS``) plus ``extra`` plugin objects registered without an entry
    point (each named after its ``__name__`` or class). A host without extras is shared; an
    extra that fails to register raises :class:`PluginError`."""
    extras = list(extra)
    skip = frozenset(disabled_plugins())
    if not extras:
        with _lock:
            host = _shared.get(skip)
            if host is None:
                host = _shared[skip] = load_plugins(entry_points(), disabled=set(skip))
        return host
    host = load_plugins(entry_points(), disabled=set(skip))
    for plugin in extras:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        try:
            host.register_plugin(plugin, str(name), "(embedded)", "")
        except PluginError as exc:
            raise PluginError(f"plugin {name} failed to register: {exc}") from None
    return host
