"""The encrypted cluster dump (ref §8.1, §8.2, §8.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nsbackup.api import Cluster


class DumpService:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
