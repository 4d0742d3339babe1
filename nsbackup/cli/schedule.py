"""``nsbackup schedule start-timers|stop-timers|list-timers`` (``cluster.timers``) and
``nsbackup scheduler`` (``cluster.scheduler()``)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from nsbackup.cli.base import Context, add_gateway, check_directory, table

_JOBS = 1
_WAIT = 3600.0


def start_timers(ctx: Context) -> int:
    result = ctx.cluster.timers.start(jobs=ctx.args.jobs, wait=ctx.args.wait)
    for failure in result["failed"]:
        ctx.warn(f"timer {failure['unit']}.timer not created: {failure['message']}")
    lines = [f"{t['unit']}.timer  {t['schedule']}" for t in result["started"]]
    lines += [f"backup{s['id']}: not scheduled ({s['reason']})" for s in result["skipped"]]
    lines.append(
        f"{len(result['started'])} timer(s) created, {len(result['failed'])} failed, "
        f"{len(result['skipped'])} schedule(s) skipped"
    )
    ctx.emit(result, "\n".join(lines))
    code: int = result["exit_code"]
    return code


def stop_timers(ctx: Context) -> int:
    result = ctx.cluster.timers.stop()
    ctx.emit(result, f"{len(result['stopped'])} timer(s) stopped")
    return 0


def list_timers(ctx: Context) -> int:
    result = ctx.cluster.timers.list()
    rows = [
        (t["unit"], t["active"], t["calendar"], t["next_elapse"] or "-", t["last_trigger"] or "-")
        for t in result["timers"]
    ]
    headers = ("UNIT", "ACTIVE", "CALENDAR", "NEXT", "LAST")
    ctx.emit(result, table(headers, rows) if rows else "no backup timers")
    return 0


def scheduler(ctx: Context) -> int:
    import signal

    # An operator needs the scheduler's own messages without -v; with timestamps (a daemon).
    log = logging.getLogger("nsbackup.runs.scheduler")
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    if ctx.args.modules_dir:
        check_directory("modules-dir", ctx.args.modules_dir)
    runner = ctx.cluster.scheduler().configure(
        jobs=ctx.args.jobs, wait=ctx.args.wait, grace=ctx.args.grace
    )
    if ctx.cluster.settings.runner:
        # Every run would fail on it at every elapse: an unknown runner is refused before
        # starting (exit 2), as `backup run` refuses it.
        ctx.cluster.runs.runner()

    def stop(signum: int, frame: object) -> None:
        runner.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = runner.run()
    if ctx.json:  # one document, at the end: the scheduler's state when it stopped
        ctx.emit(runner.status())
    return code


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jobs",
        type=int,
        default=_JOBS,
        metavar="N",
        help="modules each run backs up at once (default 1)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=_WAIT,
        metavar="SECONDS",
        help="each run waits at most this long for a module another run is backing up "
        "(default 3600)",
    )


def register(group: Any, command: Any) -> None:
    """``nsbackup schedule ...``."""
    p = command(
        group,
        "start-timers",
        start_timers,
        "(re)create the systemd timer of every enabled schedule (systemd as PID 1)",
    )
    _run_options(p)
    command(group, "stop-timers", stop_timers, "stop every backup timer (systemd as PID 1)")
    command(group, "list-timers", list_timers, "the backup timers (systemd as PID 1)")


def register_scheduler(top: Any, command: Any) -> None:
    """``nsbackup scheduler``."""
    p = command(
        top,
        "scheduler",
        scheduler,
        "run each enabled schedule at its elapses until SIGTERM/SIGINT (for hosts where "
        "systemd is not PID 1)",
    )
    _run_options(p)
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on stop, how long runs may take to end after SIGTERM before SIGKILL (default 30)",
    )
    p.add_argument("--runner", metavar="NAME", help="module runner: local or ns8")
    p.add_argument(
        "--modules-dir",
        metavar="DIR",
        help="where the local runner finds modules (default $NSBACKUP_MODULES_DIR)",
    )
    add_gateway(p)
    p.add_argument(
        "--metrics-dir",
        metavar="DIR",
        help="node_exporter textfile directory (default $NSBACKUP_METRICS_DIR or NS8's)",
    )
