"""The gateway files NS8 nodes run on (ref §3.2-3.4), as renderer plugins.

Each renderer is a pure function of the render context. Values reach the files only through
the serializers of :mod:`nsbackup.ini` and :mod:`nsbackup.gateway.formats`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.resources import files

from nsbackup import hookimpl, ini
from nsbackup.gateway.context import REALM, GatewayDestination, RenderContext
from nsbackup.gateway.formats import env_line, hap_token, map_file
from nsbackup.plugins import Renderer

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_USER = re.compile(r"(node|module)/[A-Za-z0-9_-]{1,64}")
_HASH = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(UUID)
HEALTH_CHECK = (
    "    option httpchk\n"
    "    http-check send meth GET uri /{uuid}/_probe_rest_404 "
    "hdr Accept application/vnd.x.restic.rest.v2\n"
    "    http-check expect status 404\n"
    "    default-server inter 5s fastinter 1s rise 2 fall 2\n"
)


def _served(context: RenderContext) -> list[GatewayDestination]:
    return [d for d in context.destinations if d.local and d.id not in context.dropped]


class RcloneConf:
    name = "rclone_conf"
    filename = "rclone.conf"
    secret = True

    def render(self, context: RenderContext) -> str:
        served = _served(context)
        sections = {d.id: dict(d.section) for d in served}
        if served:
            upstreams = [(d.id, f"{d.id}:{d.basepath.rstrip('/')}") for d in served]
            sections["combined"] = {
                "type": "combine",
                "upstreams": ini.combine_upstreams(upstreams),
            }
        return ini.render(sections, ["", "generated automatically from Redis DB contents", ""])


class AuthMap:
    name = "auth_map"
    filename = "auth.map"
    secret = True  # unsalted SHA-256 of every node and module password

    def render(self, context: RenderContext) -> str:
        entries = []
        for line in context.state.acls:
            words = line.split()
            if len(words) < 2 or words[0] != "user" or not _USER.fullmatch(words[1]):
                continue
            if "off" in words[2:]:
                continue  # a Redis user switched off does not log in here either
            group = "nodes" if words[1].startswith("node/") else "modules"
            for word in words[2:]:
                if word.startswith("#") and _HASH.fullmatch(word[1:]):
                    entries.append((f"{words[1]}:{word[1:]}", group))
        return map_file(sorted(set(entries)), width=88)


class ModrepoMap:
    name = "modrepo_map"
    filename = "modrepo.map"
    secret = False

    def render(self, context: RenderContext) -> str:
        entries = []
        by_uuid = {m.uuid: m for m in context.state.modules.values() if m.uuid}
        for module in sorted(context.state.modules.values(), key=lambda m: m.id):
            if not module.uuid or not _ID.fullmatch(module.uuid):
                continue
            entries.append((f"module/{module.id}", module.repository_path))
        for new, source in sorted(context.state.restore_grants.items()):
            grantee = by_uuid.get(new)
            if grantee is None or not _ID.fullmatch(source):
                continue
            entries.append((grantee.repository_path, f"{grantee.app}/{source}"))
        return map_file(entries, width=16)


class GatewayEnv:
    name = "gateway_env"
    filename = "rclone-gateway.env"
    secret = False

    def render(self, context: RenderContext) -> str:
        return env_line("CLUSTER_NETWORK", context.cluster_network) + env_line(
            "NODE_ID", context.node_id
        )


class HaproxyCfg:
    name = "haproxy_cfg"
    filename = "haproxy.cfg"
    secret = False

    def render(self, context: RenderContext) -> str:
        settings = context.settings
        state_dir = settings.state_dir
        port = settings.listen.rsplit(":", 1)[1]
        routes, backends, webdav_routes = [], [], []
        peers = context.peers
        for index, dest in enumerate(sorted(context.destinations, key=lambda d: d.id)):
            uid = hap_token(dest.id)
            tag = f"d{index}_{uid.replace('-', '')}"
            webdav = context.sockets.destinations.get(dest.id)
            if webdav is not None:
                # WebDAV of a served destination: its own rclone server.
                webdav_routes.append(f"    acl dav_{tag} path /{uid}")
                webdav_routes.append(f"    acl dav_{tag} path_beg /{uid}/")
                webdav_routes.append(f"    use_backend dav_{tag} if dav_{tag}")
                backends.append(f"\nbackend dav_{tag}\n    server dav unix@{hap_token(webdav)}\n")
            if dest.local and dest.kind == "local":
                routes.append(f"    # {uid} is served by the local rclone")
                continue
            routes.append(f"    acl route_{tag} path_beg /{uid}/")
            if not dest.local:
                # Node-hosted data elsewhere: always through the hosting node's gateway.
                host = next((p for p in peers if p.id == dest.host_node), None)
                if host is None:
                    routes.append(f"    # {uid}: hosting node {dest.host_node} has no address")
                    continue
                routes.append(f"    use_backend gw_{tag} if is_loopback route_{tag}")
                backends.append(
                    f"\nbackend gw_{tag}\n"
                    + HEALTH_CHECK.format(uuid=uid)
                    + f"    server gw{hap_token(host.id)} {hap_token(host.address)}:{port} check\n"
                )
                continue
            if not peers:
                continue
            # Remote storage: peers take over while the local backend fails its check.
            routes.append(f"    acl down_{tag} nbsrv(rest_{tag}) eq 0")
            routes.append(f"    use_backend gw_{tag} if is_loopback route_{tag} down_{tag}")
            backends.append(
                f"\nbackend rest_{tag}\n"
                + HEALTH_CHECK.format(uuid=uid)
                + f"    server rest0 unix@{hap_token(context.sockets.restic)} check\n"
            )
            lines = [f"\nbackend gw_{tag}\n", HEALTH_CHECK.format(uuid=uid)]
            local_is_leader = context.node_id == context.state.leader
            for peer in peers:
                backup = "" if local_is_leader or peer.id == context.state.leader else " backup"
                lines.append(
                    f"    server gw{hap_token(peer.id)} "
                    f"{hap_token(peer.address)}:{port} check{backup}\n"
                )
            backends.append("".join(lines))
        values = {
            "MAXCONN": str(settings.maxconn),
            "ADMIN_SOCKET": hap_token(settings.admin_socket),
            "LISTEN": hap_token(settings.listen),
            "NODE_ID": hap_token(context.node_id),
            "CLUSTER_NETWORK": hap_token(context.cluster_network),
            "UUID": UUID,
            "AUTH_MAP": hap_token(str(state_dir / "auth.map")),
            "MODREPO_MAP": hap_token(str(state_dir / "modrepo.map")),
            "REALM": REALM,
            "SOCKET_RESTIC": hap_token(context.sockets.restic),
            "SOCKET_RESTIC_APPEND": hap_token(context.sockets.restic_append),
            "SOCKET_WEBDAV": hap_token(context.sockets.webdav),
            "ROUTES": "\n".join(routes),
            "WEBDAV_ROUTES": "".join(f"{line}\n" for line in webdav_routes),
            "ACCESS_LOG": access_log(context),
            "BACKENDS": "".join(backends),
        }
        text = TEMPLATE
        for key, value in values.items():
            text = text.replace(f"#{{{key}}}#", value)
        return text


ACCESS_LOG_FORMAT = (
    "%Ts.%ms %ci:%cp x%[var(txn.user),hex] x%[var(txn.log_method),hex] "
    "x%[var(txn.log_path),hex] %ST %B %U %Ta %b"
)
"""What HAProxy sends ``gateway serve`` per request (nsbackup.gateway.access reads it): the
user, method and path hex-encoded (any byte can be in a user name), the path without its
query. Never a credential: not the Authorization header, not the request target."""


def access_log(context: RenderContext) -> str:
    """The frontend lines of the access log, when it is on (``gateway serve --access-log``)."""
    settings = context.settings
    if not settings.access_log:
        return ""
    return (
        "    # Access log (gateway serve --access-log): a datagram per request to gateway serve.\n"
        f"    log unix@{hap_token(settings.access_socket)} len 8192 format raw local0 info\n"
        f'    log-format "{ACCESS_LOG_FORMAT}"\n'
        # ",upper": a method HAProxy does not know (PROPFIND) kept in a variable as a method
        # would come back as another one.
        "    http-request set-var(txn.log_method) method,upper\n"
        "    http-request set-var(txn.log_path) path\n"
    )


TEMPLATE = (files("nsbackup_plugins") / "templates" / "haproxy.cfg").read_text(encoding="utf-8")


@hookimpl
def nsbackup_register_renderers(register: Callable[[Renderer], None]) -> None:
    for renderer in (RcloneConf(), HaproxyCfg(), AuthMap(), ModrepoMap(), GatewayEnv()):
        register(renderer)
