"""``nsbackup backup ...``: backup schedules (``cluster.schedules``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from nsbackup.cli.base import Context, add_data, add_gateway, check_directory, table

if TYPE_CHECKING:
    from nsbackup.results import BackupList


def add(ctx: Context) -> int:
    bid = ctx.cluster.schedules.add(ctx.data())
    ctx.emit(bid, str(bid))
    return 0


def alter(ctx: Context) -> int:
    result = ctx.cluster.schedules.alter(ctx.data())
    ctx.emit(result, f"backup {result['id']}: changed {', '.join(result['changed']) or 'nothing'}")
    return 0


def remove(ctx: Context) -> int:
    result = ctx.cluster.schedules.remove(ctx.args.id)
    ctx.emit(result, f"removed backup {result['id']}")
    return 0


def list_text(result: BackupList) -> str:
    """Each schedule with its destination, then its modules in columns (repository path and
    last run); then the modules no schedule backs up."""
    blocks = []
    for b in result["backups"]:
        destination = b["repository_name"] or "(destination not found)"
        lines = [
            f"backup {b['id']}  {b['name']}  ({'enabled' if b['enabled'] else 'DISABLED'})",
            f"  destination  {destination}  {b['repository']}",
            f"  schedule     {b['schedule']}, keeps the last {b['retention']} snapshot(s)",
        ]
        rows = []
        for item in b["instances"]:
            status = item["status"] or {}
            if not status:
                run, ended, size = "never run", "", ""
            else:
                run = "ok" if status.get("success") else "FAILED"
                ended = _utc(int(status.get("end", -1)))
                size = _size(int(status["total_size"])) if "total_size" in status else ""
            rows.append(
                (item["module_id"], item["ui_name"], item["repository_path"], run, ended, size)
            )
        if rows:
            headers = ("MODULE", "NAME", "REPOSITORY PATH", "LAST RUN", "ENDED", "SIZE")
            lines.append(table(headers, rows, indent="  "))
        else:
            lines.append("  no module")
        blocks.append("\n".join(lines))
    if not blocks:
        blocks.append("no backups")
    alone = result["unconfigured_instances"]
    if alone:
        shown = ", ".join(f"{m['id']} ({m['ui_name']})" if m["ui_name"] else m["id"] for m in alone)
        blocks.append(f"not in any backup: {shown}")
    return "\n\n".join(blocks)


def list_(ctx: Context) -> int:
    result = ctx.cluster.schedules.list()
    ctx.emit(result, list_text(result))
    return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def run_text(report: dict[str, Any]) -> str:
    modules = report["modules"]
    head = f"backup {report['backup_id']} ({report['name']}) on node {report['node_id']}: "
    if report["outcome"] == "disabled":
        return head + "disabled, nothing to do"
    if report["outcome"] == "no_local_modules":
        return head + "no module of this node, nothing to back up"
    ok = sum(1 for m in modules if m["success"])
    lines = [
        head + f"{ok} of {len(modules)} module(s) ok in {report['duration']:.1f} s, "
        f"{_size(report['added_bytes'])} added"
    ]
    width = max(len(m["module_id"]) for m in modules)
    for m in modules:
        if m["success"]:
            detail = f"snapshot {m['snapshot_id'][:8]}, {_size(m['added_bytes'])} added"
            lines.append(f"  {m['module_id']:<{width}}  ok      {detail}")
        else:
            lines.append(f"  {m['module_id']:<{width}}  FAILED  {m['failure']}: {m['message']}")
    return "\n".join(lines)


def run(ctx: Context) -> int:
    from nsbackup.cli.progress import progress_display
    from nsbackup.cli.signals import stop_children_on_signals

    if ctx.args.modules_dir:
        check_directory("modules-dir", ctx.args.modules_dir)
    if ctx.args.metrics_dir and os.path.lexists(ctx.args.metrics_dir):
        # One the sink would create (with its parents) is fine; a file there, or a directory
        # it may not write in, would only fail after the whole backup.
        check_directory("metrics-dir", ctx.args.metrics_dir)
    with stop_children_on_signals(), progress_display(ctx) as progress:
        report = ctx.cluster.runs.run(
            ctx.args.id, jobs=ctx.args.jobs, wait=ctx.args.wait, progress=progress
        )
    if report["outcome"] in ("disabled", "no_local_modules") and not ctx.json:
        print(run_text(report), file=ctx.err)
    else:
        ctx.emit(report, run_text(report))
    code: int = report["exit_code"]
    return code


def check(ctx: Context) -> int:
    report = ctx.cluster.runs.check(ctx.args.id, read_data_subset=ctx.args.read_data_subset)
    lines = [
        f"backup {report['backup_id']} ({report['name']}): "
        + ("every repository is sound" if report["ok"] else "PROBLEMS FOUND")
    ]
    rows = [
        (r["module_id"], r["repository_path"], "ok" if r["ok"] else f"FAILED  {r['message']}")
        for r in report["repositories"]
    ]
    if rows:
        lines.append(table(("MODULE", "REPOSITORY PATH", "CHECK"), rows, indent="  "))
    ctx.emit(report, "\n".join(lines))
    code: int = report["exit_code"]
    return code


def _utc(timestamp: int) -> str:
    from datetime import UTC, datetime

    if timestamp < 0:
        return "unknown time"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def snapshots(ctx: Context) -> int:
    items = ctx.cluster.runs.snapshots(ctx.data())
    rows = [
        (
            s["id"][:8],
            _utc(s["timestamp"]),
            _size(s["total_bytes"]) if s["total_bytes"] >= 0 else "",
        )
        for s in items
    ]
    text = table(("SNAPSHOT", "TIME", "SIZE"), rows) if rows else "no snapshots"
    ctx.emit(items, text)
    return 0


def _run_options(p: Any) -> None:
    add_gateway(p)
    p.add_argument(
        "--metrics-dir",
        metavar="DIR",
        help="node_exporter textfile directory (default $NSBACKUP_METRICS_DIR or NS8's)",
    )


def register(group: Any, command: Any) -> None:
    add_data(command(group, "add", add, "add a schedule; prints its id"))
    add_data(command(group, "alter", alter, "alter a schedule (its destination cannot change)"))
    p = command(group, "remove", remove, "remove a schedule")
    p.add_argument("id", metavar="ID", help="the backup (schedule) id")
    command(group, "list", list_, "schedules with per-module status")
    p = command(group, "run", run, "back up this node's modules of schedule ID now")
    p.add_argument("id", metavar="ID", type=int, help="the backup (schedule) id")
    p.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="modules backed up at once (default 1)"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="wait at most this long for a module another run is backing up (default 3600)",
    )
    p.add_argument(
        "--runner", metavar="NAME", help="module runner: local or ns8 (default: ns8 if runagent)"
    )
    p.add_argument(
        "--modules-dir",
        metavar="DIR",
        help="where the local runner finds modules (default $NSBACKUP_MODULES_DIR)",
    )
    _run_options(p)
    p = command(
        group,
        "snapshots",
        snapshots,
        'snapshots of one repository: --data \'{"repository": DESTINATION, "path": APP/UUID}\'',
    )
    add_data(p)
    add_gateway(p)
    p = command(group, "check", check, "restic check of every repository of schedule ID")
    p.add_argument("id", metavar="ID", type=int, help="the backup (schedule) id")
    p.add_argument(
        "--read-data-subset",
        metavar="P",
        help="also read this part of the data: n/t, a percentage or a size (restic's syntax)",
    )
    _run_options(p)
