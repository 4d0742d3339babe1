"""Restore grants and module restores (ref §8.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nsbackup.api import Cluster


class RestoreService:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
