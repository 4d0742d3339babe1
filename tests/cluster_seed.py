"""A small NS8-like cluster written into Redis with the ``cluster`` user."""

from __future__ import annotations

import hashlib
import uuid as uuidlib

import redis

from nsbackup import acl

NODES = {"1": "10.5.4.1", "2": "10.5.4.2", "12": "10.5.4.12"}
MODULES = {
    "mail1": "1",
    "nextcloud3": "2",
    "dokuwiki1": "12",
    "traefik1": "1",
}
PASSWORDS = {
    "node/1": "node1-pw",
    "node/2": "node2-pw",
    "node/12": "node12-pw",
    "module/mail1": "mail1-pw",
    "module/nextcloud3": "nc3-pw",
    "module/dokuwiki1": "doku1-pw",
    "module/traefik1": "tr1-pw",
}


def module_uuid(mid: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{mid}.test"))


def seed(client: redis.Redis, *, modules: dict[str, str] | None = None) -> None:
    modules = MODULES if modules is None else modules
    pipe = client.pipeline(transaction=True)
    pipe.hset("cluster/environment", "NODE_ID", "1")
    pipe.set("cluster/network", "10.5.4.0/24")
    pipe.set("cluster/uuid", "c3a7a9a8-3e1c-4b68-9d3c-9e0a3f0d1c11")
    for node, ip in NODES.items():
        pipe.hset(f"node/{node}/vpn", "ip_address", ip)
    for mid, node in modules.items():
        pipe.hset("cluster/module_node", mid, node)
        pipe.hset("cluster/module_uuid", mid, module_uuid(mid))
        pipe.hset(
            f"module/{mid}/environment",
            "IMAGE_URL",
            f"ghcr.io/nethserver/{mid.rstrip('0123456789')}:1.0.0",
        )
        pipe.set(f"module/{mid}/ui_name", f"UI {mid}")
    pipe.sadd("module/traefik1/flags", "no_data_backup")
    for user, password in PASSWORDS.items():
        kind, ident = user.split("/")
        rules = acl.node_rules(ident) if kind == "node" else acl.module_rules(ident)
        digest = hashlib.sha256(password.encode()).hexdigest()
        if kind == "module" and ident not in modules:
            continue
        pipe.sadd("cluster/acls", acl.acl_line(user, digest, rules))
    pipe.execute()
    for user, password in PASSWORDS.items():
        kind, ident = user.split("/")
        rules = acl.node_rules(ident) if kind == "node" else acl.module_rules(ident)
        client.acl_setuser(user, enabled=True, reset=True, passwords=[f"+{password}"])
        client.execute_command("ACL", "SETUSER", user, *rules)
