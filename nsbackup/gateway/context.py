"""What gateway renderers receive: one cluster snapshot seen from one node, plus settings."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from nsbackup.model import ClusterState

PORT = 4694
REALM = "ns8-rclone-gateway"
REST_ACCEPT = "application/vnd.x.restic.rest.v2"
PROBE_NAME = "_probe_rest_404"
MAXCONN = 8000
"""HAProxy's connection slots (``maxconn``); see docs/operations.md for the figures."""
FILES_PER_CONNECTION = 2
"""HAProxy needs a client and a server socket per connection."""
RESERVED_FILES = 256
"""File descriptors HAProxy needs besides its connections (listeners, checks, CLI)."""
# Longest socket name used below is "g<generation>-restic-append.sock" (< 32 bytes).
MAX_SOCKET_DIR = 97 - 32


LISTEN_HELP = "--listen must be ADDR:PORT with a port 1-65535"
_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>[0-9]{1,5})")


def parse_listen(listen: str) -> tuple[str, int]:
    """``ADDR:PORT`` (an IPv4 address, or an IPv6 one in brackets) as ``(address, port)``;
    :class:`~nsbackup.errors.ValidationFailed` (field ``listen``) otherwise."""
    m = _LISTEN.fullmatch(listen)
    if m is not None and 1 <= int(m.group("port")) <= 65535:
        address = m.group("v6") or m.group("v4")
        try:
            if ipaddress.ip_address(address).version == (6 if m.group("v6") else 4):
                return address, int(m.group("port"))
        except ValueError:
            pass
    from nsbackup.errors import ValidationFailed

    raise ValidationFailed.one(
        "listen",
        listen[:100],
        "invalid_listen",
        f"{LISTEN_HELP} (ADDR an IPv4 address or [IPv6]), not {listen[:100]!r}",
    )


def choose_run_dir(
    state_dir: Path, *, run_writable: bool, runtime_dir: str | None, temp_dir: str, uid: int
) -> Path:
    """The run directory of the gateway whose state is in ``state_dir``; a pure function.

    In order of preference, the first whose path is short enough for a unix socket (HAProxy
    allows 97 bytes):

    1. ``<state>/run``, inside the private state directory;
    2. ``/run/nsbackup-<hash>`` when ``/run`` is writable (root);
    3. ``$XDG_RUNTIME_DIR/nsbackup-<hash>`` (the user's own 0700 runtime directory);
    4. ``<temp>/nsbackup-<uid>-<hash>`` in the shared temporary directory.

    ``<hash>`` derives from ``state_dir``. Each fallback is one directory level, created with
    a single ``mkdir`` and verified before use (:func:`nsbackup.gateway.dirs.ensure_run_dir`):
    a name someone else made first is refused, never reused.
    """
    own = state_dir / "run"
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    candidates = [own]
    if run_writable:
        candidates.append(Path("/run") / f"nsbackup-{digest}")
    if runtime_dir and os.path.isabs(runtime_dir):
        candidates.append(Path(runtime_dir) / f"nsbackup-{digest}")
    last = Path(temp_dir) / f"nsbackup-{uid}-{digest}"
    return next((c for c in candidates if len(str(c)) <= MAX_SOCKET_DIR), last)


@attrs.frozen
class Sockets:
    """Unix sockets of one generation of rclone servers."""

    restic: str
    """The full restic REST server (nodes)."""
    restic_append: str
    """The append-only restic REST server (modules)."""
    webdav: str
    """The WebDAV server over the combined remote: ``/`` and what no destination serves."""
    destinations: Mapping[str, str] = attrs.field(factory=dict)
    """Destination id -> the socket of its own WebDAV server. One server per destination: a
    request waiting on a backend that does not answer holds rclone's directory locks, and in a
    WebDAV server shared by every destination it would stall all of them."""


@attrs.frozen
class GatewaySettings:
    state_dir: Path
    listen: str = f"0.0.0.0:{PORT}"
    repo_dir: str = "/var/lib/nsbackup/repo"
    maxconn: int = MAXCONN
    """HAProxy's connection slots; ``gateway serve`` lowers it to what the file limit allows."""
    access_log: bool = False
    """HAProxy sends one line per request to :attr:`access_socket`."""

    @property
    def run_dir(self) -> Path:
        """Where sockets and pid files live (:func:`choose_run_dir` in this process's
        environment). ``gateway render`` and ``gateway serve`` both use it, so the sockets
        named in a rendered haproxy.cfg are the ones serve creates."""
        return choose_run_dir(
            self.state_dir,
            run_writable=os.access("/run", os.W_OK),
            runtime_dir=os.environ.get("XDG_RUNTIME_DIR"),
            temp_dir=tempfile.gettempdir(),
            uid=os.geteuid(),
        )

    def sockets(self, generation: int, served: Iterable[str] = ()) -> Sockets:
        """The sockets of ``generation``, with a WebDAV socket for each destination id in
        ``served`` (numbered in id order)."""
        run = self.run_dir
        return Sockets(
            restic=str(run / f"g{generation}-restic.sock"),
            restic_append=str(run / f"g{generation}-restic-append.sock"),
            webdav=str(run / f"g{generation}-webdav.sock"),
            destinations={
                uid: str(run / f"g{generation}-dav{index}.sock")
                for index, uid in enumerate(sorted(served))
            },
        )

    @property
    def access_socket(self) -> str:
        """The datagram socket HAProxy sends its access log to (read by ``gateway serve``)."""
        return str(self.run_dir / "access.sock")

    @property
    def status_file(self) -> Path:
        """What ``gateway status`` reads: written by the running ``gateway serve``."""
        return self.state_dir / "status.json"

    @property
    def admin_socket(self) -> str:
        return str(self.run_dir / "haproxy-admin.sock")

    @property
    def master_socket(self) -> str:
        return str(self.run_dir / "haproxy-master.sock")


@attrs.frozen
class GatewayDestination:
    """A destination as the gateway of one node sees it.

    ``local``: served by this node's rclone (its section goes into rclone.conf); otherwise
    ``host_node`` names the node whose gateway serves it (a node-hosted destination elsewhere).
    """

    id: str
    provider: str
    kind: str
    """rclone backend type (e.g. ``s3``), used in names and logs."""
    section: Mapping[str, str] = attrs.field(repr=False)
    basepath: str = ""
    local: bool = True
    host_node: str | None = None


@attrs.frozen
class Peer:
    id: str
    address: str


@attrs.frozen
class RenderContext:
    """The input of every renderer: pure data, no I/O."""

    state: ClusterState
    node_id: str
    settings: GatewaySettings
    destinations: tuple[GatewayDestination, ...]
    sockets: Sockets
    dropped: frozenset[str] = frozenset()
    """Destinations whose backend failed to start: left out of the combined remote."""

    @property
    def local_address(self) -> str:
        node = self.state.nodes.get(self.node_id)
        return node.vpn_ip if node else ""

    @property
    def peers(self) -> tuple[Peer, ...]:
        """Other nodes with a VPN address, the leader first."""
        peers = [
            Peer(n.id, n.vpn_ip)
            for n in self.state.nodes.values()
            if n.id != self.node_id and n.vpn_ip
        ]
        return tuple(sorted(peers, key=lambda p: p.id != self.state.leader))

    @property
    def cluster_network(self) -> str:
        """The trusted source network, or a network that matches nothing."""
        try:
            return str(ipaddress.ip_network(self.state.network, strict=False))
        except ValueError:
            return "0.0.0.0/32"
