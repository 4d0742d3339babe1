"""A node's local disk (``cluster``), served to the cluster by that node's gateway.

The URL names the node by its VPN address and gateway port. The stored section is
``type = local``; the gateway of the hosting node maps it to its repository directory and the
other nodes reach it through that gateway (ref §3.2, §3.4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from nsbackup import hookimpl
from nsbackup.model import ValidatedDestination
from nsbackup.provider import BaseProvider, Provider, UrlError, parse_http_url


class ClusterProvider(BaseProvider):
    name = "cluster"
    description = "Local disk of a cluster node, served by its gateway"
    url_form = "webdav:http://<node-vpn-ip>:4694"
    parameters = ()

    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        if not url.startswith("webdav:"):
            raise UrlError("must start with 'webdav:'")
        scheme, host, port, path = parse_http_url(url[7:].rstrip("/"))
        if scheme != "http" or not port or path:
            raise UrlError("must be webdav:http://<node address>:<port>")
        return {"host": host, "port": port, "basepath": ""}

    def hosting_address(self, validated: ValidatedDestination) -> str:
        """The VPN address of the node whose disk holds the data."""
        return validated.details["host"]

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        return {"type": "local"}

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        return {}


@hookimpl
def nsbackup_register_providers(register: Callable[[Provider], None]) -> None:
    register(ClusterProvider())
