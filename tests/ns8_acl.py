"""NS8's own Redis ACL lines (ref §1.3; ns8-core install-finalize.sh, add-node, add-module and
the 3.20 migration ``50update_grants``), exactly as NS8 sets them, for tests that must run with
the identities a real cluster gives its callers.

- ``default``: no password; reads ``cluster/*``, ``node/*``, ``module/*``; may subscribe to
  every channel; read commands only. What an unprivileged ``agent.redis_connect()`` gets.
- ``cluster``: everything (cluster actions run as this user).
- ``node/<id>``: writes its own ``node/<id>/*`` keys, reads the rest and ``private/*``,
  publishes on its own channels only (it cannot subscribe to cluster events).
- ``module/<id>``: writes its own ``module/<id>/*`` keys, reads ``cluster/*``, ``node/*``,
  ``module/*`` and the Restic passwords, publishes on its own channels only.
"""

from __future__ import annotations

import hashlib

import redis

from tests.cluster_seed import PASSWORDS, seed
from tests.redis_server import RedisServer

DEFAULT_RULES = [
    "on",
    "nopass",
    "resetkeys",
    "~cluster/*",
    "~node/*",
    "~module/*",
    "resetchannels",
    "&*",
    "nocommands",
    "+@read",
    "+@connection",
    "+subscribe",
    "+psubscribe",
    "-@admin",
]


def node_rules(node: str) -> list[str]:
    return [
        "resetkeys",
        f"~node/{node}/*",
        f"~task/node/{node}/*",
        "%R~cluster/*",
        "%R~node/*",
        "%R~module/*",
        "%R~private/agents/*",
        "%R~private/nodes/*",
        "resetchannels",
        f"&progress/node/{node}/*",
        f"&node/{node}/event/*",
        "nocommands",
        "+@read",
        "+@write",
        "+@transaction",
        "+@connection",
        "+publish",
        "-@admin",
        "+psync",
        "+replconf",
    ]


def module_rules(module: str) -> list[str]:
    return [
        "resetkeys",
        f"~module/{module}/*",
        f"~task/module/{module}/*",
        "%R~cluster/*",
        "%R~node/*",
        "%R~module/*",
        "%R~private/agents/*",
        "resetchannels",
        f"&progress/module/{module}/*",
        f"&module/{module}/event/*",
        "nocommands",
        "+@read",
        "+@write",
        "+@transaction",
        "+@connection",
        "+publish",
    ]


def rules_for(user: str) -> list[str]:
    kind, ident = user.split("/", 1)
    return node_rules(ident) if kind == "node" else module_rules(ident)


def set_ns8_user(client: redis.Redis, user: str, password: str) -> None:
    """Create (or reset) ``user`` with NS8's rules and ``password``."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    client.execute_command("ACL", "SETUSER", user, "reset", "on", f"#{digest}", *rules_for(user))


def acl_line(user: str, password: str) -> str:
    """The user's ``cluster/acls`` entry, as ``ACL LIST`` prints it (what the gateway reads)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return " ".join(["user", user, "on", f"#{digest}", *rules_for(user)])


def seed_ns8(server: RedisServer, *, modules: dict[str, str] | None = None) -> redis.Redis:
    """The test cluster of :mod:`tests.cluster_seed` with NS8's ACL users and ``default``
    user. Return a ``cluster`` client. Undo with :func:`reset_default`."""
    client = server.client()
    seed(client, modules=modules)
    users = {
        u: p
        for u, p in PASSWORDS.items()
        if u.startswith("node/") or modules is None or u.split("/", 1)[1] in modules
    }
    pipe = client.pipeline(transaction=True)
    pipe.delete("cluster/acls")
    pipe.sadd("cluster/acls", *(acl_line(u, p) for u, p in users.items()))
    pipe.execute()
    for user, password in users.items():
        set_ns8_user(client, user, password)
    client.execute_command("ACL", "SETUSER", "default", "reset", *DEFAULT_RULES)
    return client


def reset_default(server: RedisServer) -> None:
    """Switch the ``default`` user off again (the other tests' setting)."""
    client = server.client()
    client.execute_command("ACL", "SETUSER", "default", "reset", "off")
    client.close()


def dump_all(server: RedisServer) -> dict[bytes, bytes | None]:
    """Every key with its Redis ``DUMP`` (bytes, read as ``cluster``): equal before and after
    means nothing was written."""
    client = redis.Redis(
        host=server.host, port=server.port, username="cluster", password=server.admin_password
    )
    try:
        keys = sorted(client.scan_iter(count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
        return dict(zip(keys, pipe.execute(), strict=True))
    finally:
        client.close()
