"""The encrypted cluster dump (ref §8.1, §8.2, §8.4): export, import of destinations, restore.

The document is NS8's DUMP_VERSION 4 (``dump.json.gz.gpg``), built from one
:class:`~nsbackup.model.ClusterState` by :func:`build_document`::

    {"version": 4, "modules": {},
     "cluster": {"uuid": ..., "network": ...,
                 "backup_repository": {<uuid>: {"provider","url","name","basepath",
                                                "rclone_conf","restic_password"}},
                 "backup": {"<id>": {"name","repository","schedule","schedule_hint",
                                     "retention","enabled","instances": "",
                                     "uinstances": "<sorted module UUIDs>"}}}}

``cluster`` carries what nsbackup owns and reads: ``uuid``, ``network``, ``backup`` and
``backup_repository``. The other fields of NS8's dump (``vpn``, ``node_count``,
``subscription``, ``apply_updates``, ``repository``, ``user_domain``, ``override``,
``ui_name``, ``favorites``) belong to NS8's core: nsbackup neither reads nor writes those keys,
so it leaves them out rather than writing empty stand-ins. NS8's import-backup-destinations
reads only ``version``, ``cluster.uuid`` and ``cluster.backup_repository`` and opens these
files as they are.

Serialised as JSON with sorted keys, gzip-compressed without a name or timestamp (an unchanged
cluster gives byte-identical plaintext, whose sha256 is the dump's ``digest``), then encrypted
with ``gpg`` through file descriptors (:mod:`nsbackup.dr.gpg`): neither the passphrase nor the
plaintext is ever written to disk, a command line or a child's environment.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from nsbackup import ini
from nsbackup.dr import gpg
from nsbackup.errors import NsbackupError, PermissionDenied, ValidationFailed
from nsbackup.files import sync_directory, write_atomic
from nsbackup.model import (
    CONTROL_CHARS,
    ClusterState,
    Destination,
    DestinationRequest,
    FieldError,
    StoredDestination,
)
from nsbackup.results import (
    DumpExported,
    DumpImported,
    DumpRestored,
    SkippedBackup,
    SkippedDestination,
)
from nsbackup.secret import Secret, redacting_filter
from nsbackup.store import schedule_to_hash

if TYPE_CHECKING:
    from nsbackup.api import Cluster
    from nsbackup.plugins import PluginHost
    from nsbackup.runs.context import RunContext

log = logging.getLogger(__name__)

DUMP_VERSION = 4
MAX_FILE = 64 * 1024 * 1024
"""The largest encrypted file read (NS8 dumps are kilobytes), and the most gpg may write when
it decrypts one (the gzip inside does not shrink under OpenPGP's compression, so a real dump
never comes near; an OpenPGP-compressed bomb stops here)."""
MAX_PLAINTEXT = 256 * 1024 * 1024
"""The largest decompressed document accepted (a gzip bomb stops here)."""
UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
SCHEDULE_FIELDS = ("name", "repository", "schedule", "retention", "enabled")
MAX_SCHEDULE_ID = 2**31 - 1


def remote_name(cluster_uuid: str) -> str:
    """The dump's name on a destination (ref §5.2 step 3)."""
    return f"cluster-backup-{cluster_uuid}.json.gz.gpg"


# -- building the document ------------------------------------------------------------------


