"""Listings with node credentials (ref §7.2, §7.4): the snapshots of a repository and the
restic repositories found on every destination.

``snapshots``: ``restic snapshots --json --no-lock`` on ``<destination>/<app>/<uuid>`` through
the gateway. Snapshot times are converted with their UTC offset (NS8 dropped it).

``repositories``: each destination's health check (``GET /<uuid>/_probe_rest_404``, answered
by the gateway's restic server), then its WebDAV with ``Depth: 1`` one level at a time
(destination → applications → repository directories, then ``Depth: 0`` on each ``config``),
never ``Depth: infinity``, which would walk every pack file of every repository. All
destinations start at once and share one deadline, ``timeout`` seconds away: each request's
connect and read timeouts are cut to what is left of it, and the caller stops waiting at the
deadline (the workers are daemon threads, so a backend that never answers holds neither the
caller nor the process's exit). Metadata files (``<app>/<uuid>.json``) are untrusted
destination content: only four known fields are read from them, with their types checked,
their lengths bounded and control characters refused, and they never override a computed field
(ref §14.19).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from nsbackup.errors import (
    NotFound,
    NsbackupError,
    Partial,
    PermissionDenied,
    Unreachable,
    ValidationFailed,
)
from nsbackup.model import CONTROL_CHARS, Destination, FieldError, Module
from nsbackup.restic import classify_failure, gateway_refusal, run_restic
from nsbackup.runs.command import check_seconds
from nsbackup.runs.module import explain_failure
from nsbackup.webdav import Entry, GatewayClient

if TYPE_CHECKING:
    from nsbackup.runs.node import RunService

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# The shapes the gateway lets modules reach (plugins/gateway.py): lower-case application
# names and lower-case UUIDs. A repository outside them could not be restored by a module.
APP = re.compile(r"[a-z][a-z0-9_-]{0,63}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
REPOSITORY_PATH = re.compile(rf"(?:{APP.pattern})/(?:{UUID.pattern})")

SNAPSHOTS_TIMEOUT = 600.0
"""restic reads only the snapshot files (no index): minutes would mean a stuck backend."""
MAX_TIMEOUT = 3600.0
CONNECT_TIMEOUT = 3.0
"""To the node's own gateway; reading may take all that is left before the deadline."""
DESTINATION_WORKERS = 64
REPOSITORY_WORKERS = 8
"""Requests in flight at once inside one destination (application listings, then one
``config`` look-up and one metadata GET per repository)."""
PROBE = "_probe_rest_404"
"""The gateway's health-check file: ``GET /<destination>/_probe_rest_404`` answers 404 when
the destination answers."""
PROBE_TIMEOUT = (3.0, 30.0)
METADATA_LIMIT = 64 * 1024
"""NS8's metadata files are about 250 bytes; a larger one is not read at all."""

# Metadata fields: the only ones read, each with its bound.
MODULE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FQDN = re.compile(r"[A-Za-z0-9._-]{1,253}")
UI_NAME_MAX = 256
CLUSTER_UUID_MAX = 64
# Zero-width (non-)joiners are format characters that some scripts need in names.
_ALLOWED_FORMAT = {"\u200c", "\u200d"}


# -- snapshots (ref §7.4) -----------------------------------------------------------------


