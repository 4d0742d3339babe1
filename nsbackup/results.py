"""The shapes of what the API returns: NS8's JSON, written down once as TypedDicts.

Each ``Cluster`` method returns plain dicts and lists of these shapes, exactly what the CLI
prints with ``--json`` and what NS8's actions print today, so an agent action can
``json.dump(result, sys.stdout)``. Field names are NS8's (ref §2.8-2.12, §6.2, §7); fields
nsbackup adds are marked as such.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class DestinationAdded(TypedDict):
    """``destinations.add``: NS8's add-backup-repository output."""

    id: str
    password: str
    """The Restic password of every repository in the destination."""


class DestinationAltered(TypedDict):
    """``destinations.alter`` (NS8 prints nothing; nsbackup says what changed)."""

    id: str
    changed: list[str]
    """Public fields (``name``, ``url``, ``basepath``) and ``rclone:<option>`` names that
    changed; never values."""


class DestinationRemoved(TypedDict):
    id: str
    removed_backups: list[int]
    """Schedules removed with the destination."""


class DestinationItem(TypedDict):
    """One entry of NS8's list-backup-repositories."""

    id: str
    provider: str
    name: str
    url: str
    basepath: str
    parameters: dict[str, str]
    """Provider parameters; secret ones are ``""`` unless secrets were asked for."""
    password: NotRequired[str]
    """The Restic password: only with ``show_secrets``."""


class DestinationList(TypedDict):
    repositories: list[DestinationItem]
    password_exists: bool
    """Whether the cluster dump passphrase is set."""


class NodeCheck(TypedDict):
    node_id: str
    ok: bool
    reason: str | None
    """NS8's reason code when the node cannot use the destination."""
    detail: str


class DestinationValidation(TypedDict):
    id: str
    nodes: list[NodeCheck]


class RenderedDestination(TypedDict):
    """``destinations.render``: the rclone section a request would produce."""

    id: str
    name: str
    provider: str
    url: str
    basepath: str
    """The path inside the remote where repositories live."""
    rclone_conf: str
    """Secret values shown as ``***`` unless asked for."""


class ScheduleAltered(TypedDict):
    id: int
    changed: list[str]


class ScheduleRemoved(TypedDict):
    id: int


class ModuleStatus(TypedDict, total=False):
    """The last run of a module (ref §1.2) in list-backups form: ``errors`` becomes
    ``success``; ``restic stats`` fields are copied as they are."""

    start: int
    end: int
    success: bool
    total_size: int
    total_file_count: int
    snapshots_count: int


class BackupInstance(TypedDict):
    module_id: str
    ui_name: str
    repository_path: str
    """``<app>/<module uuid>`` inside the destination."""
    status: dict[str, Any] | None
    """The :class:`ModuleStatus` of the last run, or ``None`` if it never ran."""


class BackupItem(TypedDict):
    """One schedule of NS8's list-backups."""

    id: int
    name: str
    repository: str
    repository_name: str
    """The destination's name (nsbackup's addition; ``""`` when the destination is gone)."""
    schedule: str
    schedule_hint: dict[str, Any]
    retention: int
    instances: list[BackupInstance]
    enabled: bool


class UnconfiguredInstance(TypedDict):
    id: str
    ui_name: str


class BackupList(TypedDict):
    backups: list[BackupItem]
    unconfigured_instances: list[UnconfiguredInstance]


class SkippedDestination(TypedDict):
    id: str
    reason: str


class GatewayRendered(TypedDict):
    directory: str
    changed: list[str]
    """File names written because their content changed."""
    skipped: list[SkippedDestination]
    """Destinations left out (named with the reason)."""


class ParameterInfo(TypedDict):
    name: str
    description: str
    required: bool
    secret: bool
    pattern: str | None
    max_length: int
    obscured: bool


class ProviderInfo(TypedDict):
    name: str
    description: str
    url_form: str
    plugin: str
    parameters: list[ParameterInfo]


class PluginItem(TypedDict):
    name: str
    distribution: str
    version: str
    hooks: list[str]
    registered: dict[str, list[str]]


class PluginFailureItem(TypedDict):
    name: str
    distribution: str
    version: str
    error: str
    message: str


class PluginsReport(TypedDict):
    plugins: list[PluginItem]
    failures: list[PluginFailureItem]


class ModuleBackupResult(TypedDict):
    """``module.backup``: one module's backup, as the module side saw it."""

    module_id: str
    module_uuid: str
    backup_id: int
    repository: str
    """``<destination>/<app>/<module uuid>``."""
    initialized: bool
    """Whether this backup created the repository."""
    exit_code: int
    """restic's exit code (0 ok, 3 partial, other: failed)."""
    failure: str | None
    """``partial``, ``no_repository``, ``locked``, ``wrong_password`` or ``fatal``."""
    message: str
    snapshot_id: str
    added_bytes: int
    files_new: int
    files_changed: int
    total_bytes: int
    start: int
    end: int


class SnapshotItem(TypedDict):
    """One snapshot of NS8's read-backup-snapshots (``runs.snapshots``), oldest first."""

    timestamp: int
    """The snapshot time, seconds since the epoch (its UTC offset applied)."""
    id: str
    """The full snapshot id."""
    total_bytes: int
    """``summary.total_bytes_processed``; ``-1`` for snapshots without a summary (made by
    restic < 0.17, or read with it)."""
    backup_start: str
    """``summary.backup_start`` as restic wrote it, or ``""``."""
    backup_end: str
    """``summary.backup_end`` as restic wrote it, or ``""``."""


