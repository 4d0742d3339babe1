"""The plugin contract: every hook nsbackup calls. These docstrings are the reference.

Plugins are modules or objects with functions marked ``@nsbackup.hookimpl``, found through the
``nsbackup`` entry-point group (the built-in ones too). Registration hooks receive a
``register`` callable; the core checks what it is given (protocol, name, duplicates) and
records which plugin owns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from nsbackup.plugins import Lookups, MetricSink, Renderer, S3Vendor
    from nsbackup.provider import Provider

PROJECT = "nsbackup"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def nsbackup_register_providers(register: Callable[[Provider], None], lookups: Lookups) -> None:
    """Register destination providers: call ``register(provider)`` once per provider.

    ``lookups`` gives access to look-up hooks such as :func:`nsbackup_s3_vendor` for
    providers that consult other plugins. A provider whose name is already taken is refused
    and the error names both plugins.
    """


@hookspec
def nsbackup_register_renderers(register: Callable[[Renderer], None]) -> None:
    """Register gateway configuration renderers: ``register(renderer)`` once per file."""


@hookspec
def nsbackup_register_metric_sinks(register: Callable[[MetricSink], None]) -> None:
    """Register metric sinks: ``register(sink)``; sinks receive one report per run."""


@hookspec(firstresult=True)
def nsbackup_s3_vendor(host: str, parameters: Mapping[str, str]) -> S3Vendor | None:
    """Recognise an S3 vendor from the endpoint ``host`` of a ``generic-s3`` destination.

    ``parameters`` are the validated request parameters (``aws_default_region`` may be
    present). Return an :class:`~nsbackup.plugins.S3Vendor` whose options are added to the
    rclone section, or ``None`` to let the next plugin decide. The first non-``None`` answer
    wins; plugins registered later are asked first, and the built-in NS8 vendor table answers
    last (its fallback is ``provider = Other``).
    """
