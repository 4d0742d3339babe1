"""Backup schedules (``cluster/backup/<id>``): add, alter, remove, list (ref §6.2, §7.1)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from nsbackup.errors import NotFound, Unreachable, ValidationFailed
from nsbackup.model import CONTROL_CHARS, ClusterState, FieldError, Schedule, field_error
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
        if not isinstance(payload, Mapping):
            raise ValidationFailed(
                [FieldError("", "", None, "type", "the request must be a JSON object")]
            )
        errors: list[FieldError] = []
        known = {
            "id",
            "name",
            "repository",
            "schedule",
            "schedule_hint",
            "retention",
            "instances",
            "enabled",
        }
        for key in payload:
            if key not in known:
                errors.append(
                    field_error(
                        str(key), str(key), None, "additionalProperties", f"unknown field {key!r}"
                    )
                )
        required = ["name", "schedule", "retention", "instances", "enabled"]
        if not alter:
            required.append("repository")
        for key in required:
            if key not in payload:
                errors.append(field_error(key, key, None, "required", f"{key} is required"))
        out: dict[str, Any] = {}
        name = payload.get("name", "")
        if not isinstance(name, str) or CONTROL_CHARS.search(name) or len(name) > 256:
            errors.append(
                field_error(
                    "name",
                    "name",
                    None,
                    "pattern",
                    "name must be a string of at most 256 characters without control characters",
                )
            )
        elif alter and "name" in payload and not name:
            errors.append(field_error("name", "name", name, "minLength", "name is empty"))
        out["name"] = name if isinstance(name, str) else ""
        if alter:
            assert current is not None
            repository = payload.get("repository", current.repository)
            if repository != current.repository:
                errors.append(
                    field_error(
                        "repository",
                        "repository",
                        repository,
                        "backup_repository_immutable",
                        "the destination of a backup cannot be changed",
                    )
                )
        else:
            repository = payload.get("repository")
            if not isinstance(repository, str) or repository not in state.destinations:
                errors.append(
                    field_error(
                        "repository",
                        "repository",
                        repository,
                        "backup_repository_not_found",
                        f"destination {repository!r} not found",
                    )
                )
        out["repository"] = repository
        schedule = payload.get("schedule")
        if (
            not isinstance(schedule, str)
            or not 0 < len(schedule) <= MAX_SCHEDULE
            or CONTROL_CHARS.search(schedule)
            or not check_calendar(schedule)
        ):
            errors.append(
                field_error(
                    "schedule",
                    "schedule",
                    schedule,
                    "bad_schedule_format",
                    "schedule must be a systemd OnCalendar expression of "
                    f"1 to {MAX_SCHEDULE} characters (systemd-analyze "
                    "calendar)",
                )
            )
        out["schedule"] = schedule
        retention = payload.get("retention")
        if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
            errors.append(
                field_error(
                    "retention",
                    "retention",
                    retention,
                    "minimum",
                    "retention must be an integer >= 1 (snapshots kept)",
                )
            )
        out["retention"] = retention
        enabled = payload.get("enabled")
        if not isinstance(enabled, bool):
            errors.append(
                field_error("enabled", "enabled", enabled, "type", "enabled must be true or false")
            )
        out["enabled"] = enabled
        instances = payload.get("instances")
        if not isinstance(instances, list) or not all(isinstance(i, str) and i for i in instances):
            errors.append(
                field_error(
                    "instances",
                    "instances",
                    instances,
                    "type",
                    "instances must be a list of module ids",
                )
            )
            instances = []
        for mid in instances:
            if mid not in state.modules:
                errors.append(
                    field_error(
                        "instances",
                        "instances",
                        mid,
                        "module_not_found",
                        f"module {mid!r} not found",
                    )
                )
        out["instances"] = tuple(dict.fromkeys(instances))
        hint = payload.get("schedule_hint", current.schedule_hint if current else {})
        if not isinstance(hint, Mapping):
            errors.append(
                field_error(
                    "schedule_hint",
                    "schedule_hint",
                    None,
                    "type",
                    "schedule_hint must be an object",
                )
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
            backups.append(
                {
                    "id": bid,
                    "name": sched.name,
                    "repository": sched.repository,
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
