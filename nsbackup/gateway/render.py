"""Render the gateway files of one node from one cluster snapshot, and write them safely."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import attrs

from nsbackup import ini
from nsbackup.destinations import prepare, stored_destination
from nsbackup.errors import NsbackupError, PermissionDenied, PluginError
from nsbackup.files import write_atomic
from nsbackup.gateway.context import GatewayDestination, GatewaySettings, RenderContext
from nsbackup.gateway.dirs import check_directory
from nsbackup.model import ClusterState, DestinationRequest
from nsbackup.plugins import PluginHost

log = logging.getLogger(__name__)


@attrs.frozen
class Problem:
    destination: str
    reason: str

    def __str__(self) -> str:
        return f"destination {self.destination} skipped: {self.reason}"


def gateway_destinations(
    state: ClusterState, host: PluginHost, node_id: str, repo_dir: str
) -> tuple[tuple[GatewayDestination, ...], tuple[Problem, ...]]:
    """Each stored destination as this node's gateway serves it; unusable ones are reported.

    The stored rclone section is used verbatim (what the store holds is what rclone reads);
    the provider only says where repositories live inside it and which node hosts the data.
    """
    local_ip = state.nodes[node_id].vpn_ip if node_id in state.nodes else ""
    by_ip = {n.vpn_ip: n.id for n in state.nodes.values() if n.vpn_ip}
    result: list[GatewayDestination] = []
    problems: list[Problem] = []
    for dest in state.destinations.values():
        try:
            if dest.rclone_conf is None:
                raise NsbackupError("its configuration cannot be read with these credentials")
            provider = host.providers.get(dest.provider)
            if provider is None:
                raise NsbackupError(f"no provider plugin {dest.provider!r} is installed")
            stored = stored_destination(dest.id, dest.public(), dest.rclone_conf)
            if not stored.section.get("type"):
                raise NsbackupError("its rclone section has no type")
            request = DestinationRequest(
                provider=dest.provider,
                url=dest.url,
                name=dest.name,
                parameters=provider.parameters_from_section(stored.section, hide_secrets=False),
            )
            prepared = prepare(host, request, stored)
        except (NsbackupError, ini.IniError) as exc:
            problems.append(Problem(dest.id, str(exc).splitlines()[0]))
            continue
        kind = stored.section["type"]
        if prepared.hosted_at is None:
            result.append(
                GatewayDestination(dest.id, dest.provider, kind, stored.section, prepared.basepath)
            )
        elif prepared.hosted_at == local_ip and local_ip:
            result.append(
                GatewayDestination(
                    dest.id, dest.provider, "local", {"type": "local"}, repo_dir.rstrip("/") or "/"
                )
            )
        elif prepared.hosted_at in by_ip:
            result.append(
                GatewayDestination(
                    dest.id,
                    dest.provider,
                    kind,
                    stored.section,
                    prepared.basepath,
                    local=False,
                    host_node=by_ip[prepared.hosted_at],
                )
            )
        else:
            problems.append(Problem(dest.id, f"no node has the address {prepared.hosted_at}"))
    return tuple(result), tuple(problems)


def build_context(
    state: ClusterState,
    host: PluginHost,
    node_id: str,
    settings: GatewaySettings,
    generation: int = 0,
    dropped: frozenset[str] = frozenset(),
) -> tuple[RenderContext, tuple[Problem, ...]]:
    destinations, problems = gateway_destinations(state, host, node_id, settings.repo_dir)
    served = [d.id for d in destinations if d.local and d.id not in dropped]
    context = RenderContext(
        state, node_id, settings, destinations, settings.sockets(generation, served), dropped
    )
    return context, problems


def render_files(host: PluginHost, context: RenderContext) -> dict[str, tuple[str, bool]]:
    """``{filename: (text, secret)}`` from every registered renderer."""
    files: dict[str, tuple[str, bool]] = {}
    for renderer in host.renderers.values():
        try:
            text = renderer.render(context)
        except NsbackupError:
            raise
        except Exception as exc:
            owner = host.owner("renderer", renderer.name)
            raise PluginError(
                f"renderer {renderer.name} (plugin {owner}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(text, str) or "\x00" in text or "\r" in text:
            raise PluginError(f"renderer {renderer.name} returned invalid text")
        if renderer.filename in files:
            raise PluginError(f"two renderers write {renderer.filename}")
        files[renderer.filename] = (text, renderer.secret)
    return files


FILE_MODE = 0o600
"""Every gateway file: auth.map holds the password hashes of every node and module, rclone.conf
destination credentials, and nothing else needs to be read by another user (HAProxy and rclone
run as the gateway's user)."""


def write_files(
    directory: Path, files: Mapping[str, tuple[str, bool]], field: str = "out"
) -> list[str]:
    """Write each file atomically (temp + fsync + rename) with mode 0600, secret or not. A
    missing ``directory`` is created with mode 0700 (an existing one keeps its mode). A file
    whose content and mode did not change is not rewritten. Return the changed names.

    A ``directory`` that is not one raises :class:`~nsbackup.errors.ValidationFailed` (field
    ``field``, ``invalid_path``); one that cannot be written,
    :class:`~nsbackup.errors.PermissionDenied`."""
    check_directory(directory, field)
    changed = []
    try:
        for name, (text, _secret) in sorted(files.items()):
            path = directory / name
            mode = FILE_MODE
            try:
                if (
                    path.read_text(encoding="utf-8") == text
                    and (path.stat().st_mode & 0o777) == mode
                ):
                    continue
            except OSError:
                pass
            write_atomic(path, text, mode)
            changed.append(name)
    except OSError as exc:
        raise PermissionDenied(
            f"cannot write the gateway files into {directory}: {exc.strerror or exc}"
        ) from None
    return changed
