"""``nsbackup scheduler``: a foreground scheduler for hosts without systemd."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nsbackup.api import Cluster


class Scheduler:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
