"""Built-in metric sink ``prometheus``: node_exporter textfile-collector files (ref §5.5).

Per schedule, in the metrics directory (``Settings.metrics_dir``):

- ``backup<id>.prom``, rewritten after every run: NS8's ``node_backup_status`` gauge, exactly
  as NS8 writes it (existing NS8 alert rules keep working), plus ``nsbackup_backup_*`` gauges;
- ``backup<id>-check.prom``, rewritten after every ``backup check``. A check is not under the
  run's lock, so it has a file of its own: each file has a single writer and no
  read-modify-write race.

Every series carries the labels ``id`` and ``name`` of NS8's gauge, and every family has the
same HELP, TYPE and label names in every file (node_exporter refuses a family whose label
names differ between files). There is no ``node`` label: the node is the scrape target, and
NS8's Prometheus (ns8-metrics) already gives each node_exporter target a ``node`` label that a
label in the file would collide with.

Files are written atomically (a hidden temporary file in the same directory, then a rename)
and made through ``prometheus_client`` (its serializer escapes label values); the directory
is created on demand. ``prometheus_client`` is imported on first use: loading the plugin stays
cheap for commands that never write metrics.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from nsbackup import hookimpl
from nsbackup.api import DEFAULT_METRICS_DIR
from nsbackup.errors import NsbackupError
from nsbackup.files import write_atomic
from nsbackup.plugins import MetricSink

if TYPE_CHECKING:
    from nsbackup.runs.report import CheckReport, RunReport

log = logging.getLogger(__name__)

NS8_STATUS = "node_backup_status"
LAST_SUCCESS = "nsbackup_backup_last_success_timestamp_seconds"
BASE_LABELS = ("id", "name")
FILE_MODE = 0o644  # node_exporter may run as another user
_FILE = re.compile(r"backup(?P<id>[0-9]+)(?P<check>-check)?\.prom")
# prometheus_client escapes backslash, double quote and newline; the other control characters
# would reach the file raw (SPEC §6: CR and NUL never reach a file).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


@attrs.frozen
class Family:
    """One gauge family: its name, HELP text and labels beyond :data:`BASE_LABELS`."""

    name: str
    help: str
    labels: tuple[str, ...] = ()


RUN_FAMILIES = (
    Family(NS8_STATUS, "Status of the backup (0 = failure, 1 = success)"),
    Family(
        LAST_SUCCESS,
        "End of the last run where every local module succeeded (Unix time; 0 = never)",
    ),
    Family(
        "nsbackup_backup_last_run_timestamp_seconds",
        "End of the last run, whatever its outcome (Unix time)",
    ),
    Family("nsbackup_backup_duration_seconds", "Duration of the last run"),
    Family(
        "nsbackup_backup_added_bytes",
        "Bytes the last run added to the repositories (restic's data_added, all modules)",
    ),
    Family(
        "nsbackup_backup_modules",
        "Local modules of the last run that succeeded (state=ok) or failed (state=failed)",
        ("state",),
    ),
    Family(
        "nsbackup_backup_module_status",
        "Status of the module in the last run (0 = failure, 1 = success)",
        ("module",),
    ),
    Family(
        "nsbackup_backup_module_restic_exit_code",
        "restic's exit code for the module in the last run (no sample when restic never ran)",
        ("module",),
    ),
    Family(
        "nsbackup_backup_module_duration_seconds",
        "Duration of the module in the last run: lock wait, backup, stats and retention",
        ("module",),
    ),
)
CHECK_FAMILIES = (
    Family(
        "nsbackup_backup_last_check_timestamp_seconds",
        "End of the last backup check (Unix time)",
    ),
    Family(
        "nsbackup_backup_check_ok",
        "Verdict of the last backup check (0 = problems found, 1 = every repository is sound)",
    ),
    Family(
        "nsbackup_backup_check_repositories",
        "Repositories of the last backup check found sound (state=ok) or not (state=failed)",
        ("state",),
    ),
)


def run_file(backup_id: int) -> str:
    return f"backup{int(backup_id)}.prom"


def check_file(backup_id: int) -> str:
    return f"backup{int(backup_id)}-check.prom"


def label_value(value: object) -> str:
    """A label value prometheus_client can serialize without letting a control character
    other than newline (which it escapes) or an unencodable character reach the file."""
    text = _CONTROL.sub(" ", str(value))
    return text.encode("utf-8", "replace").decode("utf-8")


# -- rendering (pure) ---------------------------------------------------------------------------


def _render(
    families: Sequence[Family],
    backup_id: int,
    name: str,
    fill: Callable[[dict[str, Any], dict[str, str]], None],
) -> bytes:
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    gauges = {
        f.name: Gauge(f.name, f.help, [*BASE_LABELS, *f.labels], registry=registry)
        for f in families
    }
    fill(gauges, {"id": str(int(backup_id)), "name": label_value(name)})
    return generate_latest(registry)


def render_run(report: RunReport, last_success: float) -> bytes:
    """``backup<id>.prom`` for ``report``; ``last_success`` is the previous success time, kept
    when this run failed."""
    success = report.outcome == "success"

    def fill(g: dict[str, Any], base: dict[str, str]) -> None:
        g[NS8_STATUS].labels(**base).set(1 if success else 0)
        g[LAST_SUCCESS].labels(**base).set(report.end if success else last_success)
        g["nsbackup_backup_last_run_timestamp_seconds"].labels(**base).set(report.end)
        g["nsbackup_backup_duration_seconds"].labels(**base).set(report.duration)
        g["nsbackup_backup_added_bytes"].labels(**base).set(report.added_bytes)
        ok = sum(1 for m in report.modules if m.success)
        g["nsbackup_backup_modules"].labels(**base, state="ok").set(ok)
        g["nsbackup_backup_modules"].labels(**base, state="failed").set(len(report.modules) - ok)
        for m in report.modules:
            module = {**base, "module": label_value(m.module_id)}
            g["nsbackup_backup_module_status"].labels(**module).set(1 if m.success else 0)
            if m.restic_exit_code is not None:
                code = g["nsbackup_backup_module_restic_exit_code"]
                code.labels(**module).set(m.restic_exit_code)
            g["nsbackup_backup_module_duration_seconds"].labels(**module).set(m.duration)

    return _render(RUN_FAMILIES, report.backup_id, report.name, fill)


def render_check(report: CheckReport) -> bytes:
    """``backup<id>-check.prom`` for ``report``."""

    def fill(g: dict[str, Any], base: dict[str, str]) -> None:
        g["nsbackup_backup_last_check_timestamp_seconds"].labels(**base).set(report.end)
        g["nsbackup_backup_check_ok"].labels(**base).set(1 if report.ok else 0)
        ok = sum(1 for r in report.repositories if r.ok)
        repositories = g["nsbackup_backup_check_repositories"]
        repositories.labels(**base, state="ok").set(ok)
        repositories.labels(**base, state="failed").set(len(report.repositories) - ok)

    return _render(CHECK_FAMILIES, report.backup_id, report.name, fill)


def previous_success(path: Path) -> float:
    """The last success time recorded in ``path`` (0 when none). A file NS8's own run-backup
    wrote says success without a time: its modification time is when that run ended."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
    except OSError as exc:
        log.warning("cannot read %s, last success time lost: %s", path, exc)
        return 0.0
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (LAST_SUCCESS, NS8_STATUS):
                    values[sample.name] = float(sample.value)
    except Exception as exc:  # a damaged file must not stop the new one being written
        log.warning("cannot parse %s, last success time lost: %s", path, exc)
        return 0.0
    if LAST_SUCCESS in values:
        found = values[LAST_SUCCESS]
        return found if math.isfinite(found) and found >= 0 else 0.0
    return mtime if values.get(NS8_STATUS) == 1 else 0.0


