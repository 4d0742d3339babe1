"""What ``nsbackup_before_run`` receives: the run about to start, and a way to put a file on
its destination through the gateway with the node's credentials."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from nsbackup.model import ClusterState, Schedule

if TYPE_CHECKING:
    from nsbackup.api import Settings


@attrs.frozen
class RunContext:
    """One ``backup run`` of ``schedule`` on ``node_id``, before its modules.

    ``leader`` says whether this node is the cluster's leader (NS8 uploads the cluster dump
    from there). :meth:`upload` writes ``/<destination>/<name>`` through the gateway;
    :meth:`note` adds a JSON value to the run report's ``notes``. ``settings`` are the
    node's :class:`~nsbackup.api.Settings` (state directory, dump passphrase file, ...).
    """

    schedule: Schedule
    node_id: str
    leader: bool
    state: ClusterState
    gateway_url: str
    _upload: Callable[[str, bytes, str], None] = attrs.field(repr=False, alias="upload")
    _notes: dict[str, Any] = attrs.field(factory=dict, repr=False, alias="notes")
    settings: Settings | None = attrs.field(default=None, repr=False)

    @property
    def destination(self) -> str:
        return self.schedule.repository

    def upload(
        self, name: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Put ``data`` at ``/<destination>/<name>`` (parents created); raise
        :class:`~nsbackup.errors.NsbackupError` on failure."""
        self._upload(name, data, content_type)

    def note(self, key: str, value: Any) -> None:
        self._notes[key] = value