@attrs.frozen
class BuiltDump:
    """A dump document and what had to be left out of it."""

    document: Mapping[str, Any] = attrs.field(repr=False)  # holds every secret
    destinations: tuple[str, ...]
    backups: tuple[int, ...]
    skipped_destinations: tuple[SkippedDestination, ...] = ()
    skipped_backups: tuple[SkippedBackup, ...] = ()

    def plaintext(self) -> bytes:
        """The gzip'd JSON: sorted keys, no file name, no timestamp (``gzip -n``)."""
        text = json.dumps(self.document, sort_keys=True)
        return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def build_document(state: ClusterState, incomplete: Mapping[str, str] | None = None) -> BuiltDump:
    """The version 4 document of ``state`` (which must hold secrets).

    A destination without its rclone configuration or Restic password is left out and named
    in ``skipped_destinations`` (NS8 aborted the whole dump, ref §14.16); ``incomplete`` names
    destinations the snapshot could not even hold (id → reason). A schedule whose destination
    is not exported is left out and named in ``skipped_backups``, as NS8 does.
    """
    destinations: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = dict(incomplete or {})
    for uid in sorted(state.destinations):
        dest = state.destinations[uid]
        if not dest.rclone_conf:
            skipped[uid] = "no rclone configuration"
            continue
        if not dest.restic_password:
            skipped[uid] = "no Restic password"
            continue
        destinations[uid] = {
            **dest.public(),
            "rclone_conf": dest.rclone_conf,
            "restic_password": dest.restic_password.reveal(),
        }
    uuids = {m.id: m.uuid for m in state.modules.values() if m.uuid}
    backups: dict[str, dict[str, str]] = {}
    skipped_backups: list[SkippedBackup] = []
    for bid in sorted(state.schedules):
        schedule = state.schedules[bid]
        if schedule.repository not in destinations:
            skipped_backups.append(
                {"id": bid, "reason": f"destination {schedule.repository} is not exported"}
            )
            continue
        raw = schedule_to_hash(schedule)
        resolved = {uuids[mid] for mid in schedule.instances if mid in uuids}
        raw["instances"] = ""
        raw["uinstances"] = " ".join(sorted(resolved | set(schedule.uinstances)))
        backups[str(bid)] = raw
    document = {
        "version": DUMP_VERSION,
        "modules": {},
        "cluster": {
            "uuid": state.cluster_uuid,
            "network": state.network,
            "backup_repository": destinations,
            "backup": backups,
        },
    }
    return BuiltDump(
        document=document,
        destinations=tuple(destinations),
        backups=tuple(int(b) for b in backups),
        skipped_destinations=tuple(
            {"id": uid, "reason": reason} for uid, reason in sorted(skipped.items())
        ),
        skipped_backups=tuple(skipped_backups),
    )


def digest(plaintext: bytes) -> str:
    return hashlib.sha256(plaintext).hexdigest()


# -- passphrases ----------------------------------------------------------------------------


