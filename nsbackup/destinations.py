"""From a destination request to what is stored: validation, UUID, name, rclone section.

Pure: no Redis, no network. The Redis-backed service (add/alter/remove/list) builds on
:func:`prepare`.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from nsbackup import ini
from nsbackup.api import DEFAULT_DUMP_PASSPHRASE_FILE, DEFAULT_REPO_DIR
from nsbackup.errors import NotFound, NsbackupError, PermissionDenied, PluginError, ValidationFailed
from nsbackup.model import (
    ClusterState,
    Destination,
    DestinationRequest,
    FieldError,
    NodeValidation,
    PreparedDestination,
    StoredDestination,
    field_error,
)
from nsbackup.plugins import PluginHost
from nsbackup.probe import excerpt, most_important, probe
from nsbackup.results import (
    DestinationAdded,
    DestinationAltered,
    DestinationItem,
    DestinationList,
    DestinationRemoved,
    DestinationValidation,
    RenderedDestination,
)
from nsbackup.secret import REDACTED, Secret, redacting_filter
from nsbackup.store import Store, destination_exists_error


def destination_uuid(provider: str, identity: Mapping[str, str]) -> str:
    """The destination UUID: uuid5 over the provider name and its non-secret identity.

    Unlike NS8 (ref §2.5, §14.8) no credential takes part, so the UUID reveals nothing about
    secrets, and the same location added with other credentials gets the same UUID (and is
    refused as ``backup_repository_exists``) instead of a second Restic password.
    """
    canonical = json.dumps(
        {"provider": provider, "identity": dict(identity)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "nsbackup:destination:" + canonical))


def prepare(
    host: PluginHost,
    request: DestinationRequest,
    previous: StoredDestination | None = None,
) -> PreparedDestination:
    """Validate ``request`` with its provider and build the stored form.

    ``previous`` is the stored destination on alter: its UUID is kept, its provider must match,
    and empty secrets keep their stored values. Raise :class:`ValidationFailed` with every bad
    field; a provider that fails in any other way raises :class:`PluginError`.
    """
    provider = host.provider(request.provider)
    if previous is not None and previous.provider != request.provider:
        raise ValidationFailed(
            [
                FieldError(
                    "provider",
                    "provider",
                    request.provider,
                    "backup_provider_mismatch",
                    f"destination {previous.id} uses provider {previous.provider}",
                )
            ]
        )
    owner = host.owner("provider", provider.name)
    try:
        validated = provider.validate(request, previous)
        location = destination_uuid(provider.name, provider.identity(validated))
        uid = previous.id if previous is not None else location
        section = dict(provider.rclone_section(validated))
        basepath = provider.basepath(validated)
        public_basepath = provider.public_basepath(validated)
        # Optional provider method: the address of the node hosting the data.
        hosting = getattr(provider, "hosting_address", None)
        hosted_at = hosting(validated) if callable(hosting) else None
        if request.name:
            name = request.name
        elif request.name is None and previous is not None:
            name = previous.name
        else:
            name = provider.default_name(validated, uid)
    except NsbackupError:
        raise
    except Exception as exc:
        raise PluginError(
            f"provider {provider.name} (plugin {owner}) failed: {type(exc).__name__}"
        ) from exc
    if not section or next(iter(section)) != "type":
        raise PluginError(
            f"provider {provider.name} (plugin {owner}) returned a section "
            "that does not start with 'type'"
        )
    try:
        text = ini.render_section(uid, section)
    except ini.IniError as exc:
        secret = isinstance(section.get(exc.option), Secret)
        raise ValidationFailed(
            [
                field_error(
                    "parameters",
                    exc.option,
                    section.get(exc.option),
                    "pattern",
                    str(exc),
                    secret=secret,
                )
            ]
        ) from None
    if ini.parse(text) != {uid: {k: str(v) for k, v in section.items()}}:
        raise PluginError(
            f"provider {provider.name} (plugin {owner}) produced values that "
            "do not survive an rclone config round trip"
        )
    return PreparedDestination(
        id=uid,
        provider=provider.name,
        name=name,
        url=validated.url,
        basepath=basepath,
        public_basepath=public_basepath,
        section=section,
        rclone_conf=text,
        hosted_at=hosted_at,
        location=location,
    )


def display_conf(prepared: PreparedDestination, *, show_secrets: bool = False) -> str:
    """The rclone section as text, secret values shown as ``***`` unless asked."""
    if show_secrets:
        return prepared.rclone_conf
    shown = {k: (REDACTED if isinstance(v, Secret) else v) for k, v in prepared.section.items()}
    return ini.render_section(prepared.id, shown)


def render_result(
    prepared: PreparedDestination, *, show_secrets: bool = False
) -> RenderedDestination:
    """``nsbackup destination render --json`` output."""
    return {
        "id": prepared.id,
        "name": prepared.name,
        "provider": prepared.provider,
        "url": prepared.url,
        "basepath": prepared.basepath,
        "rclone_conf": display_conf(prepared, show_secrets=show_secrets),
    }


def stored_destination(uid: str, public: Mapping[str, str], rclone_conf: str) -> StoredDestination:
    """Rebuild a :class:`StoredDestination` from its stored public hash and rclone text."""
    try:
        sections = ini.parse(rclone_conf)
    except ini.IniError as exc:
        raise ValidationFailed(
            [
                field_error(
                    "id",
                    "id",
                    uid,
                    "rclone_conf_error",
                    f"stored configuration of {uid} cannot be read: {exc}",
                )
            ]
        ) from None
    section = sections.get(uid) or (next(iter(sections.values())) if sections else {})
    return StoredDestination(
        id=uid,
        provider=public.get("provider", ""),
        url=public.get("url", ""),
        name=public.get("name", ""),
        basepath=public.get("basepath", ""),
        section=section,
    )


# -- the service behind `nsbackup destination ...` (``Cluster.destinations``) -----------------


class DestinationService:
    """Destinations in Redis, with NS8's payloads and outputs (ref §2.8-2.12).

    Reached as ``cluster.destinations``. ``node_id`` is the local node; ``repo_dir`` the
    directory its gateway serves for node-hosted (``cluster``) destinations;
    ``passphrase_file`` the cluster dump passphrase (reported as ``password_exists`` by
    :meth:`list`).
    """

    def __init__(
        self,
        store: Store,
        host: PluginHost,
        *,
        node_id: str | None = None,
        repo_dir: str = DEFAULT_REPO_DIR,
        passphrase_file: str = DEFAULT_DUMP_PASSPHRASE_FILE,
    ) -> None:
        self.store = store
        self.host = host
        self.node_id = node_id
        self.repo_dir = repo_dir
        self.passphrase_file = passphrase_file

    # -- validation -----------------------------------------------------------------------
    def _validation_plan(
        self, prepared: PreparedDestination, state: ClusterState
    ) -> tuple[list[str], str | None]:
        """The nodes that must be able to reach the destination, and a base path override."""
        if prepared.hosted_at is None:
            nodes = list(state.nodes) or [self.node_id or "local"]
            return nodes, None
        hosts = [n.id for n in state.nodes.values() if n.vpn_ip == prepared.hosted_at]
        if len(hosts) != 1:
            raise ValidationFailed(
                [
                    field_error(
                        "url",
                        "url",
                        prepared.url,
                        "backup_repository_not_accessible",
                        f"no node has the address {prepared.hosted_at}"
                        if not hosts
                        else f"nodes {', '.join(hosts)} share the address {prepared.hosted_at}",
                    )
                ]
            )
        return hosts, self.repo_dir

    def check_usable(
        self, prepared: PreparedDestination, state: ClusterState | None = None
    ) -> list[NodeValidation]:
        """Probe ``prepared`` from the nodes that use it; raise :class:`ValidationFailed` with
        NS8's reason when none succeeds."""
        state = state or self.store.load(details=False)
        nodes, basepath = self._validation_plan(prepared, state)
        results = self.host.pm.hook.nsbackup_validate_destination(
            prepared=prepared, node_ids=nodes, basepath=basepath
        )
        if results is None:
            results = [self._probe_locally(prepared, nodes, basepath)]
        results = list(results)
        if not any(r.ok for r in results):
            reason = most_important(r.reason or "" for r in results)
            details = "; ".join(
                f"node {r.node_id}: {r.reason}" + (f" ({excerpt(r.detail)})" if r.detail else "")
                for r in results
            )
            raise ValidationFailed(
                [
                    FieldError(
                        "parameters", "parameters", {}, reason, f"destination not usable: {details}"
                    )
                ]
            )
        return results

    def _probe_locally(
        self, prepared: PreparedDestination, nodes: Sequence[str], basepath: str | None
    ) -> NodeValidation:
        local = self.node_id or "local"
        if basepath is not None and self.node_id not in nodes:
            return NodeValidation(
                local,
                False,
                "backup_repository_not_accessible",
                f"the data is hosted by node {', '.join(nodes)}; validate "
                "there (or install a validation plugin that fans out)",
            )
        if basepath is not None:
            problem = _hosting_problem(prepared, basepath)
            if problem:
                return NodeValidation(local, False, "backup_repository_not_accessible", problem)
        result = probe(prepared, basepath)
        return NodeValidation(local, result.ok, result.reason, result.detail)

    # -- the API --------------------------------------------------------------------------
    def render(self, payload: Any, *, show_secrets: bool = False) -> RenderedDestination:
        """The rclone section an add request would produce. No Redis, no network."""
        prepared = prepare(self.host, DestinationRequest.from_payload(payload))
        return render_result(prepared, show_secrets=show_secrets)

    def validate(self, payload: Any) -> DestinationValidation:
        """Validate an add request on the nodes that would use it; nothing is saved."""
        prepared = prepare(self.host, DestinationRequest.from_payload(payload))
        results = self.check_usable(prepared)
        return {
            "id": prepared.id,
            "nodes": [
                {"node_id": r.node_id, "ok": r.ok, "reason": r.reason, "detail": r.detail}
                for r in results
            ],
        }

    def add(self, payload: Any) -> DestinationAdded:
        """NS8's add-backup-repository: validate the request, check that the caller may write
        destinations, probe the destination from the nodes, then save it in one transaction
        with its event. Return ``{"id", "password"}`` (the Restic password)."""
        request = DestinationRequest.from_payload(payload)
        prepared = prepare(self.host, request)
        if self.store.destination_exists(prepared.id):
            raise destination_exists_error(prepared.id)
        self.store.add_destination(prepared, "", dry_run=True)  # may we? before any probe
        self.check_usable(prepared)
        password = request.password.reveal() if request.password else secrets.token_hex(32)
        self.store.add_destination(prepared, password)
        redacting_filter.add(password)
        return {"id": prepared.id, "password": password}

    def alter(self, payload: Any) -> DestinationAltered:
        """NS8's alter-backup-repository: the UUID and the Restic password never change; an
        empty secret keeps the stored one. Return the id and the names of what changed."""
        request = DestinationRequest.from_payload(payload, alter=True)
        assert request.id is not None
        stored = self._stored(request.id)
        prepared = prepare(self.host, request, stored)
        before = prepare(self.host, _request_of(stored, self.host), stored)
        if prepared.location != before.location:
            # A new location under the old UUID would orphan the old location's repositories
            # and let it be added again with a second Restic password (ref §14.22).
            raise ValidationFailed(
                [
                    FieldError(
                        "url",
                        "url",
                        prepared.url,
                        "backup_location_immutable",
                        "the location of a destination cannot change (url, bucket, host, base "
                        "path, account); add a new destination for the new location",
                    )
                ]
            )
        changed = _changes(stored, prepared)
        if changed:
            self.store.alter_destination(prepared, dry_run=True)
            self.check_usable(prepared)
            self.store.alter_destination(prepared)
        return {"id": prepared.id, "changed": changed}

    def remove(self, uid: str, *, dry_run: bool = False) -> DestinationRemoved:
        """Remove a destination, its secrets, the schedules that use it and their status keys
        (the data on the destination stays). With ``dry_run`` nothing is removed: the result
        says what would be, once Redis has confirmed that the caller may remove it."""
        state = self.store.load(details=False)
        if uid not in state.destinations:
            raise _not_found(uid)
        schedules = sorted(b.id for b in state.schedules.values() if b.repository == uid)
        self.store.remove_destination(uid, schedules, state.nodes, dry_run=dry_run)
        return {"id": uid, "removed_backups": schedules}

    def list(self, *, show_secrets: bool = False) -> DestinationList:
        """NS8's list-backup-repositories output; secrets only with ``show_secrets`` and a
        reader allowed to see them."""
        state = self.store.load(details=False)
        if show_secrets and not state.privileged:
            raise PermissionDenied(
                f"permission denied: Redis user {self.store.reader_user!r} may not read "
                "secrets; showing them needs a node-privileged user"
            )
        items: list[DestinationItem] = []
        for dest in state.destinations.values():
            item: DestinationItem = {
                "id": dest.id,
                "provider": dest.provider,
                "name": dest.name,
                "url": dest.url,
                "basepath": dest.basepath,
                "parameters": self._parameters(dest, hide_secrets=not show_secrets),
            }
            if show_secrets:
                item["password"] = dest.restic_password.reveal() if dest.restic_password else ""
            items.append(item)
        return {"repositories": items, "password_exists": _non_empty(self.passphrase_file)}

    def _parameters(self, dest: Destination, *, hide_secrets: bool) -> dict[str, str]:
        provider = self.host.providers.get(dest.provider)
        if provider is None or dest.rclone_conf is None:
            return {}
        stored = stored_destination(dest.id, dest.public(), dest.rclone_conf)
        return dict(provider.parameters_from_section(stored.section, hide_secrets))

    def _stored(self, uid: str) -> StoredDestination:
        dest = self.store.read_destination(uid)
        if dest is None or dest.rclone_conf is None:
            raise _not_found(uid)
        return stored_destination(uid, dest.public(), dest.rclone_conf)


