"""``nsbackup gateway ...``: this node's gateway (``cluster.gateway``)."""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from typing import Any

from nsbackup.cli.base import Context


def render(ctx: Context) -> int:
    result = ctx.cluster.gateway.render(
        ctx.args.out, listen=ctx.args.listen, repo_dir=ctx.args.repo_dir
    )
    for skipped in result["skipped"]:
        ctx.warn(f"destination {skipped['id']} skipped: {skipped['reason']}")
    ctx.emit(result, f"{len(result['changed'])} file(s) changed in {result['directory']}")
    return 3 if result["skipped"] else 0


def serve(ctx: Context) -> int:
    import signal

    from nsbackup.gateway.logs import use_gateway_format

    root = logging.getLogger()
    use_gateway_format(root, ctx.err)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)  # start, reloads, drops, restarts: what an operator reads
    gateway = ctx.cluster.gateway.server(
        ctx.args.state_dir,
        listen=ctx.args.listen,
        repo_dir=ctx.args.repo_dir,
        access_log=ctx.args.access_log,
    )

    def stop(signum: int, frame: object) -> None:
        gateway.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        gateway.start()
        gateway.serve_forever()
    finally:
        try:
            gateway.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def status(ctx: Context) -> int:
    result = ctx.cluster.gateway.status(ctx.args.state_dir)
    ctx.emit(result, _status_text(result))
    live = result["live"]
    return 0 if live["healthy"] else 3


def _when(moment: Any) -> str:
    if not isinstance(moment, int | float) or not moment:
        return "-"
    return datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")


def _status_text(status: dict[str, Any]) -> str:
    live = status["live"]
    generation = status.get("generation") or {}
    haproxy, rclone, redis = live["haproxy"], live["rclone"], status.get("redis", {})
    served = generation.get("served", [])
    lines = [
        f"gateway of node {status['node_id']}: {status['state']} (pid {status['pid']}, since "
        f"{_when(status['started'])}), listening on {status['listen']}",
        f"generation {generation.get('number', '-')} (since {_when(generation.get('started'))}):"
        f" {len(served)} destination(s) served, {len(status['dropped'])} dropped",
    ]
    lines += [f"  served   {uid}" for uid in served]
    lines += [f"  dropped  {d['id']}: {d['reason']}" for d in status["dropped"]]
    lines += [f"  skipped  {d['id']}: {d['reason']}" for d in status.get("skipped", [])]
    workers = ", ".join(str(p) for p in haproxy["workers"]) or "none"
    lines.append(
        f"haproxy: {'up' if haproxy['up'] else 'DOWN'} (master {status['haproxy']['master_pid']}, "
        f"worker(s) {workers}, {haproxy['old_workers']} draining), "
        f"{haproxy['connections'] if haproxy['connections'] is not None else '?'} connection(s) "
        f"in flight, restarted {status['haproxy']['restarts']} time(s)"
    )
    lines.append(
        f"rclone: {'up' if rclone['up'] else 'DOWN'} (pid {generation.get('rclone_pid')}), "
        f"restarted {status['rclone']['restarts']} time(s)"
    )
    if redis.get("connected"):
        link = "connected, " + (
            f"events received as Redis user {redis['user']}"
            if redis.get("mode") == "events"
            else "no user may subscribe: re-reading every minute"
        )
    else:
        link = "LOST" if redis.get("connected") is False else "not connected yet"
    lines.append(f"redis: {link} (since {_when(redis.get('since'))})")
    reloads = status.get("reloads", {})
    lines.append(
        f"reloads: {reloads.get('maps', 0)} of the maps, {reloads.get('generations', 0)} of "
        f"the generation; access log: {status.get('access_log') or 'off'}"
    )
    return "\n".join(lines)


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        default="0.0.0.0:4694",
        metavar="ADDR:PORT",
        help="address the gateway listens on: an IPv4 address or [IPv6], and a port "
        "(default 0.0.0.0:4694)",
    )
    p.add_argument(
        "--repo-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="local disk served for node-hosted (cluster) destinations",
    )


def register(group: Any, command: Any) -> None:
    p = command(group, "render", render, "write the gateway files for this node")
    p.add_argument("--out", required=True, metavar="DIR", help="directory of the files")
    _options(p)
    p = command(
        group, "serve", serve, "run the gateway until stopped (SIGTERM/SIGINT stop it cleanly)"
    )
    p.add_argument(
        "--state-dir",
        required=True,
        metavar="DIR",
        help="where the gateway files, sockets and pid files live",
    )
    p.add_argument(
        "--access-log",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write a line per request to FILE (appended, mode 0600; reopened when moved), "
        "or to standard output when FILE is - or left out",
    )
    _options(p)
    p = command(
        group,
        "status",
        status,
        "what the running gateway of --state-dir does (exit 3 when degraded, 5 when none runs)",
    )
    p.add_argument(
        "--state-dir", required=True, metavar="DIR", help="the state directory of the gateway"
    )
