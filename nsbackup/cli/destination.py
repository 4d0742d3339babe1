"""``nsbackup destination ...``: backup destinations (``cluster.destinations``)."""

from __future__ import annotations

from typing import Any

from nsbackup.cli.base import Context, add_data, add_gateway, table


def render(ctx: Context) -> int:
    result = ctx.cluster.destinations.render(ctx.data(), show_secrets=ctx.args.show_secrets)
    # comments: the text stays a section rclone reads as it is
    head = [f"# {result['name']} ({result['provider']}, {result['url']})"]
    head.append(f"# base path: {result['basepath'] or '(the root of the remote)'}")
    ctx.emit(result, "\n".join([*head, result["rclone_conf"].rstrip("\n")]))
    return 0


def add(ctx: Context) -> int:
    result = ctx.cluster.destinations.add(ctx.data())
    ctx.emit(result, result["id"])  # the Restic password only in --json output
    return 0


def alter(ctx: Context) -> int:
    result = ctx.cluster.destinations.alter(ctx.data())
    changed = ", ".join(result["changed"]) or "nothing"
    ctx.emit(result, f"{result['id']}: changed {changed}")
    return 0


def remove(ctx: Context) -> int:
    # A person is shown what goes with the destination before it goes; programs (--json)
    # are not asked.
    confirmed = ctx.args.yes or ctx.json
    result = ctx.cluster.destinations.remove(ctx.args.id, dry_run=not confirmed)
    backups = ", ".join(map(str, result["removed_backups"]))
    also = f" and backup(s) {backups} (schedules and statuses)" if backups else ""
    if not confirmed:
        print(f"would remove destination {result['id']}{also}", file=ctx.err)
        print("nothing removed: run again with --yes to remove it", file=ctx.err)
        return 2
    ctx.emit(result, f"removed destination {result['id']}{also}")
    return 0


def list_(ctx: Context) -> int:
    result = ctx.cluster.destinations.list(show_secrets=ctx.args.show_secrets)
    headers = ["ID", "PROVIDER", "NAME", "BASE PATH", "URL"]
    rows = [
        [r["id"], r["provider"], r["name"], r["basepath"] or "(root)", r["url"]]
        for r in result["repositories"]
    ]
    if ctx.args.show_secrets:  # the Restic password of each destination's repositories
        headers.append("RESTIC PASSWORD")
        for row, r in zip(rows, result["repositories"], strict=True):
            row.append(r.get("password", ""))
    lines = [table(headers, rows)] if rows else ["no destinations"]
    lines.append(
        "\ncluster dump passphrase: "
        + ("set" if result["password_exists"] else "NOT SET (the leader uploads no cluster dump)")
    )
    ctx.emit(result, "\n".join(lines))
    return 0


def validate(ctx: Context) -> int:
    result = ctx.cluster.destinations.validate(ctx.data())
    ok = [n["node_id"] for n in result["nodes"] if n["ok"]]
    ctx.emit(result, f"{result['id']}: usable from node(s) {', '.join(ok)}")
    return 0


def repositories(ctx: Context) -> int:
    from nsbackup.errors import Partial

    failure: Partial | None = None
    try:
        items = ctx.cluster.runs.repositories(timeout=ctx.args.timeout)
    except Partial as exc:  # the destinations that answered are still worth printing
        failure, items = exc, exc.result
    rows = []
    for r in items:
        who = r["installed_instance"] or (
            f"{r['module_id']} (not installed)" if r["module_id"] else "-"
        )
        rows.append((r["repository_name"], r["path"], who))
    headers = ("DESTINATION", "REPOSITORY PATH", "MODULE")
    ctx.emit(items, table(headers, rows) if rows else "no repositories")
    if failure is None:
        return 0
    print(f"error: {failure}", file=ctx.err)
    return failure.exit_code


def register(group: Any, command: Any) -> None:
    p = command(
        group,
        "render",
        render,
        "print the rclone section a request would produce (no Redis needed)",
    )
    add_data(p)
    p.add_argument("--show-secrets", action="store_true", help="show secret values")
    for name, func, what in (
        ("add", add, "validate on the nodes, then save; prints id (and password with --json)"),
        ("alter", alter, "alter; an empty secret keeps the stored one"),
        ("validate", validate, "validation only, nothing saved"),
    ):
        add_data(command(group, name, func, what))
    p = command(group, "remove", remove, "remove a destination and the backups that use it")
    p.add_argument("id", metavar="ID", help="the destination UUID (destination list shows it)")
    p.add_argument(
        "--yes",
        action="store_true",
        help="remove without asking (text mode otherwise only shows what would be removed; "
        "--json never asks)",
    )
    p = command(group, "list", list_, "destinations, without secrets")
    p.add_argument(
        "--show-secrets",
        action="store_true",
        help="include secrets and Restic passwords (node-privileged users only)",
    )
    p = command(
        group,
        "repositories",
        repositories,
        "restic repositories found in every destination (through this node's gateway)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on the destinations that have not answered after this long (default 10)",
    )
    add_gateway(p)
