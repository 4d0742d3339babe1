"""Imports fine, then registers something that is not a Provider."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nsbackup import hookimpl


class HalfAProvider:
    """Has a name and a description, and nothing else a provider needs."""

    name = "half"
    description = "not a provider"


@hookimpl
def nsbackup_register_providers(register: Callable[[Any], None]) -> None:
    register(HalfAProvider())