def snapshots(service: RunService, payload: Any) -> list[dict[str, Any]]:
    """The snapshots of the repository ``payload["path"]`` (``<app>/<module uuid>``) in
    destination ``payload["repository"]``, oldest first, as :class:`~nsbackup.results.SnapshotItem`
    dicts. Raises ``ValidationFailed`` naming the bad field, ``NotFound`` for an unknown
    destination (``backup_repository_not_found``) or a path holding no restic repository
    (``restic_repository_not_found``), ``Unreachable`` when the gateway does not answer."""
    repository, path = _snapshot_request(payload)
    destination = service.store.read_destination(repository)
    if destination is None:
        raise NotFound(
            [
                FieldError(
                    "repository",
                    "repository",
                    repository,
                    "backup_repository_not_found",
                    f"destination {repository} not found",
                )
            ]
        )
    if destination.restic_password is None:
        raise PermissionDenied(
            f"destination {repository} has no Restic password that "
            f"{service.store.reader_user} may read"
        )
    _check_destination(service, repository)
    env, binary, version = service._restic(
        f"{repository}/{path}", destination.restic_password.reveal()
    )
    # --no-lock: listing writes nothing to the repository and is not refused while a
    # prune holds the exclusive lock.
    completed = run_restic(
        ["snapshots", "--json", "--no-lock"], env, binary=binary, timeout=SNAPSHOTS_TIMEOUT
    )
    if completed.returncode == -9:
        raise Unreachable(
            f"restic snapshots of {repository}/{path} did not finish within {SNAPSHOTS_TIMEOUT:g} s"
        )
    if completed.returncode != 0:
        user, secret = service._credentials()
        refused = gateway_refusal(completed.stderr)
        if refused:
            raise PermissionDenied(
                f"the gateway refused {user} (HTTP {refused}) reading {repository}/{path}: "
                "nodes list snapshots with their own credentials (REDIS_USER=node/<id>)"
            )
        detail = _last_line(completed.stderr, secret)
        kind = classify_failure(completed.returncode, completed.stderr, version)
        if kind == "no_repository":
            raise NotFound(
                [
                    FieldError(
                        "path",
                        "path",
                        path,
                        "restic_repository_not_found",
                        f"there is no restic repository at {path} in destination {repository}",
                    )
                ]
            )
        raise NsbackupError(
            f"restic snapshots of {repository}/{path} failed: "
            f"{explain_failure(kind, completed.returncode)}" + (f": {detail}" if detail else "")
        )
    return snapshot_items(completed.stdout)


def _check_destination(service: RunService, uid: str) -> None:
    """Unreachable at once when the gateway, or the destination behind it, does not answer
    its health check: restic would retry for minutes."""
    user, password = service._credentials()
    with GatewayClient(
        service.settings.gateway_url, user, password, timeout=PROBE_TIMEOUT
    ) as client:
        try:
            client.get(f"{uid}/{PROBE}", limit=1024)
        except Unreachable as exc:
            raise Unreachable(
                f"destination {uid} does not answer through the gateway: {exc}"
            ) from None
        except PermissionDenied:
            raise
        except NsbackupError as exc:
            raise Unreachable(
                f"destination {uid} does not answer its health check: {exc}"
            ) from None


def snapshot_items(text: str) -> list[dict[str, Any]]:
    """NS8's snapshot items from the output of ``restic snapshots --json``. restic < 0.17
    writes no ``summary``: ``total_bytes`` is then ``-1`` and the dates ``""``."""
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise NsbackupError(f"restic snapshots printed invalid JSON: {exc.msg}") from None
    items: list[dict[str, Any]] = []
    for snapshot in data if isinstance(data, list) else []:
        if not isinstance(snapshot, dict) or not isinstance(snapshot.get("id"), str):
            continue
        summary = snapshot.get("summary")
        summary = summary if isinstance(summary, dict) else {}
        total = summary.get("total_bytes_processed")
        start, end = summary.get("backup_start"), summary.get("backup_end")
        items.append(
            {
                "timestamp": epoch(snapshot.get("time")),
                "id": snapshot["id"],
                "total_bytes": total if type(total) is int and total >= 0 else -1,
                "backup_start": start if isinstance(start, str) else "",
                "backup_end": end if isinstance(end, str) else "",
            }
        )
    return items


def epoch(value: Any) -> int:
    """Seconds since the epoch of an RFC 3339 time such as restic's
    ``2024-05-06T07:08:09.123456789+02:00``, its offset applied; ``-1`` when unreadable."""
    if not isinstance(value, str):
        return -1
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return -1
    if when.tzinfo is None:  # RFC 3339 times always carry an offset; never guess local time
        return -1
    return int(when.timestamp())


