"""nsbackup: backup plumbing for NS8-style container clusters.

The public API is what ``__all__`` names (see docs/api.md): :class:`Cluster` and
:class:`Settings`, the error types, ``FieldError``, rclone-compatible ``rclone_obscure`` and
``rclone_reveal``, and ``hookimpl`` for plugins; the result shapes are in
:mod:`nsbackup.results`. ``import nsbackup`` is cheap: it connects to nothing, loads no
plugin and imports no service; each name is imported when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nsbackup.errors import (
    Busy,
    Conflict,
    NotFound,
    NsbackupError,
    Partial,
    PermissionDenied,
    PluginError,
    Unreachable,
    ValidationFailed,
)

if TYPE_CHECKING:
    from nsbackup.api import Cluster, Settings
    from nsbackup.hookspecs import hookimpl
    from nsbackup.model import FieldError
    from nsbackup.obscure import obscure as rclone_obscure
    from nsbackup.obscure import reveal as rclone_reveal

__version__ = "0.1.0"

_LAZY = {
    "Cluster": ("nsbackup.api", "Cluster"),
    "Settings": ("nsbackup.api", "Settings"),
    "FieldError": ("nsbackup.model", "FieldError"),
    "hookimpl": ("nsbackup.hookspecs", "hookimpl"),
    "rclone_obscure": ("nsbackup.obscure", "obscure"),
    "rclone_reveal": ("nsbackup.obscure", "reveal"),
}

__all__ = [
    "Busy",
    "Cluster",
    "Conflict",
    "FieldError",
    "NotFound",
    "NsbackupError",
    "Partial",
    "PermissionDenied",
    "PluginError",
    "Settings",
    "Unreachable",
    "ValidationFailed",
    "__version__",
    "hookimpl",
    "rclone_obscure",
    "rclone_reveal",
]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'nsbackup' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