def read_passphrase(path: str | os.PathLike[str]) -> Secret:
    """The passphrase in a file: its first line, as ``gpg --passphrase-file`` reads it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(gpg.MAX_PASSPHRASE + 2)
    except OSError as exc:
        raise ValidationFailed.one(
            "passphrase_file",
            str(path),
            "unreadable_file",
            f"cannot read the passphrase file {path}: {exc.strerror}",
        ) from None
    return _first_line(data, "passphrase_file")


def read_passphrase_fd(fd: int) -> Secret:
    """The passphrase on an open file descriptor (read to its end or first newline), which
    is closed afterwards. Standard output and error are refused: reading them would close the
    command's own output."""
    if fd in (1, 2):
        raise ValidationFailed.one(
            "passphrase_fd",
            fd,
            "invalid_fd",
            f"descriptor {fd} is the command's {'output' if fd == 1 else 'error output'}: "
            "give the passphrase on a descriptor of its own (e.g. 3<file)",
        )
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= gpg.MAX_PASSPHRASE and b"\n" not in b"".join(chunks):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ValidationFailed.one(
            "passphrase_fd",
            fd,
            "unreadable_file",
            f"cannot read the passphrase from descriptor {fd}: {exc.strerror}",
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return _first_line(b"".join(chunks), "passphrase_fd")


def _first_line(data: bytes, field: str) -> Secret:
    line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    try:
        text = line.decode()
    except UnicodeDecodeError:
        raise ValidationFailed.one(field, "***", "pattern", "the passphrase is not UTF-8") from None
    gpg.check_passphrase(text)
    redacting_filter.add(text)
    return Secret(text)


# -- reading a dump -------------------------------------------------------------------------


@attrs.frozen
class OpenedDump:
    version: int
    document: Mapping[str, Any] = attrs.field(repr=False)


def _invalid(field: str, error: str, message: str, value: Any = "") -> ValidationFailed:
    return ValidationFailed([FieldError(field, field, value, error, message)])


def open_dump(data: bytes, passphrase: str) -> OpenedDump:
    """Decrypt, decompress and parse a dump; :class:`ValidationFailed` (``invalid_passphrase``
    on ``passphrase``, ``invalid_file`` or ``unsupported_version`` on ``file``) otherwise. The
    plaintext stays in memory."""
    if len(data) > MAX_FILE:
        raise _invalid("file", "invalid_file", f"the file is larger than {MAX_FILE} bytes")
    try:
        packed = gpg.decrypt(data, passphrase, MAX_FILE)
    except gpg.DecryptionFailed as exc:
        field = "passphrase" if exc.reason == "invalid_passphrase" else "file"
        raise _invalid(field, exc.reason, str(exc)) from None
    try:
        text = _gunzip(packed)
        document = json.loads(text)
    except (OSError, EOFError, zlib.error, ValueError, RecursionError) as exc:
        raise _invalid(
            "file", "invalid_file", f"the decrypted file is not a gzip'd JSON dump ({exc})"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("cluster"), dict):
        raise _invalid("file", "invalid_file", "the dump has no 'cluster' object")
    raw_version = document.get("version", 3)
    try:
        version = int(raw_version)
    except (TypeError, ValueError):
        version = 3  # NS8: a version that is not a number is read as 3
    if isinstance(raw_version, bool) or version > DUMP_VERSION or version < 1:
        raise _invalid(
            "file",
            "unsupported_version",
            f"dump version {raw_version!r} is not supported (1-{DUMP_VERSION})",
            str(raw_version),
        )
    return OpenedDump(version=version, document=document)


def _gunzip(data: bytes) -> bytes:
    if data[:2] != b"\x1f\x8b":
        raise ValueError("no gzip header")
    inflater = zlib.decompressobj(wbits=31)
    out = inflater.decompress(data, MAX_PLAINTEXT)
    if inflater.unconsumed_tail:
        raise ValueError(f"larger than {MAX_PLAINTEXT} bytes once decompressed")
    out += inflater.flush()
    if not inflater.eof:
        raise ValueError("truncated gzip data")
    return out


def _read_source(source: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        with open(source, "rb") as handle:
            return handle.read(MAX_FILE + 1)
    except OSError as exc:
        raise _invalid(
            "file", "unreadable_file", f"cannot read {source}: {exc.strerror}", str(source)
        ) from None


# -- destinations and schedules of a dump ---------------------------------------------------


class _Problems:
    """Field errors collected while reading a dump, for one ValidationFailed at the end."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, where: str, error: str, message: str) -> None:
        self.errors.append(FieldError(where, where, "", error, message))


def _text(entry: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} is missing or not a string")
    if CONTROL_CHARS.search(value):
        raise ValueError(f"{key} contains control characters")
    return value


def _destination_v4(uid: str, entry: Mapping[str, Any], host: PluginHost) -> Destination:
    """A destination of a v4 dump. Its rclone section is not taken on trust: a dump comes from
    a destination's storage, and rclone runs what its configuration says (``*_command``
    options, ``type = local``). The provider reads the parameters the section stands for and
    writes the section again, as ``destination add`` would; what it does not know is dropped,
    and what it refuses (the raw ``rclone`` provider's allow-list) leaves the destination out."""
    from nsbackup.destinations import prepare
    from nsbackup.provider import UrlError, check_path

    name = _text(entry, "provider")
    if not name:
        raise ValueError("provider is empty")
    basepath = _text(entry, "basepath", default="")
    try:
        check_path(basepath, "basepath")
    except UrlError as exc:
        raise ValueError(str(exc)) from None
    conf = entry.get("rclone_conf")
    if not isinstance(conf, str) or not conf.strip():
        raise ValueError("rclone_conf is missing")
    try:
        sections = ini.parse(conf)
    except ini.IniError as exc:
        raise ValueError(f"rclone_conf cannot be read: {exc}") from None
    if list(sections) != [uid]:
        raise ValueError(f"rclone_conf must hold exactly one section, [{uid}]")
    section = sections[uid]
    if "type" not in section:
        raise ValueError("rclone_conf has no type")
    password = _text(entry, "restic_password")
    if not password:
        raise ValueError("restic_password is empty")
    redacting_filter.add(password)
    provider = host.provider(name)
    parameters = provider.parameters_from_section(section, hide_secrets=False)
    for param in provider.parameters:
        if param.secret and parameters.get(param.name):
            redacting_filter.add(parameters[param.name])
    url = _text(entry, "url")
    request = DestinationRequest(
        provider=name, url=url, name=_text(entry, "name", default=""), parameters=parameters
    )
    previous = StoredDestination(
        id=uid, provider=name, url=url, name="", basepath=basepath, section=section
    )
    prepared = prepare(host, request, previous)
    if prepared.section["type"] != section["type"]:
        raise ValueError(
            f"rclone_conf has type {section['type']!r}; provider {name} writes "
            f"{prepared.section['type']!r}"
        )
    return Destination(
        id=uid,
        provider=prepared.provider,
        url=prepared.url,
        name=prepared.name,
        basepath=basepath,
        # The dump's own text when it says exactly what the provider writes (an export then
        # restore gives the stored bytes back; obscured values differ only in their IV).
        rclone_conf=conf if _same_section(section, prepared.section) else prepared.rclone_conf,
        restic_password=Secret(password),
    )


def _same_section(dumped: Mapping[str, str], written: Mapping[str, Any]) -> bool:
    from nsbackup.obscure import RevealError, reveal

    if set(dumped) != set(written):
        return False
    for key, value in dumped.items():
        other = written[key]
        other = other.reveal() if isinstance(other, Secret) else str(other)
        if value == other:
            continue
        try:
            if reveal(value) != reveal(other):
                return False
        except RevealError:
            return False
    return True


def _destination_v3(uid: str, entry: Mapping[str, Any], host: PluginHost) -> Destination:
    """NS8's pre-3.20 destination: secrets as flat fields of the public hash (ref §1.1, §8.2).
    The rclone configuration comes from the provider, as for a new destination, under the
    dump's UUID."""
    from nsbackup.destinations import prepare

    name = _text(entry, "provider")
    provider = host.provider(name)
    password = _text(entry, "password")
    if not password:
        raise ValueError("password is empty")
    redacting_filter.add(password)
    parameters = {
        p.name: entry[p.name] for p in provider.parameters if isinstance(entry.get(p.name), str)
    }
    for param in provider.parameters:
        if param.secret and parameters.get(param.name):
            redacting_filter.add(parameters[param.name])
    request = DestinationRequest(
        provider=name,
        url=_text(entry, "url"),
        name=_text(entry, "name", default=""),
        parameters=parameters,
    )
    # The stored UUID is kept: ``previous`` carries it (and nothing else).
    previous = StoredDestination(
        id=uid, provider=name, url=request.url or "", name="", basepath="", section={}
    )
    prepared = prepare(host, request, previous)
    return Destination(
        id=uid,
        provider=prepared.provider,
        url=prepared.url,
        name=prepared.name,
        basepath=prepared.public_basepath,
        rclone_conf=prepared.rclone_conf,
        restic_password=Secret(password),
    )


def _destination_entries(opened: OpenedDump) -> Mapping[str, Any]:
    entries = opened.document["cluster"].get("backup_repository", {})
    if not isinstance(entries, dict):
        raise _invalid("file", "invalid_file", "cluster.backup_repository is not an object")
    return entries


def _read_destination(uid: str, entry: Any, version: int, host: PluginHost) -> Destination:
    """One destination of a dump; ValueError or NsbackupError saying why it is unusable."""
    if not UUID.fullmatch(uid):
        raise ValueError("the destination id is not a UUID")
    if uid != uid.lower():
        # NS8's UUIDs are lower case; another spelling of a stored one would be a second
        # destination beside it rather than the same one, skipped.
        raise ValueError("the destination id is not a lower-case UUID")
    if not isinstance(entry, dict):
        raise ValueError("the destination is not an object")
    if version >= 4:
        return _destination_v4(uid, entry, host)
    return _destination_v3(uid, entry, host)


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationFailed):
        return "; ".join(e.describe() for e in exc.errors)
    return str(exc)


def _read_schedules(
    opened: OpenedDump, destinations: set[str], problems: _Problems
) -> dict[int, dict[str, str]]:
    """The schedule hashes of a dump, as they are; version 3 dumps get ``uinstances`` from
    their ``modules`` section (module UUID → ``backups`` ids) and empty ``instances``."""
    raw = opened.document["cluster"].get("backup", {})
    if not isinstance(raw, dict):
        problems.add("cluster.backup", "invalid_dump", "cluster.backup is not an object")
        return {}
    legacy_members: dict[int, set[str]] = {}
    if opened.version < 4:
        modules = opened.document.get("modules", {})
        for module_uuid, item in modules.items() if isinstance(modules, dict) else ():
            ids = item.get("backups", []) if isinstance(item, dict) else []
            for bid in ids if isinstance(ids, list) else ():
                if UUID.fullmatch(str(module_uuid)) and str(bid).isdigit():
                    legacy_members.setdefault(int(bid), set()).add(str(module_uuid))
    schedules: dict[int, dict[str, str]] = {}
    for key, entry in raw.items():
        where = f"cluster.backup.{key}"
        if not (isinstance(key, str) and key.isdigit() and 0 < int(key) <= MAX_SCHEDULE_ID):
            problems.add(where, "invalid_dump", "a schedule id must be a positive integer")
            continue
        if not isinstance(entry, dict) or not entry or len(entry) > 64:
            problems.add(where, "invalid_dump", "a schedule must be a non-empty object")
            continue
        fields: dict[str, str] = {}
        for name, value in entry.items():
            if (
                not isinstance(name, str)
                or not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name)
                or not isinstance(value, str)
                or CONTROL_CHARS.search(value)
                or len(value) > 65536
            ):
                problems.add(
                    f"{where}.{name}",
                    "invalid_dump",
                    "schedule fields must be strings without control characters",
                )
                break
            fields[name] = value
        else:
            missing = [f for f in SCHEDULE_FIELDS if f not in fields]
            if missing:
                problems.add(where, "invalid_dump", f"missing {', '.join(missing)}")
                continue
            if fields["repository"] not in destinations:
                problems.add(
                    f"{where}.repository",
                    "invalid_dump",
                    f"destination {fields['repository']} is not in the dump",
                )
                continue
            if opened.version < 4:
                members = legacy_members.get(int(key), set())
                members |= set(fields.get("uinstances", "").split())
                fields["instances"] = ""
                fields["uinstances"] = " ".join(sorted(members))
            schedules[int(key)] = fields
    return schedules


