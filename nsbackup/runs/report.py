"""What a run, a check and a module backup report: the value given to metric sinks and
``nsbackup_after_run``, and (``to_json()``) what ``nsbackup backup run --json`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

# Why a module failed, beside restic's own classification (nsbackup.restic.Failure).
MODULE_FAILURES = (
    "partial",  # restic 3: some source data could not be read
    "no_repository",  # restic 10
    "locked",  # restic 11: the repository is locked by another restic
    "wrong_password",  # restic 12
    "fatal",  # any other restic failure (also 401/403 from the gateway)
    "still_locked",  # another run held the module past --wait
    "unreachable",  # the destination does not answer through the gateway
    "runner",  # the module runner could not run the module side
    "stats",  # restic stats (node credentials) failed
    "retention",  # restic forget --prune (node credentials) failed
)


@attrs.frozen
class ModuleResult:
    """One module of one run."""

    module_id: str
    module_uuid: str
    repository_path: str
    success: bool
    start: int
    end: int
    failure: str | None = None
    """One of :data:`MODULE_FAILURES`, or ``None``."""
    message: str = ""
    restic_exit_code: int | None = None
    """restic's exit code of the module's backup (``None`` when it never ran)."""
    snapshot_id: str = ""
    added_bytes: int = 0
    files_new: int = 0
    files_changed: int = 0
    stats: Mapping[str, Any] = attrs.field(factory=dict)
    """``restic stats --json latest``: ``total_size``, ``total_file_count``,
    ``snapshots_count``."""
    errors: int = 0
    """NS8's error count (ref §1.2): +1 stats failed, +1 backup failed, +1 retention failed."""
    metadata_uploaded: bool = False
    retention_applied: bool = False
    waited: float = 0.0
    """Seconds spent waiting for the module (another run held it)."""
    locked_at: float | None = None
    """When this run took the module's lock, and when it gave it back (epoch seconds)."""
    unlocked_at: float | None = None

    @property
    def duration(self) -> int:
        return max(0, self.end - self.start)

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["stats"] = dict(self.stats)
        data["duration"] = self.duration
        return data


OUTCOMES = ("success", "partial", "failure", "disabled", "no_local_modules")


@attrs.frozen
class RunReport:
    """One ``backup run`` of one schedule on one node."""

    backup_id: int
    name: str
    node_id: str
    destination: str
    start: float
    end: float
    outcome: str
    """One of :data:`OUTCOMES`."""
    modules: tuple[ModuleResult, ...] = ()
    leader: bool = False
    notes: Mapping[str, Any] = attrs.field(factory=dict)
    """What lifecycle hooks added (e.g. the cluster dump upload on the leader)."""
    sink_failures: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def success(self) -> bool:
        return self.outcome in ("success", "disabled", "no_local_modules")

    @property
    def exit_code(self) -> int:
        """0 every local module succeeded (or nothing to do), 3 some failed, 1 all failed; 5
        when a module's status could not be written to Redis even at the end of the run (what
        NS8 shows of the run is then missing)."""
        if self.notes.get("status_not_written"):
            return 5
        return {"partial": 3, "failure": 1}.get(self.outcome, 0)

    @property
    def added_bytes(self) -> int:
        return sum(m.added_bytes for m in self.modules)

    def to_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "name": self.name,
            "node_id": self.node_id,
            "destination": self.destination,
            "start": self.start,
            "end": self.end,
            "duration": round(self.duration, 3),
            "outcome": self.outcome,
            "success": self.success,
            "exit_code": self.exit_code,
            "leader": self.leader,
            "added_bytes": self.added_bytes,
            "modules": [m.to_json() for m in self.modules],
            "notes": dict(self.notes),
            "sink_failures": dict(self.sink_failures),
        }


def outcome_of(modules: tuple[ModuleResult, ...]) -> str:
    if not modules:
        return "no_local_modules"
    ok = sum(1 for m in modules if m.success)
    if ok == len(modules):
        return "success"
    return "partial" if ok else "failure"


@attrs.frozen
class RepositoryCheck:
    """``restic check`` of one module's repository."""

    module_id: str
    module_uuid: str
    repository_path: str
    ok: bool
    restic_exit_code: int | None
    message: str = ""
    read_data_subset: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class CheckReport:
    """``backup check``: every repository of one schedule, checked with node credentials."""

    backup_id: int
    name: str
    node_id: str
    destination: str
    start: float
    end: float
    repositories: tuple[RepositoryCheck, ...] = ()
    sink_failures: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.repositories)

    @property
    def exit_code(self) -> int:
        if not self.repositories or self.ok:
            return 0
        return 3 if any(r.ok for r in self.repositories) else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "name": self.name,
            "node_id": self.node_id,
            "destination": self.destination,
            "start": self.start,
            "end": self.end,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "repositories": [r.to_json() for r in self.repositories],
            "sink_failures": dict(self.sink_failures),
        }