# -- files --------------------------------------------------------------------------------------


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once: readers see the old file or the new one, never a
    part. The temporary file is hidden and does not end in ``.prom`` (node_exporter reads only
    ``*.prom``), and it is removed when anything fails; the rename is durable (ref §5.5)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, FILE_MODE)


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class PrometheusSink:
    """The ``prometheus`` metric sink (see the module docstring and docs/operations.md)."""

    name = "prometheus"

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory or DEFAULT_METRICS_DIR)

    def configure(self, settings: Any) -> None:
        """Take ``settings.metrics_dir`` (``NSBACKUP_METRICS_DIR``, ``--metrics-dir``)."""
        directory = getattr(settings, "metrics_dir", None)
        if directory:
            self.directory = Path(directory)

    def record(self, report: RunReport) -> None:
        """Rewrite ``backup<id>.prom`` after a run.

        ``disabled``: both files of the schedule are removed (the core purges them too).
        ``no_local_modules``: ``backup<id>.prom`` is removed. NS8 leaves it untouched, so once a
        schedule's last module leaves a node, that node exports its last verdict and last
        success time forever and the alerts on them never resolve; a node without local
        modules has no verdict to export. The check file stays (a check covers every
        repository of the schedule, wherever its module runs).
        """
        path = self.directory / run_file(report.backup_id)
        try:
            if report.outcome == "disabled":
                _remove(path)
                _remove(self.directory / check_file(report.backup_id))
                return
            if report.outcome == "no_local_modules":
                _remove(path)
                return
            data = render_run(report, previous_success(path))
            write_atomically(path, data)
        except OSError as exc:
            raise NsbackupError(f"cannot write {path}: {exc.strerror or exc}") from None

    def record_check(self, report: CheckReport) -> None:
        """Rewrite ``backup<id>-check.prom`` after a ``backup check``."""
        path = self.directory / check_file(report.backup_id)
        try:
            write_atomically(path, render_check(report))
        except OSError as exc:
            raise NsbackupError(f"cannot write {path}: {exc.strerror or exc}") from None

    def purge(self, enabled_ids: Iterable[int]) -> list[str]:
        """Remove every ``backup<id>.prom`` and ``backup<id>-check.prom`` whose id is not in
        ``enabled_ids`` (NS8's ``20purge_backup_prom``); return the names removed. Other files
        (other collectors', ``backupX.prom`` with a non-numeric X) are never touched."""
        enabled = {int(i) for i in enabled_ids}
        removed: list[str] = []
        try:
            entries = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return removed
        except OSError as exc:
            raise NsbackupError(f"cannot list {self.directory}: {exc.strerror or exc}") from None
        failures: list[str] = []
        for entry in entries:
            match = _FILE.fullmatch(entry)
            if match is None or int(match["id"]) in enabled:
                continue
            path = self.directory / entry
            if path.is_dir() and not path.is_symlink():
                continue
            try:
                if _remove(path):
                    removed.append(entry)
            except OSError as exc:  # the others are still removed
                failures.append(f"{entry}: {exc.strerror or exc}")
        if failures:
            raise NsbackupError(f"cannot remove from {self.directory}: {'; '.join(failures)}")
        return removed


@hookimpl
def nsbackup_register_metric_sinks(register: Callable[[MetricSink], None]) -> None:
    register(PrometheusSink())
