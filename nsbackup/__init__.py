"""nsbackup: backup plumbing for NS8-style container clusters.

The public API is what ``__all__`` names (see docs/api.md): :class:`Cluster` and
:class:`Settings`, the error types, the result shapes, rclone-compatible ``obscure``/``reveal``
and ``hookimpl`` for plugins. ``import nsbackup`` is cheap: it connects to nothing, loads no
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
    from nsbackup.obscure import obscure, reveal

__version__ = "0.1.0"

_LAZY = {
    "Cluster": "nsbackup.api",
    "Settings": "nsbackup.api",
    "FieldError": "nsbackup.model",
    "hookimpl": "nsbackup.hookspecs",
    "obscure": "nsbackup.obscure",
    "reveal": "nsbackup.obscure",
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
    "obscure",
    "reveal",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nsbackup' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
