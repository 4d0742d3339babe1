"""``nsbackup restore ...``: restore grants and module restores (``cluster.restore``)."""

from __future__ import annotations

from typing import Any

from nsbackup.cli.base import Context, add_data, add_gateway, check_directory, table


def grants(ctx: Context) -> int:
    result = ctx.cluster.restore.grants()
    rows = [
        (g["module_uuid"], g["module_id"] or "(no module)", g["source_uuid"])
        for g in result["grants"]
    ]
    headers = ("MODULE UUID", "MODULE", "MAY READ THE REPOSITORY OF")
    ctx.emit(result, table(headers, rows) if rows else "no restore grants")
    return 0


def grant(ctx: Context) -> int:
    result = ctx.cluster.restore.grant(ctx.data())
    ctx.emit(result, f"{result['module_uuid']} may read {result['source_uuid']}")
    return 0


def revoke(ctx: Context) -> int:
    result = ctx.cluster.restore.revoke(ctx.args.module_uuid)
    ctx.emit(result, f"revoked: {result['module_uuid']} may no longer read {result['source_uuid']}")
    return 0


def run(ctx: Context) -> int:
    from nsbackup.cli.signals import stop_children_on_signals

    if ctx.args.modules_dir:
        check_directory("modules-dir", ctx.args.modules_dir)
    with stop_children_on_signals():
        result = ctx.cluster.restore.run(ctx.data(), wait=ctx.args.wait)
    relinked = result["relinked_backups"]
    ctx.emit(
        result,
        f"{result['module_id']}: restored "
        + (
            f"{result['restored_files']} file(s)"
            if result.get("restored_files") is not None
            else "(this restic counts no files)"
        )
        + f" from {result['path']} ({result['snapshot']})"
        + (f"; back in backup(s) {', '.join(map(str, relinked))}" if relinked else ""),
    )
    return 0


def register(group: Any, command: Any) -> None:
    command(group, "grants", grants, "restore grants: which module may read which repository")
    add_data(command(group, "grant", grant, "let a module read another's repository"))
    p = command(group, "revoke", revoke, "remove a module's restore grant")
    p.add_argument("module_uuid", metavar="MODULE_UUID", help="the grantee module's UUID")
    p = command(
        group,
        "run",
        run,
        "restore a snapshot into a module of this node; grants and revokes as needed",
    )
    add_data(p)
    p.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="wait at most this long for a backup of the module (default 3600)",
    )
    p.add_argument("--runner", metavar="NAME", help="module runner: local or ns8")
    p.add_argument("--modules-dir", metavar="DIR", help="where the local runner finds modules")
    add_gateway(p)