def _snapshot_request(payload: Any) -> tuple[str, str]:
    if not isinstance(payload, Mapping):
        raise ValidationFailed(
            [FieldError("", "", None, "type", "the request must be a JSON object")]
        )
    errors = [
        FieldError(
            str(k),
            str(k),
            None,
            "additionalProperties",
            f"unknown field {str(k)[:64]!r}; expected ['path', 'repository']",
        )
        for k in payload
        if k not in ("repository", "path")
    ]
    values: dict[str, str] = {}
    for key in ("repository", "path"):
        value = payload.get(key)
        if value is None:
            errors.append(FieldError(key, key, None, "required", f"{key} is required"))
        elif not isinstance(value, str):
            errors.append(FieldError(key, key, value, "type", f"{key} must be a string"))
        elif not value:
            errors.append(FieldError(key, key, value, "minLength", f"{key} is empty"))
        else:
            values[key] = value
    path = values.get("path")
    if path is not None and not REPOSITORY_PATH.fullmatch(path):
        errors.append(
            FieldError(
                "path",
                "path",
                _shown(path),
                "pattern",
                "path must be <app>/<module uuid> as the destination stores it, e.g. "
                "dokuwiki/f5d24fcd-819c-4b1d-98ad-a1b2ebcee8cf (no leading /, no ..)",
            )
        )
    repository = values.get("repository")
    if repository is not None and not UUID.fullmatch(repository):
        errors.append(
            FieldError(
                "repository",
                "repository",
                _shown(repository),
                "backup_repository_not_found",
                "repository must be the UUID of a destination",
            )
        )
    if errors:
        if all(e.error == "backup_repository_not_found" for e in errors):
            raise NotFound(errors)
        raise ValidationFailed(errors)
    assert repository is not None and path is not None
    return repository, path


def _shown(value: str) -> str:
    return value if len(value) <= 100 else value[:100] + "..."


