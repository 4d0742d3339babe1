"""Redis ACL rules for the backup keys (ref §1.3), with NS8's holes closed.

- Modules may not enumerate key names (``-keys -scan``) and never read ``private/nodes/*``
  (rclone configurations with provider credentials, restore grants).
- Nodes may read everything backup-related and write their own ``node/<id>/*`` keys; they may
  subscribe to cluster events (the gateway reloads on them).

``private/agents/*`` (the Restic passwords) stays readable by modules because NS8 modules run
Restic themselves (module-backup, restic-wrapper); nsbackup's own runs read it as the node.
"""

from __future__ import annotations

import re

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _check(kind: str, ident: str) -> None:
    if not _ID.fullmatch(ident):
        raise ValueError(f"invalid {kind} id {ident!r}")


def node_rules(node_id: str) -> list[str]:
    """ACL rules (``ACL SETUSER`` arguments after the password) for user ``node/<id>``."""
    _check("node", node_id)
    return [
        f"~node/{node_id}/*",
        f"~task/node/{node_id}/*",
        "%R~cluster/*",
        "%R~node/*",
        "%R~module/*",
        "%R~private/agents/*",
        "%R~private/nodes/*",
        f"&progress/node/{node_id}/*",
        f"&node/{node_id}/event/*",
        "&cluster/event/*",
        "+@read",
        "+@write",
        "+@transaction",
        "+@connection",
        "+@pubsub",
        "-@admin",
        "+psync",
        "+replconf",
        "-keys",
    ]


def module_rules(module_id: str) -> list[str]:
    """ACL rules for user ``module/<id>``."""
    _check("module", module_id)
    return [
        f"~module/{module_id}/*",
        f"~task/module/{module_id}/*",
        "%R~cluster/*",
        "%R~node/*",
        "%R~module/*",
        "%R~private/agents/*",
        f"&progress/module/{module_id}/*",
        f"&module/{module_id}/event/*",
        "+@read",
        "+@write",
        "+@transaction",
        "+@connection",
        "+publish",
        "-@admin",
        "-keys",
        "-scan",
    ]


def acl_line(user: str, password_sha256: str, rules: list[str]) -> str:
    """A ``cluster/acls`` entry in ``ACL LIST`` format (what NS8 stores and the gateway reads)."""
    if not re.fullmatch(r"[0-9a-f]{64}", password_sha256):
        raise ValueError("password_sha256 must be 64 lower-case hex digits")
    return " ".join(["user", user, "on", "sanitize-payload", f"#{password_sha256}", *rules])
