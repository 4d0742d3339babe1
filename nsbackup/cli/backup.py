"""``nsbackup backup ...``: backup schedules (``cluster.schedules``)."""

from __future__ import annotations

from typing import Any

from nsbackup.cli.base import Context, add_data


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


def list_(ctx: Context) -> int:
    result = ctx.cluster.schedules.list()
    lines = []
    for b in result["backups"]:
        state = "enabled" if b["enabled"] else "disabled"
        lines.append(
            f"{b['id']}  {b['name']}  -> {b['repository']}  {b['schedule']}  "
            f"keep {b['retention']}  {state}"
        )
        for item in b["instances"]:
            status = item["status"]
            shown = "never run" if status is None else ("ok" if status["success"] else "FAILED")
            lines.append(f"    {item['module_id']:<20} {shown}")
    ctx.emit(result, "\n".join(lines) if lines else "no backups")
    return 0


def register(group: Any, command: Any) -> None:
    add_data(command(group, "add", add, "add a schedule; prints its id"))
    add_data(command(group, "alter", alter, "alter a schedule (its destination cannot change)"))
    p = command(group, "remove", remove, "remove a schedule")
    p.add_argument("id", metavar="ID", help="the backup (schedule) id")
    command(group, "list", list_, "schedules with per-module status")
