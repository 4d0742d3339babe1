"""Node orchestration: ``nsbackup backup run ID`` (NS8's ``run-backup``, ref §5.2-5.3) and
``nsbackup backup check ID``, with the node's credentials.

Per run: the backup id is locked on the node (a second run of it is :class:`Busy` at once);
``nsbackup_before_run`` plugins run (the leader's cluster dump upload); each local module of
the schedule is backed up by its module runner, up to ``jobs`` at once, each under the node's
lock of that module (a module another schedule is backing up is waited for, at most ``wait``
seconds, and taken the moment it is released); then, with node credentials, ``restic stats``,
retention, the status in Redis (with its event) and the metadata file on the destination. One
:class:`~nsbackup.runs.report.RunReport` goes to every metric sink and to
``nsbackup_after_run``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from nsbackup.errors import (
    Busy,
    NotFound,
    NsbackupError,
    PermissionDenied,
    Unreachable,
    ValidationFailed,
)
from nsbackup.model import ClusterState, FieldError, Module, Schedule
from nsbackup.plugins import ModuleRunner, PluginHost, RunnerResult, RunnerSettings
from nsbackup.restic import (
    classify_failure,
    gateway_refusal,
    restic_binary,
    restic_env,
    restic_version,
    run_restic,
)
from nsbackup.runs import children
from nsbackup.runs.command import check_seconds
from nsbackup.runs.context import RunContext
from nsbackup.runs.locks import FileLock, LockTimeout, file_lock
from nsbackup.runs.module import explain_failure, restic_reason
from nsbackup.runs.report import (
    CheckReport,
    ModuleResult,
    RepositoryCheck,
    RunReport,
    outcome_of,
)
from nsbackup.store import Store
from nsbackup.webdav import GatewayClient

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "nsbackup-progress "
RESTIC_TIMEOUT = 24 * 3600.0
STATUS_RETRY = 60.0
"""Seconds the end of a run keeps trying to write the statuses Redis refused during it (Redis
restarting, a leader switch); ``NSBACKUP_STATUS_RETRY`` overrides it."""

# progress(module_id, event, data): event is "start", "progress" (restic's status message),
# or "end" (the ModuleResult as JSON).
ProgressCallback = Callable[[str, str, dict[str, Any]], None]


class RunService:
    """``cluster.runs``: backup runs and checks on the local node."""

    def __init__(self, store: Store, host: PluginHost, settings: Any) -> None:
        self.store = store
        self.host = host
        self.settings = settings
        self._configured = False

    def sinks(self) -> list[Any]:
        """The metric sinks, each given the node's settings once (``configure``)."""
        sinks = list(self.host.metric_sinks.values())
        if not self._configured:
            self._configured = True
            for sink in sinks:
                configure = getattr(sink, "configure", None)
                if callable(configure):
                    try:
                        configure(self.settings)
                    except Exception as exc:
                        log.warning("metric sink %s cannot be configured: %s", sink.name, exc)
        return sinks

    def purge_metrics(self, state: ClusterState | None = None) -> list[int]:
        """Tell every metric sink which schedules are enabled (``purge``), so that it drops
        what it keeps for removed or disabled ones (NS8's ``20purge_backup_prom``). Return
        the enabled ids."""
        state = state or self.store.load(details=False)
        enabled = sorted(bid for bid, s in state.schedules.items() if s.enabled)
        self._to_sinks("purge", enabled)
        return enabled

    def _to_sinks(self, method: str, argument: Any) -> dict[str, str]:
        """Call ``method`` of every metric sink that has it; a sink never fails the run.
        Return ``{sink name: error}`` for those that raised."""
        failures: dict[str, str] = {}
        for sink in self.sinks():
            call = getattr(sink, method, None)
            if not callable(call):
                continue
            try:
                call(argument)
            except Exception as exc:
                log.warning("metric sink %s failed to %s: %s", sink.name, method, exc)
                failures[sink.name] = f"{type(exc).__name__}: {str(exc)[:300]}"
        return failures

    # -- listings (nsbackup.runs.listings) ------------------------------------------------
    def snapshots(self, payload: Any) -> list[dict[str, Any]]:
        """NS8's read-backup-snapshots: the snapshots of one repository (node credentials)."""
        from nsbackup.runs.listings import snapshots

        return snapshots(self, payload)

    def repositories(self, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """NS8's read-backup-repositories: the restic repositories found in every destination
        through the gateway (destinations in parallel, each bounded by ``timeout``)."""
        from nsbackup.runs.listings import repositories

        return repositories(self, timeout=timeout)

    # -- shared ---------------------------------------------------------------------------
    def _node(self) -> str:
        node = self.settings.node_id
        if not node:
            raise ValidationFailed.one(
                "node", None, "required", "the local node id is required (--node or NODE_ID)"
            )
        user = self.store.reader_user
        if user != f"node/{node}" and user != "cluster":
            raise PermissionDenied(
                f"permission denied: runs on node {node} need its credentials "
                f"(REDIS_USER=node/{node}), not {user!r}"
            )
        return str(node)

    def _credentials(self) -> tuple[str, str]:
        """The node's gateway credentials are its Redis credentials (NS8's rule)."""
        kwargs = self.store.reader.connection_pool.connection_kwargs
        return self.store.reader_user, str(kwargs.get("password") or "")

    def _schedule(self, state: ClusterState, backup_id: int) -> Schedule:
        schedule = state.schedules.get(backup_id)
        if schedule is None:
            raise NotFound(
                [
                    FieldError(
                        "id", "id", backup_id, "backup_not_found", f"backup {backup_id} not found"
                    )
                ]
            )
        return schedule

    def _restic(self, repository_path: str, password: str) -> tuple[dict[str, str], str, Any]:
        user, gateway_password = self._credentials()
        binary = restic_binary()
        env = restic_env(
            repository_path=repository_path,
            user=user,
            password=gateway_password,
            restic_password=password,
            gateway_url=self.settings.gateway_url,
            cache_dir=str(Path(self.settings.state_dir) / "cache" / "restic"),
            binary=binary,
        )
        return env, binary, restic_version(binary)

    def _check_gateway(self) -> None:
        """Exit 5 before anything when the gateway does not answer."""
        import requests

        try:
            requests.get(self.settings.gateway_url.rstrip("/") + "/", timeout=(3, 10))
        except requests.RequestException as exc:
            raise Unreachable(
                f"the gateway {self.settings.gateway_url} does not answer: {type(exc).__name__}"
            ) from None

    def runner(self, name: str | None = None) -> ModuleRunner:
        """The module runner ``name``, else ``settings.runner``, else ``ns8`` when it is
        available here, else ``local``."""
        runners = self.host.module_runners
        wanted = name or self.settings.runner
        if wanted:
            if wanted not in runners:
                raise ValidationFailed.one(
                    "runner",
                    wanted,
                    "runner_unknown",
                    f"unknown module runner {wanted!r}; installed: {sorted(runners)}",
                )
            return runners[wanted]
        settings = self.runner_settings()
        for candidate in ("ns8", "local"):
            runner = runners.get(candidate)
            if runner is not None and runner.available(settings):
                return runner
        raise ValidationFailed.one(
            "runner",
            None,
            "runner_unavailable",
            "no module runner can work here: runagent is not on PATH and no modules "
            "directory is set (--modules-dir or NSBACKUP_MODULES_DIR)",
        )

    def runner_settings(self) -> RunnerSettings:
        kwargs = self.store.reader.connection_pool.connection_kwargs
        if "path" in kwargs:
            redis_url = f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        else:
            redis_url = f"redis://{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"
        # The node's restic choices reach the module side (nothing else of its environment).
        env = {
            k: v for k, v in os.environ.items() if k in ("NSBACKUP_RESTIC", "NSBACKUP_RESTIC_STALL")
        }
        return RunnerSettings(
            modules_dir=self.settings.modules_dir,
            redis_url=redis_url,
            gateway_url=self.settings.gateway_url,
            command=(sys.executable, "-m", "nsbackup"),
            env=env,
        )

    # -- run ------------------------------------------------------------------------------
    def run(
        self,
        backup_id: int,
        *,
        jobs: int = 1,
        wait: float = 3600.0,
        runner: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Back up every local module of schedule ``backup_id``; return the run report
        (:class:`~nsbackup.runs.report.RunReport` as JSON, with ``exit_code``)."""
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValidationFailed.one("jobs", jobs, "minimum", "jobs must be an integer >= 1")
        check_seconds("wait", wait)
        node = self._node()
        state = self.store.load()
        schedule = self._schedule(state, backup_id)
        lock = Path(self.settings.state_dir) / "locks" / f"backup-{backup_id}.lock"
        try:
            with file_lock(lock, wait=0):
                report = self._run_locked(
                    state, schedule, node, jobs, float(wait), runner, progress
                )
        except LockTimeout as exc:
            holder = f" by pid {exc.holder}" if exc.holder else ""
            raise Busy(f"backup {backup_id} is already running on node {node}{holder}") from None
        return self._publish(report).to_json()

    def _run_locked(
        self,
        state: ClusterState,
        schedule: Schedule,
        node: str,
        jobs: int,
        wait: float,
        runner_name: str | None,
        progress: ProgressCallback | None,
    ) -> RunReport:
        start = time.time()
        leader = state.leader == node
        base = RunReport(
            backup_id=schedule.id,
            name=schedule.name,
            node_id=node,
            destination=schedule.repository,
            start=start,
            end=start,
            outcome="disabled",
            leader=leader,
        )
        if not schedule.enabled:
            self.purge_metrics(state)
            return attrs.evolve(base, end=time.time())
        local = local_modules(state, schedule, node)
        notes: dict[str, Any] = {}
        if not local:
            self._before_run(schedule, node, leader, state, notes)
            return attrs.evolve(base, end=time.time(), outcome="no_local_modules", notes=notes)
        runner = self.runner(runner_name)
        self._check_gateway()
        self._before_run(schedule, node, leader, state, notes)
        password = self.store.restic_password(schedule.repository)
        if password is None:
            raise NsbackupError(
                f"destination {schedule.repository} has no Restic password (or "
                f"{self.store.reader_user} may not read it)"
            )
        user, gateway_password = self._credentials()
        settings = self.runner_settings()
        down = self._destination_down(schedule.repository)
        with GatewayClient(self.settings.gateway_url, user, gateway_password) as dav:
            work = _ModuleWork(
                service=self,
                state=state,
                schedule=schedule,
                node=node,
                runner=runner,
                settings=settings,
                restic_password=password.reveal(),
                wait=wait,
                dav=dav,
                progress=progress,
                down=down,
            )
            results = _pipeline(work, local, jobs)
        modules = tuple(results)
        unwritten = work.write_unwritten(_status_retry())
        if unwritten:
            notes["status_not_written"] = unwritten
        return attrs.evolve(
            base, end=time.time(), outcome=outcome_of(modules), modules=modules, notes=notes
        )

    def _destination_down(self, destination: str) -> str:
        """Why the destination does not answer through the gateway (``""`` when it does):
        its health check, ``GET /<uuid>/_probe_rest_404``, must answer 404 within seconds.
        A dead destination then fails every module at once instead of after restic's
        minutes of retries."""
        import requests

        url = f"{self.settings.gateway_url.rstrip('/')}/{destination}/_probe_rest_404"
        try:
            response = requests.get(
                url, headers={"Accept": "application/vnd.x.restic.rest.v2"}, timeout=(3, 30)
            )
        except requests.RequestException as exc:
            return f"no answer from the gateway for destination {destination}: {type(exc).__name__}"
        if response.status_code != 404:
            return (
                f"destination {destination} does not answer through the gateway (health check "
                f"status {response.status_code})"
            )
        return ""

    def _before_run(
        self,
        schedule: Schedule,
        node: str,
        leader: bool,
        state: ClusterState,
        notes: dict[str, Any],
    ) -> None:
        impls = self.host.pm.hook.nsbackup_before_run.get_hookimpls()
        if not impls:
            return
        user, password = self._credentials()

        def upload(name: str, data: bytes, content_type: str) -> None:
            with GatewayClient(self.settings.gateway_url, user, password) as dav:
                dav.put(f"{schedule.repository}/{name.lstrip('/')}", data, content_type)

        context = RunContext(
            schedule=schedule,
            node_id=node,
            leader=leader,
            state=state,
            gateway_url=self.settings.gateway_url,
            upload=upload,
            notes=notes,
            settings=self.settings,
        )
        for impl in impls:
            try:
                impl.function(context)
            except Exception as exc:  # a plugin never fails the run
                log.warning("before-run hook of plugin %s failed: %s", impl.plugin_name, exc)
                notes.setdefault("before_run_failures", {})[impl.plugin_name] = (
                    f"{type(exc).__name__}: {str(exc)[:300]}"
                )

    def _publish(self, report: RunReport) -> RunReport:
        """Give the report to every metric sink, then to ``nsbackup_after_run``."""
        failures = self._to_sinks("record", report)
        if failures:
            report = attrs.evolve(report, sink_failures=failures)
        for impl in self.host.pm.hook.nsbackup_after_run.get_hookimpls():
            try:
                impl.function(report)
            except Exception as exc:
                log.warning("after-run hook of plugin %s failed: %s", impl.plugin_name, exc)
        return report

    # -- check ----------------------------------------------------------------------------
    def check(self, backup_id: int, *, read_data_subset: str | None = None) -> dict[str, Any]:
        """``restic check`` of every repository of schedule ``backup_id`` (node credentials);
        the verdict goes into each module's status and to the metric sinks."""
        if read_data_subset is not None and not _valid_subset(read_data_subset):
            raise ValidationFailed.one(
                "read_data_subset",
                read_data_subset,
                "pattern",
                "read_data_subset must be n/t (e.g. 1/5), a percentage (e.g. 10%) or a size "
                "(e.g. 1G)",
            )
        node = self._node()
        state = self.store.load()
        schedule = self._schedule(state, backup_id)
        password = self.store.restic_password(schedule.repository)
        if password is None:
            raise NsbackupError(f"destination {schedule.repository} has no Restic password")
        start = time.time()
        checks = []
        modules = [state.modules[m] for m in schedule.instances if m in state.modules]
        for module in modules:
            if not module.uuid:
                continue
            path = f"{schedule.repository}/{module.repository_path}"
            env, binary, version = self._restic(path, password.reveal())
            args = ["check"]
            if read_data_subset:
                args.append(f"--read-data-subset={read_data_subset}")
            completed = run_restic(args, env, binary=binary, timeout=RESTIC_TIMEOUT)
            refused = gateway_refusal(completed.stderr) if completed.returncode else None
            if refused:
                # Not a verdict on the repository: these credentials may check none.
                raise PermissionDenied(
                    f"the gateway refused {self._credentials()[0]} (HTTP {refused}) checking "
                    f"{path}: backup check runs with the node's credentials "
                    "(REDIS_USER=node/<id>)"
                )
            ok = completed.returncode == 0
            message = ""
            if not ok:
                kind = classify_failure(completed.returncode, completed.stderr, version)
                message = explain_failure(kind, completed.returncode)
                detail = restic_reason(completed.stderr)
                message += f": {detail}" if detail else ""
            checks.append(
                RepositoryCheck(
                    module_id=module.id,
                    module_uuid=module.uuid,
                    repository_path=module.repository_path,
                    ok=ok,
                    restic_exit_code=completed.returncode,
                    message=message,
                    read_data_subset=read_data_subset,
                )
            )
            if module.node == node:
                self._merge_status(node, backup_id, module.id, ok, start)
        report = CheckReport(
            backup_id=backup_id,
            name=schedule.name,
            node_id=node,
            destination=schedule.repository,
            start=start,
            end=time.time(),
            repositories=tuple(checks),
        )
        failures = self._to_sinks("record_check", report)
        if failures:
            report = attrs.evolve(report, sink_failures=failures)
        return report.to_json()

    def _merge_status(self, node: str, bid: int, module_id: str, ok: bool, when: float) -> None:
        try:
            current = self.store.module_statuses(node, bid).get(module_id)
            status = dict(current) if isinstance(current, dict) else {}
            status["last_check"] = int(when)
            status["check_ok"] = ok
            self.store.write_module_status(node, bid, module_id, status)
        except NsbackupError as exc:
            log.warning("check status of %s not written: %s", module_id, exc)


@attrs.define
class _Pending:
    """A module between its two phases: backed up (or not), its lock still held."""

    module: Module
    start: int
    lock: FileLock | None
    fields: dict[str, Any]
    backed_up: bool
    errors: int
    result: ModuleResult | None
    """Already decided (the lock was not obtained, the destination is down)."""
    asked: float
    locked_at: float | None


@attrs.define
class _ModuleWork:
    """One run's per-module steps (shared by the worker threads)."""

    service: RunService
    state: ClusterState
    schedule: Schedule
    node: str
    runner: ModuleRunner
    settings: RunnerSettings
    restic_password: str = attrs.field(repr=False)
    wait: float = 3600.0
    dav: GatewayClient | None = None
    progress: ProgressCallback | None = None
    down: str = ""
    unwritten: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """Statuses Redis refused (module id -> status): :meth:`write_unwritten` tries again."""
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def backup(self, module: Module) -> _Pending:
        """The module-side phase: take the module's lock (waiting for another run at most
        ``wait`` seconds) and run the module's backup through its runner. The lock stays
        held until :meth:`finish`."""
        start = int(time.time())
        asked = time.time()
        lock = FileLock(
            Path(self.service.settings.state_dir) / "locks" / f"module-{module.id}.lock"
        )
        try:
            lock.acquire(wait=self.wait, stop=children.stopping.is_set)
        except LockTimeout as exc:
            holder = f" (held by pid {exc.holder})" if exc.holder else ""
            waited = f"{time.time() - asked:.0f} s" if children.stopping.is_set() else ""
            failed = attrs.evolve(
                self._failed(
                    module,
                    start,
                    "still_locked",
                    f"module {module.id} still locked when the run was stopped after "
                    f"{waited}{holder}"
                    if waited
                    else f"module {module.id} still locked after {self.wait:g} s{holder}",
                ),
                waited=round(time.time() - asked, 3),
            )
            return _Pending(module, start, None, {}, False, 1, failed, asked, None)
        locked_at = time.time()
        if self.progress is not None:
            self.progress(module.id, "start", {})
        try:
            if self.down:
                failed = self._failed(module, start, "unreachable", self.down)
                return _Pending(module, start, lock, {}, False, 1, failed, asked, locked_at)
            fields, backed_up = self._module_side(module, start)
        except BaseException:
            lock.release()
            raise
        return _Pending(
            module, start, lock, fields, backed_up, 0 if backed_up else 1, None, asked, locked_at
        )

    def finish(self, pending: _Pending) -> ModuleResult:
        """The node-side phase, with node credentials: stats, retention, then the lock is
        released, the status written and the metadata uploaded."""
        module = pending.module
        try:
            if pending.result is not None:
                result = pending.result
            else:
                try:
                    result = self._node_side(pending)
                except NsbackupError as exc:
                    result = self._failed(module, pending.start, "fatal", str(exc))
        finally:
            unlocked_at = time.time()
            if pending.lock is not None:
                pending.lock.release()
        if pending.locked_at is not None:
            result = attrs.evolve(
                result,
                waited=round(pending.locked_at - pending.asked, 3),
                locked_at=pending.locked_at,
                unlocked_at=unlocked_at,
            )
        result = self._record(module, result)
        if self.progress is not None:
            self.progress(module.id, "end", result.to_json())
        return result

    def _failed(self, module: Module, start: int, failure: str, message: str) -> ModuleResult:
        return ModuleResult(
            module_id=module.id,
            module_uuid=module.uuid,
            repository_path=module.repository_path,
            success=False,
            start=start,
            end=int(time.time()),
            failure=failure,
            message=message,
            errors=1,
        )

    def _module_side(self, module: Module, start: int) -> tuple[dict[str, Any], bool]:
        args = [
            "--json",
            "module",
            "backup",
            str(self.schedule.id),
            "--module",
            module.id,
            "--wait",
            "0",
            "--progress",
        ]

        def on_line(line: str) -> None:
            if line.startswith(PROGRESS_PREFIX) and self.progress is not None:
                try:
                    message = json.loads(line[len(PROGRESS_PREFIX) :])
                except json.JSONDecodeError:
                    return
                if isinstance(message, dict):
                    self.progress(module.id, "progress", message)

        try:
            outcome: RunnerResult | None = self.runner.run(
                module.id, args, self.settings, timeout=RESTIC_TIMEOUT, on_line=on_line
            )
            failure_text = ""
        except NsbackupError as exc:
            outcome, failure_text = None, str(exc)
        fields: dict[str, Any] = {
            "module_id": module.id,
            "module_uuid": module.uuid,
            "repository_path": module.repository_path,
            "start": start,
        }
        if outcome is None:
            backed_up = False
            fields.update(failure="runner", message=f"the module runner failed: {failure_text}")
        else:
            side = _module_side_result(outcome)
            code = side.get("exit_code") if isinstance(side.get("exit_code"), int) else None
            backed_up = outcome.returncode == 0 and code == 0
            fields.update(
                restic_exit_code=code,
                snapshot_id=str(side.get("snapshot_id") or ""),
                added_bytes=_int(side.get("added_bytes")),
                files_new=_int(side.get("files_new")),
                files_changed=_int(side.get("files_changed")),
            )
            if not backed_up:
                fields["failure"] = side.get("failure") or ("fatal" if code else "runner")
                fields["message"] = (
                    str(side.get("message") or "")
                    or _tail(outcome.stderr)
                    or (f"the module side exited {outcome.returncode}")
                )
        return fields, backed_up

    def _node_side(self, pending: _Pending) -> ModuleResult:
        module, fields, backed_up = pending.module, dict(pending.fields), pending.backed_up
        errors = pending.errors
        path = f"{self.schedule.repository}/{module.repository_path}"
        if not backed_up:
            # The destination may have died during the backup: do not let the node's stats
            # hang on it too.
            down = self.service._destination_down(self.schedule.repository)
            if down:
                fields["message"] = f"{fields.get('message') or 'backup failed'}; {down}"
                fields.setdefault("failure", "unreachable")
                return ModuleResult(**fields, success=False, end=int(time.time()), errors=errors)
        env, binary, version = self.service._restic(path, self.restic_password)
        stats = run_restic(["stats", "--json", "latest"], env, binary=binary, timeout=3600)
        stats_data: dict[str, Any] = {}
        if stats.returncode == 0:
            try:
                parsed = json.loads(stats.stdout)
                stats_data = parsed if isinstance(parsed, dict) else {}
            except json.JSONDecodeError:
                stats_data = {}
        if stats.returncode != 0 or not stats_data:
            errors += 1
            if backed_up:
                fields["failure"] = "stats"
                fields["message"] = f"restic stats failed: {restic_reason(stats.stderr)}"
        retention_applied = False
        if backed_up and self._within_retention(path):
            retention_applied = True  # nothing to forget: no restic process needed
        elif backed_up:
            keep = f"--keep-last={max(1, self.schedule.retention)}"
            forget = run_restic(
                ["forget", "--prune", keep], env, binary=binary, timeout=RESTIC_TIMEOUT
            )
            retention_applied = forget.returncode == 0
            if not retention_applied:
                errors += 1
                kind = classify_failure(forget.returncode, forget.stderr, version)
                fields["failure"] = "retention"
                fields["message"] = (
                    f"retention (forget --prune {keep}) failed: "
                    f"{explain_failure(kind, forget.returncode)}: {restic_reason(forget.stderr)}"
                )
        return ModuleResult(
            **fields,
            success=errors == 0,
            end=int(time.time()),
            stats={k: v for k, v in stats_data.items() if isinstance(v, int | float)},
            errors=errors,
            retention_applied=retention_applied,
        )

    def _within_retention(self, repository: str) -> bool:
        """True when the repository holds no more snapshots than the retention keeps (a
        listing through the gateway; when it cannot be read, retention runs anyway)."""
        if self.dav is None:
            return False
        try:
            count = len(self.dav.rest_names(repository, "snapshots"))
        except NsbackupError:
            return False
        return count <= max(1, self.schedule.retention)

    def _record(self, module: Module, result: ModuleResult) -> ModuleResult:
        """The status in Redis (leader) with its event, then the metadata file."""
        status: dict[str, Any] = {
            "start": result.start,
            "end": result.end,
            "errors": result.errors,
            "total_size": 0,
            "total_file_count": 0,
            "snapshots_count": 0,
            **result.stats,
            "exit_code": result.restic_exit_code,
            "failure": result.failure,
            "message": result.message,
            "snapshot_id": result.snapshot_id,
            "added_bytes": result.added_bytes,
        }
        try:
            self.service.store.write_module_status(self.node, self.schedule.id, module.id, status)
        except NsbackupError as exc:
            log.warning("status of %s not written (tried again at the end): %s", module.id, exc)
            with self._lock:
                self.unwritten[module.id] = status
        metadata = {
            "module_id": module.id,
            "module_ui_name": module.ui_name,
            "node_fqdn": socket.getfqdn(),
            "cluster_uuid": self.state.cluster_uuid,
            "uuid": module.uuid,
            "timestamp": int(time.time()),
            "success": result.success,
        }
        uploaded = False
        if self.dav is not None and not self.down:
            try:
                self.dav.put(
                    f"{self.schedule.repository}/{module.repository_path}.json",
                    json.dumps(metadata).encode(),
                    "application/json",
                )
                uploaded = True
            except NsbackupError as exc:
                log.warning("metadata of %s not uploaded: %s", module.id, exc)
        return attrs.evolve(result, metadata_uploaded=uploaded)

    def write_unwritten(self, patience: float) -> list[str]:
        """Write the statuses Redis refused during the run, trying again for at most
        ``patience`` seconds; return the modules whose status is still not written."""
        deadline = time.monotonic() + patience
        delay, reason = 0.5, ""
        while self.unwritten:
            for module_id, status in list(self.unwritten.items()):
                try:
                    self.service.store.write_module_status(
                        self.node, self.schedule.id, module_id, status
                    )
                except NsbackupError as exc:
                    reason = str(exc)
                    break
                del self.unwritten[module_id]
                log.info("status of %s written at the end of the run", module_id)
            remaining = deadline - time.monotonic()
            if not self.unwritten or remaining <= 0:
                break
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)
        if self.unwritten:
            log.error(
                "status of %s not written to Redis (tried for %g s): %s",
                ", ".join(self.unwritten),
                patience,
                reason,
            )
        return list(self.unwritten)


def _status_retry() -> float:
    try:
        value = float(os.environ.get("NSBACKUP_STATUS_RETRY") or STATUS_RETRY)
    except ValueError:
        return STATUS_RETRY
    return value if 0 <= value < float("inf") else STATUS_RETRY


def _pipeline(work: _ModuleWork, modules: Sequence[Module], jobs: int) -> list[ModuleResult]:
    """Up to ``jobs`` module sides at once; each module's node-side phase (stats, retention,
    status, metadata) runs as soon as its backup ends, beside the next modules' backups (other
    repositories), so the node's work does not hold the next module up. Results come back in
    the modules' order."""
    with (
        ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="module") as backups,
        ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="finish") as finishers,
    ):
        finished: list[Future[ModuleResult]] = []
        for module in modules:
            done: Future[ModuleResult] = Future()
            finished.append(done)

            def chain(started: Future[_Pending], done: Future[ModuleResult] = done) -> None:
                try:
                    pending = started.result()
                except BaseException as exc:
                    done.set_exception(exc)
                    return
                try:
                    following = finishers.submit(work.finish, pending)
                except RuntimeError:  # the run is being stopped: finish here, lock and status
                    try:
                        done.set_result(work.finish(pending))
                    except BaseException as exc:
                        done.set_exception(exc)
                    return
                following.add_done_callback(lambda f: _copy(f, done))

            backups.submit(work.backup, module).add_done_callback(chain)
        try:
            return [f.result() for f in finished]
        except BaseException:
            # Stopped (a signal): the children are ending; let every module record its
            # failure and give its lock back before leaving.
            for future in finished:
                with contextlib.suppress(BaseException):
                    future.exception()
            raise


