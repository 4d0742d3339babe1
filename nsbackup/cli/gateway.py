"""``nsbackup gateway ...``: this node's gateway (``cluster.gateway``)."""

from __future__ import annotations

import argparse
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

    gateway = ctx.cluster.gateway.server(
        ctx.args.state_dir, listen=ctx.args.listen, repo_dir=ctx.args.repo_dir
    )

    def stop(signum: int, frame: object) -> None:
        gateway.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        gateway.start()
        for problem in gateway.problems:
            ctx.warn(str(problem))
        for dropped in sorted(gateway.dropped):
            ctx.warn(f"destination {dropped} dropped: its backend failed to start")
        print(
            f"gateway of node {gateway.node_id} listening on {gateway.settings.listen}",
            file=ctx.err,
            flush=True,
        )
        gateway.serve_forever()
    finally:
        gateway.stop()
    return 0


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        default="0.0.0.0:4694",
        metavar="ADDR:PORT",
        help="address the gateway listens on (default 0.0.0.0:4694)",
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
    _options(p)
