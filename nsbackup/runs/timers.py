"""systemd timers of the node's schedules (NS8's schedule-backup, ref §6.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nsbackup.api import Cluster


class TimerService:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