def _last_line(stderr: str, secret: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    line = lines[-1][:300] if lines else ""
    # restic 0.14 carries the gateway credentials inside its repository URL.
    return line.replace(secret, "***") if secret else line


# -- repositories (ref §7.2) ----------------------------------------------------------------


@attrs.frozen
class Metadata:
    """The fields of an ``<app>/<uuid>.json`` metadata file that are used, each ``None``
    when absent or not acceptable."""

    module_id: str | None = None
    module_ui_name: str | None = None
    node_fqdn: str | None = None
    cluster_uuid: str | None = None


@attrs.frozen
class Found:
    """A restic repository on a destination: ``<app>/<uuid>/config`` exists."""

    app: str
    uuid: str
    modified: float | None
    """The latest modification time of its ``config`` and metadata files (epoch, UTC)."""
    metadata: Metadata | None
    """``None`` when there is no readable metadata file."""


def repositories(service: RunService, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every restic repository of every destination, as
    :class:`~nsbackup.results.RepositoryItem` dicts. Destinations are listed in parallel
    within ``timeout`` seconds in all; when some could not be listed in time (or failed),
    ``Partial`` carries the others' items as ``result`` and names the failed ones; when all
    of them failed, ``Unreachable`` (``PermissionDenied`` if the gateway refused them all)."""
    check_seconds("timeout", timeout)
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValidationFailed.one(
            "timeout",
            timeout,
            "maximum" if timeout > MAX_TIMEOUT else "minimum",
            f"timeout must be > 0 and <= {MAX_TIMEOUT:g} seconds",
        )
    deadline = time.monotonic() + timeout
    state = service.store.load()
    user, password = service._credentials()
    url = service.settings.gateway_url
    destinations = list(state.destinations.values())

    def scan(destination: Destination) -> list[Found]:
        dav = _BoundedDav(url, user, password, deadline)
        try:
            # rclone's WebDAV server stalls every request, for every destination, while one
            # waits on a backend that does not answer; its restic server does not. So no
            # WebDAV request goes to a destination before its health check has answered.
            dav.probe(destination.id)
            return scan_destination(dav, destination.id)
        finally:
            dav.close()

    outcomes = bounded_map(
        scan, destinations, deadline=deadline, workers=min(len(destinations), DESTINATION_WORKERS)
    )
    installed = {m.uuid: m for m in state.modules.values() if m.uuid}
    items: list[dict[str, Any]] = []
    failures: list[tuple[Destination, BaseException]] = []
    for destination, outcome in zip(destinations, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failures.append((destination, outcome))
            continue
        items.extend(
            repository_item(destination, found, installed.get(found.uuid), state.cluster_uuid)
            for found in outcome
        )
    if not failures:
        return items
    named = "; ".join(
        f"destination {d.id} ({d.name}): {_reason(exc, timeout)}" for d, exc in failures
    )
    if len(failures) == len(destinations):
        if all(isinstance(exc, PermissionDenied) for _, exc in failures):
            raise PermissionDenied(f"no destination could be listed: {named}")
        raise Unreachable(f"no destination could be listed: {named}")
    raise Partial(
        f"{len(failures)} of {len(destinations)} destinations could not be listed: {named}",
        result=items,
    )


def _reason(exc: BaseException, timeout: float) -> str:
    # GatewayClient names the requests exception: ReadTimeout, ConnectTimeout.
    if isinstance(exc, TimeoutError) or "Timeout" in str(exc):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, NsbackupError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def repository_item(
    destination: Destination, found: Found, installed: Module | None, cluster_uuid: str
) -> dict[str, Any]:
    """NS8's item for ``found`` in ``destination``: computed fields first; the metadata only
    fills the module fields; the ``installed`` module whose UUID it is names itself (and was
    made here)."""
    meta = found.metadata
    generated: bool | None = None
    if meta is not None:
        generated = bool(cluster_uuid) and meta.cluster_uuid == cluster_uuid
    if installed is not None:
        generated = True
    # NS8 meant the installed module to fill in for missing metadata (its setdefault was a
    # no-op because the keys always existed).
    module_id = (meta.module_id if meta else None) or (installed.id if installed else "")
    ui_name = (meta.module_ui_name if meta else None) or (installed.ui_name if installed else "")
    return {
        "module_id": module_id,
        "module_ui_name": ui_name,
        "node_fqdn": (meta.node_fqdn if meta else None) or "",
        "path": f"{found.app}/{found.uuid}",
        "name": found.app,
        "uuid": found.uuid,
        "timestamp": int(found.modified) if found.modified is not None else -1,
        "repository_id": destination.id,
        "repository_name": destination.name,
        "repository_provider": destination.provider,
        "repository_url": destination.url,
        "installed_instance": installed.id if installed else "",
        "installed_instance_ui_name": installed.ui_name if installed else "",
        "is_generated_locally": generated,
    }


def scan_destination(dav: _BoundedDav, uid: str) -> list[Found]:
    """The repositories of destination ``uid``: ``Depth: 1`` on the destination and on each
    application directory, then ``Depth: 0`` on each candidate's ``config`` and a GET of its
    metadata file, several at a time."""
    apps = sorted(
        parts[1]
        for parts, entry in _children(dav.propfind(f"{uid}/"), 2)
        if entry.collection and APP.fullmatch(parts[1])
    )
    listings = bounded_map(
        lambda app: dav.propfind(f"{uid}/{app}/"),
        apps,
        deadline=dav.deadline,
        workers=min(len(apps), REPOSITORY_WORKERS),
    )
    candidates: list[tuple[str, str, Entry | None]] = []
    for app, listing in zip(apps, listings, strict=True):
        if isinstance(listing, BaseException):
            raise listing
        directories: set[str] = set()
        metadata: dict[str, Entry] = {}
        for parts, entry in _children(listing, 3):
            name = parts[2]
            if entry.collection and UUID.fullmatch(name):
                directories.add(name)
            elif not entry.collection and name.endswith(".json") and UUID.fullmatch(name[:-5]):
                metadata[name[:-5]] = entry
        candidates.extend((app, uuid, metadata.get(uuid)) for uuid in sorted(directories))

    def inspect(candidate: tuple[str, str, Entry | None]) -> Found | None:
        app, uuid, meta_entry = candidate
        config = [e for e in dav.propfind(f"{uid}/{app}/{uuid}/config", "0") if not e.collection]
        if not config:
            return None
        # The metadata file is rewritten after every run, the config only at creation.
        meta_time = meta_entry.modified if meta_entry is not None else None
        times = [t for t in (config[0].modified, meta_time) if t is not None]
        return Found(
            app=app,
            uuid=uuid,
            modified=max(times) if times else None,
            metadata=_read_metadata(dav, f"{uid}/{app}/{uuid}.json", meta_entry),
        )

    checked = bounded_map(
        inspect,
        candidates,
        deadline=dav.deadline,
        workers=min(len(candidates), REPOSITORY_WORKERS),
    )
    found: list[Found] = []
    for outcome in checked:
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            found.append(outcome)
    return found


def _children(entries: Sequence[Entry], depth: int) -> list[tuple[list[str], Entry]]:
    """The entries exactly ``depth`` path segments deep (PROPFIND also answers the
    collection itself)."""
    out = []
    for entry in entries:
        parts = [p for p in entry.path.split("/") if p]
        if len(parts) == depth:
            out.append((parts, entry))
    return out


def _read_metadata(dav: _BoundedDav, path: str, entry: Entry | None) -> Metadata | None:
    """The metadata file, when there is one small enough to read; failures only cost the
    metadata (NS8: "if readable")."""
    if entry is None or entry.size > METADATA_LIMIT:
        return None
    try:
        raw = dav.get(path, limit=METADATA_LIMIT)
    except (NsbackupError, TimeoutError) as exc:
        log.info("metadata %s not read: %s", path, exc)
        return None
    return parse_metadata(raw) if raw is not None else None


def parse_metadata(raw: bytes) -> Metadata | None:
    """The known fields of a metadata file (``None`` unless it is a JSON object); a field
    of the wrong type, too long or holding control characters is left out."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    return Metadata(
        module_id=_text(data.get("module_id"), 64, MODULE_ID),
        module_ui_name=_text(data.get("module_ui_name"), UI_NAME_MAX),
        node_fqdn=_text(data.get("node_fqdn"), 253, FQDN),
        cluster_uuid=_text(data.get("cluster_uuid"), CLUSTER_UUID_MAX),
    )


def _text(value: Any, limit: int, pattern: re.Pattern[str] | None = None) -> str | None:
    if not isinstance(value, str) or len(value) > limit:
        return None
    if pattern is not None and not pattern.fullmatch(value):
        return None
    if CONTROL_CHARS.search(value) or any(_unprintable(c) for c in value):
        return None
    return value


def _unprintable(char: str) -> bool:
    # Other (Cc control, Cf format such as bidi overrides, Cs, Co, Cn) and line/paragraph
    # separators: they could reorder or break what a UI or a terminal shows.
    category = unicodedata.category(char)
    return (category[0] == "C" and char not in _ALLOWED_FORMAT) or category in ("Zl", "Zp")


class _BoundedDav:
    """WebDAV through the gateway for one destination's scan, from several threads (one
    session each), every request's timeouts cut to what is left before ``deadline``."""

    def __init__(self, url: str, user: str, password: str, deadline: float) -> None:
        self.url = url
        self.user = user
        self._password = password
        self.deadline = deadline
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[GatewayClient] = []

    def __repr__(self) -> str:
        return f"_BoundedDav({self.url!r}, {self.user!r})"

    def _client(self) -> GatewayClient:
        client: GatewayClient | None = getattr(self._local, "client", None)
        if client is None:
            client = GatewayClient(self.url, self.user, self._password)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the listing's deadline has passed")
        client.timeout = (min(CONNECT_TIMEOUT, left), left)
        return client

    def probe(self, uid: str) -> None:
        """The gateway's health check of destination ``uid`` (restic server, no WebDAV):
        returns once the destination has answered."""
        self._client().get(f"{uid}/{PROBE}", limit=1024)

    def propfind(self, path: str, depth: str = "1") -> list[Entry]:
        return self._client().propfind(path, depth)

    def get(self, path: str, *, limit: int) -> bytes | None:
        return self._client().get(path, limit=limit)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


def bounded_map(
    func: Callable[[T], R], items: Sequence[T], *, deadline: float, workers: int
) -> list[R | BaseException]:
    """``func`` over ``items`` on up to ``workers`` daemon threads, in order: each outcome
    is the value or the exception raised, and a ``TimeoutError`` for every item not
    finished at ``deadline`` (``time.monotonic()``), when this returns without waiting
    further. Daemon threads: one stuck in a request holds neither the caller nor the
    interpreter's exit."""
    outcomes: dict[int, R | BaseException] = {}
    if not items:
        return []
    pending = iter(list(enumerate(items)))
    done = threading.Condition()

    def work() -> None:
        while True:
            with done:
                nxt = next(pending, None)
            if nxt is None:
                return
            index, item = nxt
            outcome: R | BaseException
            try:
                outcome = func(item)
            except Exception as exc:
                outcome = exc
            with done:
                outcomes[index] = outcome
                done.notify_all()

    for n in range(max(1, workers)):
        threading.Thread(target=work, name=f"listing-{n}", daemon=True).start()
    with done:
        done.wait_for(
            lambda: len(outcomes) == len(items), timeout=max(0.0, deadline - time.monotonic())
        )
        return [
            outcomes[i] if i in outcomes else TimeoutError("no answer before the deadline")
            for i in range(len(items))
        ]
