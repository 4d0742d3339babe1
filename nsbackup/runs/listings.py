"""Listings with node credentials (ref §7.2, §7.4): the snapshots of a repository and the
restic repositories found on every destination."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nsbackup.errors import NsbackupError

if TYPE_CHECKING:
    from nsbackup.runs.node import RunService


def snapshots(service: RunService, payload: Any) -> list[dict[str, Any]]:
    raise NsbackupError("backup snapshots is not implemented yet")


def repositories(service: RunService, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    raise NsbackupError("destination repositories is not implemented yet")
