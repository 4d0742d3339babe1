"""Restores (ref §8.3): revocable grants and module restores.

A module may read another module's repository only while a grant says so
(``private/nodes/restore_uuid``: new module UUID → source module UUID, which the gateway turns
into a ``modrepo.map`` line). ``restore run`` adds the grant a restore needs, runs the module
side (``nsbackup module restore``) through the module runner with the module's own
credentials, and revokes the grant when it ends, success or not — NS8 never cleaned them
(ref §14.15). Grants are written with the cluster's credentials (NS8's restore-module is a
cluster action), on the node that hosts the module.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from nsbackup.errors import NotFound, NsbackupError, ValidationFailed
from nsbackup.files import write_atomic
from nsbackup.model import FieldError

if TYPE_CHECKING:
    from nsbackup.api import Cluster
    from nsbackup.model import ClusterState, Module

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PATH = re.compile(r"([a-z][a-z0-9_-]{0,63})/(" + UUID.pattern + ")")
SNAPSHOT = re.compile(r"[0-9a-f]{8,64}")
PROGRESS_PREFIX = "nsbackup-progress "

log = logging.getLogger(__name__)


def _unknown(key: object) -> FieldError:
    return FieldError(
        str(key), str(key), None, "additionalProperties", f"unknown field {str(key)[:64]!r}"
    )


@attrs.frozen
class RestoreRequest:
    """``{"repository","path","snapshot"}`` (+ ``module`` on the node side), checked."""

    repository: str
    path: str
    snapshot: str
    """A snapshot id (8 to 64 hex digits) or ``latest``."""
    module: str = ""

    @property
    def app(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def source_uuid(self) -> str:
        return self.path.split("/", 1)[1]

    @classmethod
    def parse(cls, payload: Any, *, with_module: bool) -> RestoreRequest:
        if not isinstance(payload, Mapping):
            raise ValidationFailed.one("", None, "type", "the request must be a JSON object")
        known = {"repository", "path", "snapshot"} | ({"module"} if with_module else set())
        errors = [_unknown(k) for k in payload if k not in known]
        values: dict[str, str] = {}
        for key in sorted(known):
            value = payload.get(key, "" if key == "snapshot" else None)
            if not isinstance(value, str):
                errors.append(FieldError(key, key, None, "type", f"{key} must be a string"))
                continue
            values[key] = value
        checks = {
            "repository": (UUID, "repository must be a destination UUID"),
            "path": (PATH, "path must be <app>/<module uuid> (the repository's path)"),
            "module": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"), "module must be a module id"),
        }
        for key, (pattern, message) in checks.items():
            if key in values and not pattern.fullmatch(values[key]):
                shown = values[key][:80]
                errors.append(FieldError(key, key, shown, "pattern", message))
        snapshot = values.get("snapshot", "")
        if snapshot in ("", "latest"):
            snapshot = "latest"
        elif not SNAPSHOT.fullmatch(snapshot):
            errors.append(
                FieldError(
                    "snapshot",
                    "snapshot",
                    snapshot[:80],
                    "pattern",
                    "snapshot must be a snapshot id (8 to 64 hex digits), 'latest' or empty",
                )
            )
        if errors:
            raise ValidationFailed(errors)
        return cls(
            repository=values["repository"],
            path=values["path"],
            snapshot=snapshot,
            module=values.get("module", ""),
        )


class RestoreService:
    """``cluster.restore``: grants and module restores."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    # -- grants ---------------------------------------------------------------------------
    def grants(self) -> dict[str, Any]:
        """Every grant: ``{"grants": [{"module_uuid","source_uuid","module_id"}]}``."""
        state = self.cluster.store.load(details=False)
        by_uuid = {m.uuid: m.id for m in state.modules.values() if m.uuid}
        return {
            "grants": [
                {"module_uuid": new, "source_uuid": source, "module_id": by_uuid.get(new, "")}
                for new, source in sorted(state.restore_grants.items())
            ]
        }

    def grant(self, payload: Any) -> dict[str, Any]:
        """Let module ``module_uuid`` read the repository of ``source_uuid``:
        ``{"module_uuid","source_uuid"}``. The module must exist."""
        if not isinstance(payload, Mapping):
            raise ValidationFailed.one("", None, "type", "the request must be a JSON object")
        errors = [_unknown(k) for k in payload if k not in ("module_uuid", "source_uuid")]
        for key in ("module_uuid", "source_uuid"):
            value = payload.get(key)
            if value is None:
                errors.append(FieldError(key, key, None, "required", f"{key} is required"))
            elif not isinstance(value, str):
                errors.append(
                    FieldError(
                        key, key, repr(value)[:80], "type", f"{key} must be a string (a UUID)"
                    )
                )
            elif not UUID.fullmatch(value):
                errors.append(FieldError(key, key, value[:80], "pattern", f"{key} must be a UUID"))
        if errors:
            raise ValidationFailed(errors)
        module_uuid, source_uuid = payload["module_uuid"], payload["source_uuid"]
        state = self.cluster.store.load(details=False)
        if module_uuid not in {m.uuid for m in state.modules.values()}:
            raise NotFound(
                [
                    FieldError(
                        "module_uuid",
                        "module_uuid",
                        module_uuid,
                        "module_not_found",
                        f"no module has the UUID {module_uuid}",
                    )
                ]
            )
        if module_uuid == source_uuid:
            raise ValidationFailed.one(
                "source_uuid", source_uuid, "same_module", "a module reads its own repository"
            )
        by_uuid = {m.uuid: m for m in state.modules.values() if m.uuid}
        source = by_uuid.get(source_uuid)
        if source is not None and source.app != by_uuid[module_uuid].app:
            # The gateway maps a grant within the grantee's app: across apps it would name a
            # repository that does not exist and let nothing be restored.
            raise ValidationFailed.one(
                "source_uuid",
                source_uuid,
                "app_mismatch",
                f"{source_uuid} is module {source.id}, a {source.app}; module "
                f"{by_uuid[module_uuid].id} is a {by_uuid[module_uuid].app}",
            )
        self.cluster.store.write_restore_grant(module_uuid, source_uuid)
        return {"module_uuid": module_uuid, "source_uuid": source_uuid}

    def revoke(self, module_uuid: str) -> dict[str, Any]:
        """Remove the grant of ``module_uuid``."""
        grants = self.cluster.store.restore_grants()
        if module_uuid not in grants:
            raise NotFound(
                [
                    FieldError(
                        "module_uuid",
                        "module_uuid",
                        module_uuid,
                        "grant_not_found",
                        f"module {module_uuid} has no restore grant",
                    )
                ]
            )
        self.cluster.store.remove_restore_grant(module_uuid)
        return {"module_uuid": module_uuid, "source_uuid": grants[module_uuid]}

    # -- restore --------------------------------------------------------------------------
    def run(
        self,
        payload: Any,
        *,
        wait: float = 3600.0,
        runner: str | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Restore snapshot ``snapshot`` of ``<repository>/<path>`` into module ``module``
        (which lives on this node): grant when the source is another module's repository,
        run the module side, revoke the grant whatever happens, then give the module back
        to the schedules that name its UUID (``uinstances``)."""
        from nsbackup.runs.command import check_seconds
        from nsbackup.runs.locks import FileLock, LockTimeout

        check_seconds("wait", wait)
        request = RestoreRequest.parse(payload, with_module=True)
        node = self.cluster.node_id
        if not node:
            raise ValidationFailed.one(
                "node", None, "required", "the local node id is required (--node or NODE_ID)"
            )
        state = self.cluster.store.load(details=False)
        module = self._module(state, request, node)
        runs = self.cluster.runs
        chosen = runs.runner(runner)
        settings = runs.runner_settings()
        grant = module.uuid != request.source_uuid
        store = self.cluster.store
        if grant:
            store.write_restore_grant(module.uuid, request.source_uuid, dry_run=True)
        self.heal()
        lock = FileLock(self._locks / f"module-{module.id}.lock")
        try:
            lock.acquire(wait=wait)
        except LockTimeout as exc:
            from nsbackup.errors import Busy

            holder = f" (pid {exc.holder})" if exc.holder else ""
            raise Busy(
                f"module {module.id} is being backed up{holder}; still locked after {wait:g} s"
            ) from None
        started = time.time()
        journal = self._locks / f"restore-{module.id}.grant"
        previous: str | None = None
        try:
            # Under the module's lock: another restore into this module has ended (or died,
            # leaving its journal), so what is granted now is what this one must put back.
            self._heal_journal(journal)
            previous = store.restore_grant(module.uuid)
            if grant and previous != request.source_uuid:
                write_atomic(
                    journal,
                    json.dumps(
                        {
                            "module_uuid": module.uuid,
                            "source_uuid": request.source_uuid,
                            "previous": previous,
                        }
                    ),
                )
                store.write_restore_grant(module.uuid, request.source_uuid)
            data = json.dumps(
                {
                    "repository": request.repository,
                    "path": request.path,
                    "snapshot": request.snapshot,
                }
            )

            def on_line(line: str) -> None:
                if line.startswith(PROGRESS_PREFIX) and progress is not None:
                    try:
                        message = json.loads(line[len(PROGRESS_PREFIX) :])
                    except json.JSONDecodeError:
                        return
                    if isinstance(message, dict):
                        progress(message)

            outcome = chosen.run(
                module.id,
                [
                    "--json",
                    "module",
                    "restore",
                    "--data",
                    data,
                    "--module",
                    module.id,
                    "--progress",
                ],
                settings,
                timeout=24 * 3600.0,
                on_line=on_line,
            )
        finally:
            try:
                if journal.exists():
                    self._heal_journal(journal)
            finally:
                lock.release()
        side = _side_result(outcome.stdout)
        if outcome.returncode == 2 and isinstance(side, list):
            raise ValidationFailed(
                FieldError(
                    str(e.get("field", "")),
                    str(e.get("parameter", "")),
                    e.get("value"),
                    str(e.get("error", "invalid")),
                    str(e.get("message", "")),
                )
                for e in side
                if isinstance(e, dict)
            )
        if outcome.returncode != 0 or not isinstance(side, dict) or "error" in side:
            message = side.get("message") if isinstance(side, dict) else None
            raise NsbackupError(
                f"restore of {module.id} failed: "
                + str(message or outcome.stderr.strip()[-300:] or f"exit {outcome.returncode}")
            )
        relinked = store.relink_schedules(store.load(details=False), module.id, module.uuid)
        return {
            **side,
            "module_id": module.id,
            "granted": grant,
            "relinked_backups": relinked,
            "duration": round(time.time() - started, 3),
        }

    @property
    def _locks(self) -> Path:
        return Path(self.cluster.settings.state_dir) / "locks"

    def heal(self) -> list[str]:
        """Put back the grants of restores that died on this node (``kill -9``, a crash, the
        machine stopping): each restore journals the grant it adds, beside the module's
        lock, and removes the journal when it has revoked it. A journal whose module lock
        is free belongs to a dead restore. Returns the module ids healed; ``restore run``
        calls it first."""
        from nsbackup.runs.locks import FileLock, LockTimeout

        healed = []
        for journal in sorted(self._locks.glob("restore-*.grant")):
            module_id = journal.name[len("restore-") : -len(".grant")]
            lock = FileLock(self._locks / f"module-{module_id}.lock")
            try:
                lock.acquire(wait=0)
            except LockTimeout:
                continue  # a restore (or a backup) of it is running
            try:
                if journal.exists():
                    self._heal_journal(journal)
                    healed.append(module_id)
            finally:
                lock.release()
        return healed

    def _heal_journal(self, journal: Path) -> None:
        """Revoke the grant ``journal`` records, or put back the one it replaced, unless the
        grant has been changed since; then remove the journal. Called with the lock held."""
        try:
            entry = json.loads(journal.read_text())
            module_uuid, source = entry["module_uuid"], entry["source_uuid"]
            previous = entry.get("previous")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("removing unreadable restore journal %s", journal)
            journal.unlink(missing_ok=True)
            return
        store = self.cluster.store
        if store.restore_grant(module_uuid) == source:
            if previous:  # a grant that was there before the restore comes back
                store.write_restore_grant(module_uuid, previous)
            else:
                store.remove_restore_grant(module_uuid)
        journal.unlink(missing_ok=True)

    def _module(self, state: ClusterState, request: RestoreRequest, node: str) -> Module:
        module = state.modules.get(request.module)
        if module is None or not module.uuid:
            raise NotFound(
                [
                    FieldError(
                        "module",
                        "module",
                        request.module,
                        "module_not_found",
                        f"module {request.module} not found",
                    )
                ]
            )
        if module.node != node:
            raise ValidationFailed.one(
                "module",
                module.id,
                "module_not_local",
                f"module {module.id} lives on node {module.node}: run the restore there",
            )
        if request.repository not in state.destinations:
            raise NotFound(
                [
                    FieldError(
                        "repository",
                        "repository",
                        request.repository,
                        "backup_repository_not_found",
                        f"destination {request.repository} not found",
                    )
                ]
            )
        if request.app != module.app:
            raise ValidationFailed.one(
                "path",
                request.path,
                "app_mismatch",
                f"{request.path} holds {request.app} data; module {module.id} is a {module.app}",
            )
        return module


def _side_result(stdout: str) -> Any:
    try:
        return json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError:
        return {"error": "invalid_output", "message": stdout.strip()[-300:]}
