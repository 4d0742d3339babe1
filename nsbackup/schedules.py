"""Backup schedules (``cluster/backup/<id>``): add, alter, remove, list (ref §6.2, §7.1)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from nsbackup.errors import NotFound, Unreachable, ValidationFailed
from nsbackup.model import ClusterState, FieldError, Schedule, check_text, field_error
from nsbackup.results import (
    BackupInstance,
    BackupItem,
    BackupList,
    ScheduleAltered,
    ScheduleRemoved,
    UnconfiguredInstance,
)
from nsbackup.store import Store

MAX_SCHEDULE = 64
MAX_NAME = 256
MAX_MODULE_ID = 64
MAX_INSTANCES = 1000
MAX_RETENTION = 1_000_000
MAX_HINT = 4096
_FIELDS = {
    "id",
    "name",
    "repository",
    "schedule",
    "schedule_hint",
    "retention",
    "instances",
    "enabled",
}


def check_calendar(expression: str) -> bool:
    """True when systemd accepts ``expression`` as an ``OnCalendar=`` value."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        raise Unreachable(
            "systemd-analyze not found: it checks schedule expressions (install systemd)"
        )
    result = subprocess.run(
        [binary, "calendar", expression],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode == 0


class ScheduleService:
    """Backup schedules with NS8's payloads and outputs; reached as ``cluster.schedules``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _parse(
        self, payload: Any, state: ClusterState, *, alter: bool, current: Schedule | None = None
    ) -> dict[str, Any]:
        """Check an add/alter-backup payload against ``state``; raise :class:`ValidationFailed`
        with one error per bad field. A field that is missing or of the wrong type gets that
        one error, never a second one about its value."""
        if not isinstance(payload, Mapping):
            raise ValidationFailed(
                [FieldError("", "", None, "type", "the request must be a JSON object")]
            )
        errors: list[FieldError] = []

        def error(key: str, value: Any, code: str, message: str) -> None:
            errors.append(field_error(key, key, value, code, message))

        for key in payload:
            if key not in _FIELDS:
                error(str(key), None, "additionalProperties", f"unknown field {str(key)[:64]!r}")
        required = ["name", "schedule", "retention", "instances", "enabled"]
        if not alter:
            required.append("repository")
        for key in required:
            if key not in payload:
                error(key, None, "required", f"{key} is required")
        out: dict[str, Any] = {}

        name = payload.get("name", "")
        problem = check_text("name", name, MAX_NAME)
        if problem:
            error("name", name, *problem)
        elif alter and "name" in payload and not name:
            error("name", name, "minLength", "name is empty")
        out["name"] = name if problem is None else ""

        if alter:
            assert current is not None
            repository = payload.get("repository", current.repository)
            if repository != current.repository:
                error(
                    "repository",
                    repository,
                    "backup_repository_immutable",
                    "the destination of a backup cannot be changed",
                )
        else:
            repository = payload.get("repository")
            problem = None if repository is None else check_text("repository", repository, 64)
            if problem:
                error("repository", repository, *problem)
            elif repository is not None and repository not in state.destinations:
                error(
                    "repository",
                    repository,
                    "backup_repository_not_found",
                    f"destination {repository!r} not found",
                )
        out["repository"] = repository

        schedule = payload.get("schedule")
        if "schedule" in payload:
            problem = check_text("schedule", schedule, MAX_SCHEDULE)
            if problem is None and not schedule:
                problem = ("minLength", "schedule is empty")
            if problem is None and not check_calendar(str(schedule)):
                problem = (
                    "bad_schedule_format",
                    "schedule must be a systemd OnCalendar expression (systemd-analyze "
                    "calendar), e.g. daily or *-*-* 01:00:00",
                )
            if problem:
                error("schedule", schedule, *problem)
        out["schedule"] = schedule

        retention = payload.get("retention")
        if "retention" in payload:
            if isinstance(retention, bool) or not isinstance(retention, int):
                error("retention", retention, "type", "retention must be an integer")
            elif not 1 <= retention <= MAX_RETENTION:
                error(
                    "retention",
                    retention,
                    "minimum" if retention < 1 else "maximum",
                    f"retention must be from 1 to {MAX_RETENTION} (snapshots kept)",
                )
        out["retention"] = retention

        enabled = payload.get("enabled")
        if "enabled" in payload and not isinstance(enabled, bool):
            error("enabled", enabled, "type", "enabled must be true or false")
        out["enabled"] = enabled

        instances = payload.get("instances")
        out["instances"] = ()
        if "instances" in payload:
            if not isinstance(instances, list):
                error("instances", instances, "type", "instances must be a list of module ids")
            elif len(instances) > MAX_INSTANCES:
                error(
                    "instances",
                    None,
                    "maxItems",
                    f"instances has more than {MAX_INSTANCES} module ids",
                )
            else:
                seen: set[str] = set()
                for mid in instances:
                    problem = check_text("instances", mid, MAX_MODULE_ID)
                    if problem is None and not mid:
                        problem = ("minLength", "an instance is an empty string")
                    if problem:
                        error("instances", mid, *problem)
                        continue
                    if mid in seen:
                        error("instances", mid, "uniqueItems", f"module {mid!r} is listed twice")
                    elif mid not in state.modules:
                        error("instances", mid, "module_not_found", f"module {mid!r} not found")
                    seen.add(mid)
                out["instances"] = tuple(instances)

        hint = payload.get("schedule_hint", current.schedule_hint if current else {})
        if not isinstance(hint, Mapping):
            error("schedule_hint", hint, "type", "schedule_hint must be an object")
        elif len(json.dumps(hint, ensure_ascii=False)) > MAX_HINT:
            error(
                "schedule_hint",
                None,
                "maxLength",
                f"schedule_hint is longer than {MAX_HINT} characters as JSON",
            )
        out["schedule_hint"] = hint if isinstance(hint, Mapping) else {}
        if errors:
            raise ValidationFailed(errors)
        return out

    def add(self, payload: Any) -> int:
        """NS8's add-backup: validate, check that the caller may write schedules, take the next
        id and save it with its event. Return the id."""
        state = self.store.load()
        values = self._parse(payload, state, alter=False)
        schedule = Schedule(
            id=0,
            name=values["name"],
            repository=values["repository"],
            schedule=values["schedule"],
            retention=values["retention"],
            enabled=values["enabled"],
            instances=values["instances"],
            schedule_hint=values["schedule_hint"],
        )
        self.store.add_schedule(schedule, dry_run=True)
        return self.store.add_schedule(schedule).id

    def alter(self, payload: Any) -> ScheduleAltered:
        """NS8's alter-backup (the destination cannot change). Return what changed."""
        bid = _backup_id(payload, "backup_object_not_found")
        state = self.store.load()
        current = state.schedules.get(bid)
        if current is None:
            raise _not_found(bid, "backup_object_not_found")
        values = self._parse(payload, state, alter=True, current=current)
        altered = Schedule(
            id=bid,
            name=values["name"],
            repository=current.repository,
            schedule=values["schedule"],
            retention=values["retention"],
            enabled=values["enabled"],
            instances=values["instances"],
            uinstances=current.uinstances,
            schedule_hint=values["schedule_hint"],
        )
        changed = [
            name
            for name in ("name", "schedule", "retention", "enabled", "instances", "schedule_hint")
            if getattr(current, name) != getattr(altered, name)
        ]
        if changed:
            self.store.write_schedule(altered)
        return {"id": bid, "changed": changed}

    def remove(self, bid: int | str) -> ScheduleRemoved:
        """NS8's remove-backup, plus the schedule's status keys on every node."""
        number = _backup_id({"id": bid}, "backup_not_found")
        state = self.store.load()
        if number not in state.schedules:
            raise _not_found(number, "backup_not_found")
        self.store.remove_schedule(number, state.nodes)
        return {"id": number}

    def list(self) -> BackupList:
        """NS8's list-backups output, read in a constant number of round trips."""
        state = self.store.load(statuses=True)
        status_of: dict[tuple[int, str], dict[str, Any]] = {}
        for (_, bid), per_module in sorted(state.statuses.items()):
            for mid, status in per_module.items():
                if isinstance(status, dict):
                    shown = dict(status)
                    shown["success"] = shown.pop("errors", 1) == 0
                    status_of[(bid, mid)] = shown
        configured: set[str] = set()
        backups: list[BackupItem] = []
        for bid, sched in sorted(state.schedules.items()):
            items: list[BackupInstance] = []
            for mid in sched.instances:
                configured.add(mid)
                module = state.modules.get(mid)
                if module is None or not module.uuid:
                    continue
                items.append(
                    {
                        "module_id": mid,
                        "ui_name": module.ui_name,
                        "repository_path": module.repository_path,
                        "status": status_of.get((bid, mid)),
                    }
                )
            destination = state.destinations.get(sched.repository)
            backups.append(
                {
                    "id": bid,
                    "name": sched.name,
                    "repository": sched.repository,
                    "repository_name": destination.name if destination else "",
                    "schedule": sched.schedule,
                    "schedule_hint": dict(sched.schedule_hint),
                    "retention": sched.retention,
                    "instances": items,
                    "enabled": sched.enabled,
                }
            )
        unconfigured: list[UnconfiguredInstance] = [
            {"id": m.id, "ui_name": m.ui_name}
            for m in state.modules.values()
            if m.id not in configured and "no_data_backup" not in m.flags
        ]
        return {"backups": backups, "unconfigured_instances": unconfigured}


def _backup_id(payload: Any, error: str) -> int:
    raw = payload.get("id") if isinstance(payload, Mapping) else None
    if (
        isinstance(raw, bool)
        or not isinstance(raw, int | str)
        or (isinstance(raw, str) and not re.fullmatch(r"-?[0-9]{1,18}", raw))
    ):
        raise ValidationFailed(
            [FieldError("id", "id", raw, "type", "id must be a backup id (a positive integer)")]
        )
    if not re.fullmatch(r"[0-9]{1,18}", str(raw)) or int(raw) < 1:
        raise NotFound([FieldError("id", "id", raw, error, f"backup {raw!r} not found")])
    return int(raw)


def _not_found(bid: int, error: str) -> NotFound:
    return NotFound([FieldError("id", "id", bid, error, f"backup {bid} not found")])