class RepositoryItem(TypedDict):
    """One restic repository found on a destination (NS8's read-backup-repositories,
    ``runs.repositories``). The metadata file on the destination only fills ``module_id``,
    ``module_ui_name``, ``node_fqdn`` and ``is_generated_locally``; every other field is
    computed."""

    module_id: str
    """From the metadata, else the installed module, else ``""``."""
    module_ui_name: str
    node_fqdn: str
    path: str
    """``<app>/<module uuid>`` inside the destination (``runs.snapshots``' ``path``)."""
    name: str
    """The application: the first part of ``path``."""
    uuid: str
    timestamp: int
    """Last change on the destination (its metadata file, rewritten after every run, else
    its ``config``), seconds since the epoch; ``-1`` when the destination gives no date."""
    repository_id: str
    repository_name: str
    repository_provider: str
    repository_url: str
    installed_instance: str
    """The module of this cluster whose UUID this is, or ``""``."""
    installed_instance_ui_name: str
    is_generated_locally: bool | None
    """True for an installed module's repository or metadata naming this cluster; False
    for metadata of another cluster; ``None`` without readable metadata."""


class SkippedBackup(TypedDict):
    id: int
    reason: str


class DumpExported(TypedDict):
    """``dump.export``: the encrypted cluster dump written (nsbackup's own shape)."""

    path: str
    version: int
    """The dump format: 4."""
    digest: str
    """sha256 of the gzip'd plaintext: equal for an unchanged cluster, while the encrypted
    file differs every time."""
    destinations: list[str]
    backups: list[int]
    skipped_destinations: list[SkippedDestination]
    """Destinations left out because a secret or their public hash is missing."""
    skipped_backups: list[SkippedBackup]
    """Schedules left out because their destination is not in the dump."""


class DumpImported(TypedDict):
    """``dump.import_``: NS8's import-backup-destinations output plus what nsbackup adds."""

    imported_destinations: int
    skipped_destinations: int
    version: int
    """nsbackup: the dump's format (3 or 4)."""
    imported: list[str]
    """nsbackup: the ids imported."""
    skipped: list[SkippedDestination]
    """nsbackup: the ids skipped, each with the reason."""


class DumpRestored(TypedDict):
    """``dump.restore``: the backup part of NS8's restore-cluster."""

    version: int
    restored_destinations: list[str]
    restored_backups: list[int]
    backup_sequence: int


class MigratedModuleUuid(TypedDict):
    """A ``cluster/module_uuid`` entry the migration filled in."""

    module_id: str
    uuid: str
    source: str
    """``environment`` (the module's ``MODULE_UUID``) or ``generated`` (a random UUID: the
    environment had none, or not a UUID)."""


class MigratedAclUser(TypedDict):
    """A node or module Redis user whose rules or ``cluster/acls`` entry were rewritten."""

    user: str
    enabled: bool
    """The user's on/off state, kept as it was (so are its password hashes)."""
    rules: bool
    """Its live rules were replaced by nsbackup's (``ACL SETUSER``)."""
    entry: bool
    """Its ``cluster/acls`` entry was rewritten."""


class MigratedDestination(TypedDict):
    """A destination moved to the current layout; its UUID never changes."""

    id: str
    action: str
    """``converted`` (rclone configuration generated from the legacy fields) or ``cleaned``
    (already converted, but legacy fields were left in its public hash)."""
    provider: str
    name: str
    url: str
    legacy_url: str
    """The URL as it was (Restic's colon form becomes the provider's ``/`` form)."""
    basepath: str
    """Where repositories live inside the remote."""
    removed_fields: list[str]
    """Names (never values) of the fields removed from the public hash."""


class UnconvertedDestination(TypedDict):
    """A legacy destination the migration could not convert; it is left as it was."""

    id: str
    provider: str
    url: str
    reason: str


class MigratedSchedule(TypedDict):
    """A schedule whose ``instances`` changed (legacy membership sets, removed modules)."""

    id: int
    instances: list[str]
    added: list[str]
    removed: list[str]


class MigratedStatus(TypedDict):
    """A legacy status ``module/<id>/backup_status/<backup id>`` (deleted in every case)."""

    module_id: str
    backup_id: int
    node_id: str
    """The node whose ``node/<n>/backup_status/<backup id>`` received it (``""`` if none)."""
    action: str
    """``copied``; ``kept_newer`` (the node already had a status of that module);
    ``dropped`` (the module or the schedule no longer exists)."""


class PrunedStatus(TypedDict):
    """Fields of removed modules deleted from one ``node/<n>/backup_status/<backup id>``."""

    node_id: str
    backup_id: int
    module_ids: list[str]


class MigrationEvent(TypedDict):
    channel: str
    payload: str
    """As published: JSON text, or ``cluster/acls`` for ``acl-changed``."""


class MigrationReport(TypedDict):
    """``cluster.migrate()`` (``nsbackup migrate --json``): every change, never a secret."""

    dry_run: bool
    """Nothing was written or published: the report says what would change."""
    changed: bool
    """Whether anything changed (with ``dry_run``: would change)."""
    module_uuids: list[MigratedModuleUuid]
    acl_users: list[MigratedAclUser]
    destinations: list[MigratedDestination]
    unconverted_destinations: list[UnconvertedDestination]
    schedules: list[MigratedSchedule]
    legacy_sets: list[str]
    """Deleted ``module/<id>/backups`` keys."""
    statuses: list[MigratedStatus]
    pruned_modules: list[str]
    """Removed modules deleted from ``cluster/module_uuid``."""
    pruned_statuses: list[PrunedStatus]
    events: list[MigrationEvent]
    warnings: list[str]
