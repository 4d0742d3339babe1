"""``nsbackup migrate [--dry-run]``: NS8's legacy layout to the current one
(``cluster.migrate``)."""

from __future__ import annotations

from typing import Any

from nsbackup.cli.base import Context
from nsbackup.results import MigrationReport


def render_text(report: MigrationReport) -> str:
    """One line per change (prefixed ``would:`` with ``--dry-run``), then the destinations left
    unconverted, the events and a summary. Never a secret: the report holds none."""
    changes: list[str] = []
    add = changes.append
    for m in report["module_uuids"]:
        how = "from its MODULE_UUID" if m["source"] == "environment" else "random: none known"
        add(f"module uuid: {m['module_id']} = {m['uuid']} ({how})")
    for u in report["acl_users"]:
        done = [
            w for w, on in (("rules replaced", u["rules"]), ("entry rewritten", u["entry"])) if on
        ]
        state = "" if u["enabled"] else " (user off, kept off)"
        add(f"acl: {u['user']}: {', '.join(done)}{state}")
    for d in report["destinations"]:
        url = d["url"] if d["url"] == d["legacy_url"] else f"{d['legacy_url']} -> {d['url']}"
        removed = ", ".join(d["removed_fields"]) or "none"
        add(
            f"destination {d['id']} ({d['provider']}, {d['name']!r}): {d['action']}; url {url}; "
            f"base path {d['basepath'] or '(root)'}; public fields removed: {removed}"
        )
    for s in report["schedules"]:
        change = [f"+{m}" for m in s["added"]] + [f"-{m}" for m in s["removed"]]
        instances = " ".join(s["instances"]) or "(none)"
        add(f"backup {s['id']}: instances {instances} ({' '.join(change)})")
    for key in report["legacy_sets"]:
        add(f"legacy set {key}: deleted")
    for st in report["statuses"]:
        where = {
            "copied": f"copied to node/{st['node_id']}/backup_status/{st['backup_id']}",
            "kept_newer": f"node {st['node_id']} has a newer status, kept",
            "dropped": "dropped (module or backup gone)",
        }[st["action"]]
        key = f"module/{st['module_id']}/backup_status/{st['backup_id']}"
        add(f"legacy status {key}: {where}; deleted")
    if report["pruned_modules"]:
        add(f"cluster/module_uuid: removed modules pruned: {' '.join(report['pruned_modules'])}")
    for p in report["pruned_statuses"]:
        pruned = " ".join(p["module_ids"])
        add(f"node/{p['node_id']}/backup_status/{p['backup_id']}: removed modules pruned: {pruned}")
    dry = report["dry_run"]
    lines = [f"would: {line}" for line in changes] if dry else list(changes)
    unconverted = report["unconverted_destinations"]
    for f in unconverted:
        lines.append(
            f"destination {f['id']} ({f['provider'] or '?'}) not converted, left as it was: "
            f"{f['reason']}"
        )
    for e in report["events"]:
        lines.append(f"{'would publish' if dry else 'published'} {e['channel']} {e['payload']}")
    if changes:
        summary = f"{len(changes)} change(s) " + (
            "would be made; nothing written" if dry else "made"
        )
    else:
        summary = "nothing to migrate: the layout is current"
    if unconverted:
        summary += f"; {len(unconverted)} destination(s) cannot be converted"
    return "\n".join([*lines, ("dry run: " if dry else "") + summary])


def migrate(ctx: Context) -> int:
    report: Any = ctx.cluster.migrate(dry_run=ctx.args.dry_run)
    for warning in report["warnings"]:
        ctx.warn(warning)
    if ctx.json:  # the text report names them already; JSON readers get them on stderr too
        for failed in report["unconverted_destinations"]:
            ctx.warn(f"destination {failed['id']} not converted: {failed['reason']}")
    ctx.emit(report, render_text(report))
    return 3 if report["unconverted_destinations"] else 0


def register(top: Any, command: Any) -> None:
    p = command(
        top,
        "migrate",
        migrate,
        "migrate NS8's legacy (pre-3.20) backup layout to the current one, as the cluster user",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="report what would change; write and publish nothing",
    )