# -- the service behind `nsbackup dump ...` (``Cluster.dump``) ------------------------------


class DumpService:
    """The encrypted cluster dump: :meth:`export`, :meth:`import_` and :meth:`restore`.

    Reached as ``cluster.dump``. The export reads every destination secret, so its reader
    must be a node or the cluster user (a module gets :class:`PermissionDenied`); import and
    restore write the cluster's keys, so their writer is the cluster user on the leader.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def export(self, out: str | os.PathLike[str], *, passphrase: str) -> DumpExported:
        """Write the encrypted dump of the cluster to ``out`` (mode 0600, atomically: a
        temporary file beside it, then a rename).

        Destinations missing a secret are left out and named in ``skipped_destinations``
        (with their schedules in ``skipped_backups``); they do not stop the export.
        """
        gpg.check_passphrase(passphrase)
        target = Path(out)
        if target.is_dir() or not target.parent.is_dir():
            raise _invalid(
                "out",
                "invalid_path",
                f"{target} must name a file in an existing directory",
                str(target),
            )
        store = self.cluster.store
        state = store.load(details=False)
        if not state.privileged:
            raise PermissionDenied(
                f"permission denied: Redis user {store.reader_user!r} may not read the "
                "destination secrets; the dump needs a node or the cluster user"
            )
        built = build_document(state, _incomplete(store.destination_inventory(), state))
        plaintext = built.plaintext()
        for skipped in built.skipped_destinations:
            log.warning("destination %s left out of the dump: %s", skipped["id"], skipped["reason"])
        _write_encrypted(target, plaintext, passphrase)
        return {
            "path": str(target),
            "version": DUMP_VERSION,
            "digest": digest(plaintext),
            "destinations": list(built.destinations),
            "backups": list(built.backups),
            "skipped_destinations": list(built.skipped_destinations),
            "skipped_backups": list(built.skipped_backups),
        }

    def import_(self, source: str | os.PathLike[str] | bytes, *, passphrase: str) -> DumpImported:
        """NS8's import-backup-destinations (ref §8.4) from a dump file (or its bytes):
        destinations of version 4 and version 3 dumps are added with their secrets (v4
        ``basepath`` included), in one transaction with one event. Skipped: ``cluster``
        destinations of another cluster, UUIDs that exist already, and entries that cannot
        be read (named in ``skipped`` with the reason). Schedules are not imported."""
        gpg.check_passphrase(passphrase)
        opened = open_dump(_read_source(source), passphrase)
        entries = _destination_entries(opened)
        store = self.cluster.store
        local_uuid = store.load(details=False).cluster_uuid or "unknown_local"
        dump_uuid = opened.document["cluster"].get("uuid") or "unknown_import"
        existing = store.existing_destinations(k for k in entries if isinstance(k, str))
        imported: list[Destination] = []
        skipped: list[SkippedDestination] = []
        for uid, entry in sorted(entries.items()):
            if (
                isinstance(entry, dict)
                and entry.get("provider") == "cluster"
                and (local_uuid != dump_uuid)
            ):
                skipped.append({"id": uid, "reason": "cluster destination of another cluster"})
                continue
            if uid in existing:
                skipped.append({"id": uid, "reason": "exists already"})
                continue
            try:
                imported.append(_read_destination(uid, entry, opened.version, self.cluster.host))
            except (ValueError, NsbackupError) as exc:
                skipped.append({"id": uid, "reason": f"invalid: {_why(exc)}"})
        for item in skipped:
            log.info("destination %s not imported: %s", item["id"], item["reason"])
        store.import_destinations(imported)
        return {
            "imported_destinations": len(imported),
            "skipped_destinations": len(skipped),
            "version": opened.version,
            "imported": [d.id for d in imported],
            "skipped": skipped,
        }

    def restore(self, source: str | os.PathLike[str] | bytes, *, passphrase: str) -> DumpRestored:
        """The backup part of NS8's restore-cluster (ref §8.2) on a new cluster: every
        destination with its secrets and ``basepath`` (NS8 lost it, ref §14.13), every
        schedule hash as it is (``uinstances`` re-link modules as they are restored),
        ``backup_sequence`` raised to the highest id, and the destination and schedule
        events, in one transaction. Anything unreadable in the dump fails the whole restore
        with :class:`ValidationFailed` listing every problem, and nothing is written."""
        gpg.check_passphrase(passphrase)
        opened = open_dump(_read_source(source), passphrase)
        entries = _destination_entries(opened)
        problems = _Problems()
        destinations: list[Destination] = []
        for uid, entry in sorted(entries.items()):
            try:
                destinations.append(
                    _read_destination(uid, entry, opened.version, self.cluster.host)
                )
            except (ValueError, NsbackupError) as exc:
                problems.add(f"cluster.backup_repository.{uid}", "invalid_dump", _why(exc))
        schedules = _read_schedules(opened, {d.id for d in destinations} | set(entries), problems)
        if problems.errors:
            raise ValidationFailed(problems.errors)
        linked = _link_installed(schedules, self.cluster.store.load(details=False))
        sequence = self.cluster.store.restore_backups(destinations, linked)
        return {
            "version": opened.version,
            "restored_destinations": [d.id for d in destinations],
            "restored_backups": sorted(schedules),
            "backup_sequence": sequence,
        }


def _link_installed(
    schedules: Mapping[int, Mapping[str, str]], state: ClusterState
) -> dict[int, Mapping[str, str]]:
    """Modules already installed whose UUID a schedule's ``uinstances`` names go back into its
    ``instances`` at once, as a restore of each would put them (ref §8.3). On a new cluster
    there are none; on one that still has its modules, a restored schedule would otherwise
    back up nothing until each module was restored."""
    installed = {m.uuid: m.id for m in state.modules.values() if m.uuid}
    linked: dict[int, Mapping[str, str]] = {}
    for bid, fields in schedules.items():
        pending = fields.get("uinstances", "").split()
        found = [u for u in pending if u in installed]
        if not found:
            linked[bid] = fields
            continue
        instances = fields.get("instances", "").split()
        instances += [installed[u] for u in found if installed[u] not in instances]
        rest = [u for u in pending if u not in installed]
        updated = {**fields, "instances": " ".join(instances)}
        if rest:
            updated["uinstances"] = " ".join(rest)
        else:
            updated.pop("uinstances", None)
        linked[bid] = updated
    return linked


def _incomplete(inventory: Mapping[str, set[str]], state: ClusterState) -> dict[str, str]:
    """Destinations the snapshot left out because a part of them is missing."""
    found: dict[str, str] = {}
    for uid in inventory["public"] - inventory["rclone_conf"]:
        found[uid] = "no rclone configuration"
    for uid in inventory["rclone_conf"] - inventory["public"]:
        found[uid] = "no public hash (cluster/backup_repository)"
    for uid in set(state.destinations) & set(found):
        del found[uid]
    return found


def _write_encrypted(target: Path, plaintext: bytes, passphrase: str) -> None:
    """gpg writes straight into a 0600 temporary file beside ``target``, renamed over it."""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise _os_error(exc, target) from None
    try:
        try:
            os.fchmod(fd, 0o600)
            gpg.encrypt(plaintext, passphrase, fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        sync_directory(target.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _os_error(exc, target) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _os_error(exc: OSError, target: Path) -> NsbackupError:
    import errno

    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"permission denied writing {target}: {exc.strerror}")
    return NsbackupError(f"cannot write {target}: {exc.strerror}")


# -- the leader's upload before each run (ref §5.2 step 3) ----------------------------------

NOTE = "cluster_dump"


def upload_before_run(context: RunContext) -> None:
    """On the leader, put the encrypted dump on the run's destination as
    ``cluster-backup-<cluster uuid>.json.gz.gpg``, unless its plaintext is the one uploaded
    there last time. Never raises: the outcome is the run report's ``cluster_dump`` note
    (``uploaded``, ``skipped`` when unchanged, ``no_passphrase`` or ``failed``) and a warning
    in the log when something is wrong."""
    if not context.leader:
        return
    try:
        note = _upload(context)
    except Exception as exc:  # the run goes on whatever happens here
        note = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if note["status"] in ("failed", "no_passphrase"):
        log.warning("cluster dump not uploaded to %s: %s", context.destination, note["error"])
    context.note(NOTE, note)


def _upload(context: RunContext) -> dict[str, Any]:
    from nsbackup.api import Settings

    settings = context.settings or Settings.from_env()
    state = context.state
    if not UUID.fullmatch(context.destination):
        return {"status": "failed", "error": f"invalid destination id {context.destination!r}"}
    if not state.cluster_uuid:
        return {"status": "failed", "error": "the cluster has no uuid (cluster/uuid)"}
    path = f"/{context.destination}/{remote_name(state.cluster_uuid)}"
    passphrase_file = Path(settings.dump_passphrase_file)
    try:
        stamp = passphrase_file.stat()
        passphrase = read_passphrase(passphrase_file)
    except (OSError, ValidationFailed) as exc:
        return {
            "status": "no_passphrase",
            "path": path,
            "error": f"no usable passphrase in {passphrase_file}: "
            + (str(exc.strerror) if isinstance(exc, OSError) else str(exc)),
        }
    if not state.privileged:
        return {"status": "failed", "path": path, "error": "this node may not read the secrets"}
    built = build_document(state)
    plaintext = built.plaintext()
    record = {
        "digest": digest(plaintext),
        # A new passphrase must re-encrypt an unchanged cluster: its file's identity (never
        # its content) is part of what was uploaded.
        "passphrase_file": f"{stamp.st_ino}:{stamp.st_mtime_ns}:{stamp.st_size}",
        "path": path,
    }
    note: dict[str, Any] = {"path": path, "digest": record["digest"]}
    if built.skipped_destinations:
        note["skipped_destinations"] = list(built.skipped_destinations)
    state_file = Path(settings.state_dir) / "cluster-dump" / f"{context.destination}.json"
    if _recorded(state_file) == record:
        return {"status": "skipped", "reason": "unchanged since the last upload", **note}
    data = gpg.encrypt_bytes(plaintext, passphrase)
    context.upload(remote_name(state.cluster_uuid), data, "application/pgp-encrypted")
    _record(state_file, {**record, "uploaded": int(time.time())})
    return {"status": "uploaded", "bytes": len(data), **note}


def _recorded(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data.pop("uploaded", None)
    return data


def _record(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(dict(data)))
