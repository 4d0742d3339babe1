"""``nsbackup module ...``: what runs in a module's context with the module's credentials."""

from __future__ import annotations

import json
import sys
from typing import Any

from nsbackup.cli.base import Context, add_data, add_gateway, check_directory


def _check_paths(ctx: Context) -> None:
    if ctx.args.module_dir:
        check_directory("module-dir", ctx.args.module_dir)
    if getattr(ctx.args, "target", None):
        check_directory("target", ctx.args.target, "any")


def backup(ctx: Context) -> int:
    _check_paths(ctx)
    progress = None
    if ctx.args.progress:

        def progress(message: dict[str, Any]) -> None:
            print("nsbackup-progress " + json.dumps(message), file=sys.stderr, flush=True)

    result = ctx.cluster.module.backup(ctx.args.id, wait=ctx.args.wait, progress=progress)
    code = result["exit_code"]
    if code == 0:
        text = f"{result['module_id']}: snapshot {result['snapshot_id'][:8]}, " + (
            f"{result['added_bytes']} bytes added"
        )
    else:
        text = f"{result['module_id']}: {result['message']}"
    ctx.emit(result, text)
    return 0 if code == 0 else 3 if code == 3 else 1


def restore(ctx: Context) -> int:
    _check_paths(ctx)
    progress = None
    if ctx.args.progress:

        def progress(message: dict[str, Any]) -> None:
            print("nsbackup-progress " + json.dumps(message), file=sys.stderr, flush=True)

    result = ctx.cluster.module.restore(
        ctx.data(), target=ctx.args.target, wait=ctx.args.wait, progress=progress
    )
    ctx.emit(
        result,
        f"{result['module_id']}: {result['restored_files']} file(s) restored into "
        f"{result['target']}",
    )
    return 0


def register(group: Any, command: Any) -> None:
    p = command(
        group,
        "backup",
        backup,
        "back this module up for schedule ID with its own credentials (NS8's module-backup)",
    )
    p.add_argument("id", metavar="ID", type=int, help="the backup (schedule) id")
    p.add_argument("--module", metavar="MODULE_ID", help="the module (default $MODULE_ID)")
    p.add_argument(
        "--module-dir", metavar="DIR", help="the module's directory (default: the working one)"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="wait at most this long for another backup of this module (default 3600)",
    )
    add_gateway(p)
    p.add_argument(
        "--progress",
        action="store_true",
        help="report restic's progress on stderr as 'nsbackup-progress <json>' lines",
    )
    p = command(
        group,
        "restore",
        restore,
        "restore a snapshot into this module with its own credentials (NS8's restore-module)",
    )
    add_data(p)
    p.add_argument("--module", metavar="MODULE_ID", help="the module (default $MODULE_ID)")
    p.add_argument(
        "--module-dir", metavar="DIR", help="the module's directory (default: the working one)"
    )
    p.add_argument(
        "--target", metavar="DIR", help="restore there instead of the module's directory"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="wait at most this long for a backup of this module (default 3600)",
    )
    add_gateway(p)
    p.add_argument(
        "--progress",
        action="store_true",
        help="report restic's progress on stderr as 'nsbackup-progress <json>' lines",
    )
