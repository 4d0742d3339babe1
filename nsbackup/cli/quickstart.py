"""``nsbackup quickstart``: the main job on an embedded default (nsbackup.quickstart)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from nsbackup.cli.base import Context, check_directory


def quickstart(ctx: Context) -> int:
    from nsbackup.quickstart import Step, explore_commands, quickstart

    def shown(step: Step) -> None:
        mark = "ok  " if step.ok else "FAIL"
        print(
            f"{mark} {step.name} ({step.seconds:.1f} s)", file=sys.stderr if ctx.json else ctx.out
        )
        if step.detail and not ctx.json:
            print(f"     {step.detail}", file=ctx.out, flush=True)

    if ctx.args.keep:
        check_directory("keep", ctx.args.keep, "new")
    keep = Path(ctx.args.keep) if ctx.args.keep else None
    result = quickstart(keep=keep, on_step=shown)
    lines = [f"every check held, in {result['seconds']:.1f} s"]
    if result["directory"]:
        lines.append(f"kept in {result['directory']}; to explore it:")
        lines += [f"  {command}" for command in explore_commands(result["directory"])]
    ctx.emit(result, "\n".join(lines))
    return 0


def register(top: Any, command: Any) -> None:
    p = command(
        top,
        "quickstart",
        quickstart,
        "back up two sample modules through a real gateway on a private cluster, and show it",
    )
    p.add_argument(
        "--keep",
        metavar="DIR",
        help="keep everything in DIR (a new directory) and print how to explore it",
    )