def _hosting_problem(prepared: PreparedDestination, repo_dir: str) -> str:
    """Why this node cannot host ``prepared`` (``""`` when it can). Validation has no side
    effect: the repository directory must exist already (it is never created here), and the
    gateway the URL names must answer (other nodes reach the data through it)."""
    import requests

    if not os.path.isdir(repo_dir):
        return (
            f"the repository directory {repo_dir} does not exist on this node "
            "(create it, or give the right one with --repo-dir / NSBACKUP_REPO_DIR)"
        )
    address = prepared.url.split(":", 1)[1] if ":" in prepared.url else prepared.url
    try:
        requests.get(address.rstrip("/") + "/", timeout=(3, 5))
    except requests.RequestException as exc:
        return f"no gateway answers at {address}: {type(exc).__name__}"
    return ""


def _request_of(stored: StoredDestination, host: PluginHost) -> DestinationRequest:
    """The request that describes a stored destination as it is (its own values)."""
    provider = host.provider(stored.provider)
    return DestinationRequest(
        provider=stored.provider,
        url=stored.url,
        name=stored.name,
        parameters=provider.parameters_from_section(stored.section, hide_secrets=False),
    )


def _changes(stored: StoredDestination, prepared: PreparedDestination) -> list[str]:
    """Names of the public fields and rclone options an alter changes (values never shown)."""
    changed = [
        name
        for name, before, after in (
            ("name", stored.name, prepared.name),
            ("url", stored.url, prepared.url),
            ("basepath", stored.basepath, prepared.public_basepath),
        )
        if before != after
    ]
    section = {k: str.__str__(v) for k, v in prepared.section.items()}
    for key in sorted(set(stored.section) | set(section)):
        if not _same_value(stored.section.get(key), section.get(key)):
            changed.append(f"rclone:{key}")
    return changed


def _same_value(before: str | None, after: str | None) -> bool:
    """Equal, or the same secret obscured twice (rclone obscures with a random IV)."""
    if before == after:
        return True
    if before is None or after is None:
        return False
    from nsbackup.obscure import RevealError, reveal

    try:
        return reveal(before) == reveal(after)
    except RevealError:
        return False


def _not_found(uid: str) -> NotFound:
    return NotFound(
        [FieldError("id", "id", uid, "backup_repository_not_found", f"destination {uid} not found")]
    )


def _non_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False
