"""From a destination request to what is stored: validation, UUID, name, rclone section.

Pure: no Redis, no network. The Redis-backed service (add/alter/remove/list) builds on
:func:`prepare`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from nsbackup import ini
from nsbackup.errors import NsbackupError, PluginError, ValidationFailed
from nsbackup.model import (
    DestinationRequest,
    FieldError,
    PreparedDestination,
    StoredDestination,
    field_error,
)
from nsbackup.plugins import PluginHost
from nsbackup.secret import REDACTED, Secret


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
        uid = (
            previous.id
            if previous is not None
            else destination_uuid(provider.name, provider.identity(validated))
        )
        section = dict(provider.rclone_section(validated))
        basepath = provider.basepath(validated)
        public_basepath = provider.public_basepath(validated)
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
    )


def display_conf(prepared: PreparedDestination, *, show_secrets: bool = False) -> str:
    """The rclone section as text, secret values shown as ``***`` unless asked."""
    if show_secrets:
        return prepared.rclone_conf
    shown = {k: (REDACTED if isinstance(v, Secret) else v) for k, v in prepared.section.items()}
    return ini.render_section(prepared.id, shown)


def render_result(prepared: PreparedDestination, *, show_secrets: bool = False) -> dict[str, Any]:
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