def _copy(source: Future[ModuleResult], target: Future[ModuleResult]) -> None:
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _module_side_result(outcome: RunnerResult) -> dict[str, Any]:
    """The module side's JSON (a result, or an error document) from its standard output."""
    text = outcome.stdout.strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {"message": text[-300:]}
    if isinstance(data, list):  # a validation-error list
        messages = [str(e.get("message") or e.get("error")) for e in data if isinstance(e, dict)]
        return {"failure": "fatal", "message": "; ".join(messages)}
    if isinstance(data, dict) and "error" in data and "exit_code" not in data:
        return {"failure": "fatal", "message": str(data.get("message") or data["error"])}
    return data if isinstance(data, dict) else {}


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _valid_subset(value: str) -> bool:
    import re

    return bool(
        re.fullmatch(r"[1-9][0-9]{0,5}/[1-9][0-9]{0,5}", value)
        or re.fullmatch(r"(100|[1-9]?[0-9](\.[0-9]+)?)%", value)
        or re.fullmatch(r"[1-9][0-9]{0,9}[KMGT]?", value)
    )


def local_modules(state: ClusterState, schedule: Schedule, node: str) -> Sequence[Module]:
    return [
        state.modules[mid]
        for mid in schedule.instances
        if mid in state.modules and state.modules[mid].node == node
    ]
