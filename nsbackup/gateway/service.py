"""``cluster.gateway``: render the gateway files of the local node, or run its gateway."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsbackup.errors import NotFound, ValidationFailed
from nsbackup.gateway.context import PORT, GatewaySettings, parse_listen
from nsbackup.model import ClusterState, FieldError
from nsbackup.plugins import PluginHost
from nsbackup.results import GatewayRendered
from nsbackup.store import Store

if TYPE_CHECKING:
    from nsbackup.gateway.serve import Gateway

DEFAULT_LISTEN = f"0.0.0.0:{PORT}"


class GatewayService:
    """The gateway of node ``node_id``; ``repo_dir`` is the local disk it serves for
    node-hosted (``cluster``) destinations."""

    def __init__(self, store: Store, host: PluginHost, node_id: str | None, repo_dir: str) -> None:
        self.store = store
        self.host = host
        self.node_id = node_id
        self.repo_dir = repo_dir

    def _node(self) -> str:
        if not self.node_id:
            raise ValidationFailed.one(
                "node", None, "required", "the local node id is required (--node or NODE_ID)"
            )
        return self.node_id

    @staticmethod
    def _check_cluster(state: ClusterState, node: str) -> None:
        """A node the cluster does not know, or a cluster without its network, would give a
        gateway for nobody (``CLUSTER_NETWORK=0.0.0.0/32``): refuse, naming what is missing."""
        if node not in state.nodes:
            known = ", ".join(state.nodes) or "none (is this the cluster's Redis?)"
            raise NotFound(
                [
                    FieldError(
                        "node",
                        "node",
                        node,
                        "node_not_found",
                        f"node {node} is not in the cluster (cluster/module_node, "
                        f"cluster/environment); known nodes: {known}",
                    )
                ]
            )
        if not state.network:
            raise ValidationFailed.one(
                "network",
                None,
                "network_not_set",
                "cluster/network is not set: the gateway would trust no cluster address",
            )

    def render(
        self,
        out_dir: str | Path,
        *,
        listen: str = DEFAULT_LISTEN,
        repo_dir: str | None = None,
    ) -> GatewayRendered:
        """Write this node's gateway files into ``out_dir`` (atomically; unchanged files are
        left alone). Destinations that cannot be served are left out and listed in
        ``skipped``; the others are written."""
        from nsbackup.gateway.dirs import check_directory
        from nsbackup.gateway.render import build_context, render_files, write_files

        node = self._node()
        parse_listen(listen)
        settings = GatewaySettings(
            Path(out_dir).resolve(), listen=listen, repo_dir=repo_dir or self.repo_dir
        )
        # Before Redis: a bad --out is said first; nothing is made until the files are written.
        check_directory(settings.state_dir, "out", create=False)
        state = self.store.load(details=False)
        self._check_cluster(state, node)
        context, problems = build_context(state, self.host, node, settings)
        changed = write_files(settings.state_dir, render_files(self.host, context))
        return {
            "directory": str(settings.state_dir),
            "changed": changed,
            "skipped": [{"id": p.destination, "reason": p.reason} for p in problems],
        }

    def server(
        self,
        state_dir: str | Path,
        *,
        listen: str = DEFAULT_LISTEN,
        repo_dir: str | None = None,
        access_log: str | None = None,
    ) -> Gateway:
        """A gateway for this node, not started yet: call ``start()``, ``serve_forever()``
        (until ``request_stop()``, e.g. from a signal handler) and ``stop()``.
        ``access_log``: a file the gateway appends a line per request to, or ``-`` for
        standard output. ``listen`` is checked here (``ValidationFailed``, field ``listen``)."""
        from nsbackup.gateway.serve import Gateway

        node = self._node()
        parse_listen(listen)
        settings = GatewaySettings(
            Path(state_dir).resolve(),
            listen=listen,
            repo_dir=str(Path(repo_dir or self.repo_dir).resolve()),
            access_log=access_log is not None,
        )
        if access_log not in (None, "-"):
            access_log = str(Path(access_log).resolve())
        return Gateway(self.store, self.host, node, settings, access_log=access_log)

    def status(self, state_dir: str | Path) -> dict[str, Any]:
        """What the gateway serving ``state_dir`` is doing, read from its status file and its
        sockets (no Redis needed): ``{"pid", "node_id", "listen", "state", "started",
        "generation": {"number", "served", ...}, "dropped": [{"id", "reason"}], "skipped",
        "haproxy", "rclone", "redis": {"connected", "user", "mode", "since"}, "reloads",
        "access_log", "updated", "live": {"haproxy": {"up", "connections", "workers",
        "old_workers"}, "rclone": {"up"}, "healthy"}}``. ``Unreachable`` (exit 5) when no
        gateway runs for ``state_dir``."""
        from nsbackup.gateway.status import read_status

        return read_status(Path(state_dir).resolve())
