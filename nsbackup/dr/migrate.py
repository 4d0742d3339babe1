"""Migration of NS8's pre-3.20 layout (ref §9, §5.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nsbackup.api import Cluster


def migrate(cluster: Cluster, *, dry_run: bool = False) -> dict[str, Any]:
    raise NotImplementedError
