"""The plugin contract: every hook nsbackup calls. These docstrings are the reference.

Plugins are modules or objects with functions marked ``@nsbackup.hookimpl``, found through the
``nsbackup`` entry-point group (the built-in ones too). Registration hooks receive a
``register`` callable; the core checks what it is given (protocol, name, duplicates) and
records which plugin owns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from nsbackup.model import NodeValidation, PreparedDestination
    from nsbackup.plugins import Lookups, MetricSink, ModuleRunner, Renderer, S3Vendor
    from nsbackup.provider import Provider
    from nsbackup.runs.context import RunContext
    from nsbackup.runs.report import RunReport

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
    """Register gateway configuration renderers: ``register(renderer)`` once per file.

    A renderer is a pure function of the render context (one cluster snapshot, the local node
    id and the gateway settings) returning the text of one file; files marked ``secret`` are
    written with mode 0600.
    """


@hookspec
def nsbackup_register_metric_sinks(register: Callable[[MetricSink], None]) -> None:
    """Register metric sinks: ``register(sink)`` once per sink.

    Each sink receives one report per run. A sink must not raise: nsbackup catches, logs and
    counts its failures so that a broken sink never fails a backup.
    """


@hookspec
def nsbackup_register_module_runners(register: Callable[[ModuleRunner], None]) -> None:
    """Register module runners: ``register(runner)`` once per runner.

    A runner is how the node reaches a module's context to run ``nsbackup module backup``
    with the module's own identity and credentials (built-in: ``local``, modules as
    directories on this machine; ``ns8``, NS8's ``runagent -m <module-id>``). The node picks
    one with ``--runner NAME``; it knows nothing of the module's layout.
    """


@hookspec
def nsbackup_before_run(context: RunContext) -> None:
    """Called once per ``backup run`` on a node, before any module is backed up.

    ``context`` describes the run (schedule, node, whether this node is the leader, the
    cluster snapshot, the gateway) and lets the plugin upload a file to the destination
    through the gateway with the node's credentials and add notes to the run report. NS8's
    leader uploads the encrypted cluster dump here. An exception is logged as a warning and
    noted in the report; it never fails the run.
    """


@hookspec
def nsbackup_after_run(report: RunReport) -> None:
    """Called with the finished :class:`~nsbackup.runs.report.RunReport` of every
    ``backup run``, after the metric sinks. An exception is logged and never changes the
    run's outcome."""


@hookspec(firstresult=True)
def nsbackup_s3_vendor(host: str, parameters: Mapping[str, str]) -> S3Vendor | None:
    """Recognise an S3 vendor from the endpoint ``host`` of a ``generic-s3`` destination.

    ``parameters`` are the validated request parameters (``aws_default_region`` may be
    present). Return an :class:`~nsbackup.plugins.S3Vendor` whose options are added to the
    rclone section, or ``None`` to let the next plugin decide. The first non-``None`` answer
    wins; plugins registered later are asked first, and the built-in NS8 vendor table answers
    last (its fallback is ``provider = Other``).
    """


@hookspec(firstresult=True)
def nsbackup_validate_destination(
    prepared: PreparedDestination, node_ids: Sequence[str], basepath: str | None
) -> Sequence[NodeValidation] | None:
    """Validate a destination on the given nodes and return one result per node.

    By default nsbackup probes the destination from the local node only. A host platform that
    can run a task on other nodes (NS8 runs ``validate-backup-destination`` on each) answers
    here; the destination is accepted when at least one node succeeds, otherwise the most
    important reason is reported (``no_write_permission`` > ``no_delete_permission`` >
    ``no_read_permission`` > ``backup_repository_not_accessible``). ``basepath`` overrides the
    provider's base path for node-hosted destinations (the serving node's repository
    directory). Return ``None`` to let nsbackup probe locally.
    """
