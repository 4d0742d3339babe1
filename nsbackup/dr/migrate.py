"""Migration of NS8's pre-3.20 layout to the current one (ref §9 step 2, §5.6; SPEC §5).

``nsbackup migrate`` (``cluster.migrate()``), run as the ``cluster`` user, does:

- ``cluster/module_uuid`` filled for modules without an entry (their ``MODULE_UUID``, else a
  random UUID and a warning);
- the live ``node/<id>`` and ``module/<id>`` Redis users get nsbackup's rules
  (:mod:`nsbackup.acl`, not NS8's) with their password hashes and on/off state kept, and their
  ``cluster/acls`` entries are rewritten;
- legacy destinations (secrets as flat fields of the public hash) get their rclone
  configuration through their provider plugin, their Restic password moves to
  ``private/agents``, and the public hash keeps only ``url name provider basepath``; Restic's
  colon URLs become the provider's form (ref §14.23); the UUID never changes; a destination
  that cannot be converted is reported and left as it was;
- ``module/<id>/backups`` sets become schedule ``instances`` and are deleted; legacy statuses
  are copied to ``node/<n>/backup_status/<id>`` and deleted (NS8 left them, ref §14.14);
- removed modules (``cluster/module_node`` is the source of truth) are pruned from
  ``cluster/module_uuid``, schedule ``instances`` and statuses (NS8's
  ``60prune_removed_module_backups``);
- events: ``backup-destination-changed`` with the converted ids (NS8's never fired, ref
  §14.14), ``backup-schedule-changed`` with the changed schedules, ``acl-changed`` when users,
  ``cluster/acls`` or ``cluster/module_uuid`` changed (gateways rebuild auth.map and
  modrepo.map on it).

Order, and why a failure half-way is completed by the next run:

1. Read everything: one ``SCAN`` pass and one pipelined round trip (plus ``ACL LIST`` and
   ``COMMAND``), nothing written.
2. Plan (pure). Whether a step is done is always read from the data itself (a legacy key
   still there, a user whose effective rules differ), never from a marker, so a run after an
   interruption plans exactly what is left.
3. Check, inside a ``MULTI`` that is discarded, that the caller may run every command: a
   caller without the right (anyone but ``cluster``) changes nothing at all.
4. ``ACL SETUSER`` for the users whose rules differ, then ``ACL SAVE``, in one pipeline. Redis
   cannot make ACL changes transactional with data; each ``SETUSER`` is atomic on its own.
   They go first so that the ``acl-changed`` event (step 5) never announces rules the leader
   does not apply yet. Interrupted here, the users already done compare equal next time and
   ``cluster/acls`` still holds the old entries, so the next run rewrites them and publishes.
5. One ``MULTI``/``EXEC`` with every data write and the events, ``WATCH``\\ ing every key read
   (and re-reading them once watched): all or nothing, and a concurrent change makes it fail
   with nothing written instead of overwriting a newer value.

``dry_run`` does 1-3 only: nothing is written and nothing is published. Secrets never reach
the report, logs or errors: values are not reported (field names are), and every legacy
secret is registered with the redaction filter as soon as it is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import uuid as uuidlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import redis

from nsbackup import acl
from nsbackup.destinations import prepare
from nsbackup.dr import legacy
from nsbackup.errors import NsbackupError, ValidationFailed
from nsbackup.model import DestinationRequest, StoredDestination
from nsbackup.results import (
    MigratedAclUser,
    MigratedDestination,
    MigratedModuleUuid,
    MigratedSchedule,
    MigratedStatus,
    MigrationReport,
    PrunedStatus,
)
from nsbackup.secret import is_secret_key, redacting_filter
from nsbackup.store import (
    ACLS,
    DESTINATION,
    EVENT_ACL_CHANGED,
    MODULE_NODE,
    MODULE_UUID,
    RCLONE_CONF,
    RESTIC_PASSWORD,
    SCHEDULE,
    STATUS,
    Op,
    Store,
    _publish_destinations,
    _publish_schedules,
    map_redis_error,
)

if TYPE_CHECKING:
    from nsbackup.api import Cluster
    from nsbackup.plugins import PluginHost

log = logging.getLogger(__name__)

_DESTINATION_KEY = legacy.key_pattern(DESTINATION)
_SCHEDULE_KEY = legacy.key_pattern(SCHEDULE)
_STATUS_KEY = legacy.key_pattern(STATUS)
_USER = re.compile(r"(node|module)/(.+)")
_NO_ACL_FILE = "not configured to use an ACL file"


def migrate(cluster: Cluster, *, dry_run: bool = False) -> MigrationReport:
    """Migrate the legacy layout; return the :class:`~nsbackup.results.MigrationReport`."""
    return run(cluster.store, cluster.host, dry_run=dry_run)


def run(store: Store, host: PluginHost, *, dry_run: bool = False) -> MigrationReport:
    """Read, plan and (unless ``dry_run``) apply the migration; see the module docstring."""
    reading = read(store)
    plan = make_plan(reading, host, dry_run=dry_run)
    if not plan.report["changed"]:
        log.info("migration: nothing to change")
        return plan.report
    checked = [*plan.acl_ops, *plan.ops]
    store.check_writable(checked)  # may we? before anything is written
    if dry_run:
        return plan.report
    if plan.acl_ops:
        _apply_acl(store, plan)
    if plan.ops:
        watched = sorted({*reading.snapshot.keys, *(op.key for op in plan.ops)} - {""})
        _execute_data(store, plan.ops, watched, reading.snapshot)
    log.info("migration: %d change(s) written", len(plan.acl_ops) + len(plan.ops))
    return plan.report


# -- reading ----------------------------------------------------------------------------------


@attrs.frozen
class Snapshot:
    """Every key the plan depends on, as read. Two snapshots are equal when nothing the plan
    depends on changed (the check made once the keys are WATCHed)."""

    module_node: Mapping[str, str]
    module_uuid: Mapping[str, str]
    env_uuids: Mapping[str, str]
    """Module id → ``MODULE_UUID`` of its environment (``""`` when it has none)."""
    confs: frozenset[str]
    """Destinations that have an rclone configuration (the current layout)."""
    passwords: Mapping[str, str] = attrs.field(repr=False)
    destinations: Mapping[str, Mapping[str, str]] = attrs.field(repr=False)
    """Every ``cluster/backup_repository/<id>`` hash (legacy ones hold secrets)."""
    schedules: Mapping[int, Mapping[str, str]]
    backup_sets: Mapping[str, frozenset[str]]
    legacy_statuses: Mapping[tuple[str, int], Mapping[str, str]]
    status_fields: Mapping[tuple[str, int], frozenset[str]]
    """``node/<n>/backup_status/<id>`` → its fields (module ids)."""
    acls: frozenset[str]
    keys: tuple[str, ...]
    """Every key read."""
    warnings: tuple[str, ...] = ()


@attrs.frozen
class Reading:
    snapshot: Snapshot
    acl_list: tuple[str, ...]
    commands: CommandTable


def read(store: Store) -> Reading:
    """Everything the migration needs, from the writer (the leader): one ``SCAN`` pass, then
    one pipelined round trip."""
    snapshot, extra = _read_snapshot(store, with_acl=True)
    acl_list, command_reply = extra
    return Reading(snapshot, tuple(acl_list), CommandTable.from_reply(command_reply))


def _scan(store: Store) -> list[str]:
    client = store.writer
    keys: list[str] = []
    cursor = 0
    while True:
        cursor, batch = store._call(
            lambda c=cursor: client.scan(c, count=1000),  # type: ignore[misc]
            store.user,
        )
        keys.extend(batch)
        if int(cursor) == 0:
            return sorted(set(keys))


def _read_snapshot(store: Store, *, with_acl: bool) -> tuple[Snapshot, tuple[Any, Any]]:
    keys = _scan(store)
    dest_keys: dict[str, str] = {}
    schedule_keys: dict[int, str] = {}
    set_keys: dict[str, str] = {}
    legacy_status_keys: dict[tuple[str, int], str] = {}
    status_keys: dict[tuple[str, int], str] = {}
    env_keys: dict[str, str] = {}
    for key in keys:
        if m := _DESTINATION_KEY.match(key):
            dest_keys[m.group(1)] = key
        elif (m := _SCHEDULE_KEY.match(key)) and m.group(1).isdigit():
            schedule_keys[int(m.group(1))] = key
        elif m := legacy.BACKUP_SET_KEY.match(key):
            set_keys[m.group(1)] = key
        elif (m := legacy.STATUS_KEY.match(key)) and m.group(2).isdigit():
            legacy_status_keys[(m.group(1), int(m.group(2)))] = key
        elif (m := _STATUS_KEY.match(key)) and m.group(2).isdigit():
            status_keys[(m.group(1), int(m.group(2)))] = key
        elif m := legacy.MODULE_ENV_KEY.match(key):
            env_keys[m.group(1)] = key

    pipe = store.writer.pipeline(transaction=False)
    pipe.hgetall(MODULE_NODE)
    pipe.hgetall(MODULE_UUID)
    pipe.hkeys(RCLONE_CONF)
    pipe.hgetall(RESTIC_PASSWORD)
    pipe.smembers(ACLS)
    for key in dest_keys.values():
        pipe.hgetall(key)
    for key in schedule_keys.values():
        pipe.hgetall(key)
    for key in set_keys.values():
        pipe.smembers(key)
    for key in legacy_status_keys.values():
        pipe.hgetall(key)
    for key in status_keys.values():
        pipe.hkeys(key)
    for key in env_keys.values():
        pipe.hget(key, legacy.MODULE_UUID_FIELD)
    if with_acl:
        pipe.execute_command("ACL", "LIST")
        pipe.execute_command("COMMAND")
    results = iter(store._run(pipe, store.user))
    warnings: list[str] = []

    def take(key: str, default: Any) -> Any:
        item = next(results)
        if isinstance(item, redis.ResponseError) and str(item).startswith("WRONGTYPE"):
            warnings.append(f"{key} is not of the type NS8 writes: ignored")
            return default
        if isinstance(item, Exception):
            mapped = map_redis_error(item, store.user, f"read {key}")
            raise mapped or NsbackupError(f"Redis refused to read {key}")
        return default if item is None else item

    module_node = dict(take(MODULE_NODE, {}))
    module_uuid = dict(take(MODULE_UUID, {}))
    confs = frozenset(take(RCLONE_CONF, []))
    passwords = dict(take(RESTIC_PASSWORD, {}))
    acls = frozenset(take(ACLS, set()))
    destinations = {uid: dict(take(key, {})) for uid, key in dest_keys.items()}
    schedules = {bid: dict(take(key, {})) for bid, key in schedule_keys.items()}
    backup_sets = {mid: frozenset(take(key, set())) for mid, key in set_keys.items()}
    legacy_statuses = {k: dict(take(key, {})) for k, key in legacy_status_keys.items()}
    status_fields = {k: frozenset(take(key, [])) for k, key in status_keys.items()}
    env_uuids = {mid: str(take(key, "")) for mid, key in env_keys.items()}
    extra: tuple[Any, Any] = (None, None)
    if with_acl:
        extra = (take("the ACL list", []), take("the command table", {}))

    for value in passwords.values():
        redacting_filter.add(value)
    for fields in destinations.values():
        for name, value in fields.items():
            if name not in legacy.PUBLIC_FIELDS and (
                is_secret_key(name) or name == legacy.PASSWORD_FIELD
            ):
                redacting_filter.add(value)

    snapshot = Snapshot(
        module_node=module_node,
        module_uuid=module_uuid,
        env_uuids=env_uuids,
        confs=confs,
        passwords=passwords,
        destinations=destinations,
        schedules=schedules,
        backup_sets=backup_sets,
        legacy_statuses=legacy_statuses,
        status_fields=status_fields,
        acls=acls,
        keys=tuple(
            sorted(
                {
                    MODULE_NODE,
                    MODULE_UUID,
                    RCLONE_CONF,
                    RESTIC_PASSWORD,
                    ACLS,
                    *dest_keys.values(),
                    *schedule_keys.values(),
                    *set_keys.values(),
                    *legacy_status_keys.values(),
                    *status_keys.values(),
                    *env_keys.values(),
                }
            )
        ),
        warnings=tuple(warnings),
    )
    return snapshot, extra


# -- ACL rules as Redis applies them ----------------------------------------------------------


@attrs.frozen
class CommandTable:
    """The server's commands (``COMMAND``), to evaluate ACL rules as Redis 7 does: a rule on a
    container command (``+client``) applies to all its subcommands, a category rule to every
    command and subcommand in it. Comparing evaluated rules, not their text, is what makes the
    migration idempotent: Redis prints rules normalised (``+@hash`` for a whole category), and
    NS8's ``save_acls`` copies that form into ``cluster/acls``."""

    subcommands: Mapping[str, frozenset[str]]
    """Every command → its ``command|sub`` names (empty for a plain command)."""
    categories: Mapping[str, frozenset[str]]
    """``@category`` → what a rule on it changes (subcommands of its containers included)."""

    @property
    def leaves(self) -> frozenset[str]:
        """What a client runs: plain commands and subcommands."""
        result: set[str] = set()
        for name, subs in self.subcommands.items():
            result |= subs or {name}
        return frozenset(result)

    @classmethod
    def from_reply(cls, reply: Any) -> CommandTable:
        entries = reply.values() if isinstance(reply, Mapping) else reply
        subcommands: dict[str, frozenset[str]] = {}
        categories: dict[str, set[str]] = defaultdict(set)
        for entry in entries or ():
            name, cats, subs = _command_entry(entry)
            sub_names: set[str] = set()
            for sub in subs:
                sub_name, sub_cats, _ = _command_entry(sub)
                sub_names.add(sub_name)
                for cat in sub_cats:
                    categories[cat].add(sub_name)
            subcommands[name] = frozenset(sub_names)
            for cat in cats:
                categories[cat] |= {name, *sub_names}
        return cls(subcommands, {c: frozenset(n) for c, n in categories.items()})

    def names(self, rule: str) -> frozenset[str] | None:
        """What ``+rule``/``-rule`` changes; ``None`` for a rule this table cannot evaluate
        (an unknown name, a first-argument rule)."""
        if rule.startswith("@"):
            return self.categories.get(rule, frozenset())
        if "|" in rule:
            container = rule.split("|", 1)[0]
            return frozenset({rule}) if rule in self.subcommands.get(container, ()) else None
        if rule in self.subcommands:
            return frozenset({rule, *self.subcommands[rule]})
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _command_entry(entry: Any) -> tuple[str, list[str], list[Any]]:
    """(name, categories, subcommands) of one ``COMMAND`` entry, as redis-py parsed it (a
    dict) or raw (Redis' array: categories at 6, subcommands at 9)."""
    if isinstance(entry, Mapping):
        name, cats, subs = entry.get("name"), entry.get("acl_categories"), entry.get("subcommands")
    else:
        items = list(entry)
        name = items[0]
        cats = items[6] if len(items) > 6 else []
        subs = items[9] if len(items) > 9 else []
    return _text(name).lower(), [_text(c).lower() for c in cats or ()], list(subs or ())


@attrs.frozen
class Access:
    """What a list of ACL rules (``ACL SETUSER`` arguments, an ``ACL LIST`` line) amounts to."""

    enabled: bool
    nopass: bool
    hashes: tuple[str, ...] = attrs.field(repr=False)
    keys: frozenset[str]
    channels: frozenset[str]
    commands: frozenset[str]
    """Runnable commands and subcommands allowed."""
    all_commands: bool
    """Commands Redis gets later (modules) are allowed: set by ``+@all``, cleared only by
    ``-@all``, as Redis keeps it (``+@all -@read +@read`` prints as ``+@all``)."""
    understood: bool
    """False when a rule cannot be evaluated here (selectors, first-argument rules, unknown
    names): such a user is never taken as up to date."""

    def same_rules(self, other: Access) -> bool:
        return (
            self.understood
            and other.understood
            and (self.keys, self.channels, self.commands, self.all_commands)
            == (other.keys, other.channels, other.commands, other.all_commands)
        )


def evaluate(rules: Iterable[str], table: CommandTable) -> Access:
    """Apply ``rules`` to a new user, as ``ACL SETUSER`` does (Redis 7.0 semantics)."""
    enabled = nopass = all_commands = False
    understood = True
    hashes: list[str] = []
    keys: set[str] = set()
    channels: set[str] = set()
    allowed: set[str] = set()
    every = frozenset(n for name, subs in table.subcommands.items() for n in (name, *subs))
    for rule in rules:
        low = rule.lower()
        if low in ("on", "off"):
            enabled = low == "on"
        elif low in ("nopass", "resetpass"):
            nopass = low == "nopass"
            hashes.clear()
        elif rule[:1] in ("#", ">", "!", "<") and len(rule) > 1:
            digest = (
                rule[1:].lower()
                if rule[0] in "#!"
                else hashlib.sha256(rule[1:].encode()).hexdigest()
            )
            if rule[0] in "#>":
                nopass = False
                if digest not in hashes:
                    hashes.append(digest)
            elif digest in hashes:
                hashes.remove(digest)
        elif low == "reset":
            enabled = nopass = all_commands = False
            hashes.clear()
            keys.clear()
            channels.clear()
            allowed.clear()
        elif low in ("sanitize-payload", "skip-sanitize-payload", "clearselectors"):
            continue
        elif low in ("allkeys", "resetkeys") or rule[:1] in ("~", "%"):
            key = _key_rule(rule)
            if key is None:
                understood = False
            elif key in ("", "RW~*"):  # resetkeys; allkeys (~*) also empties the list
                keys.clear()
                keys.add(key) if key else None
            else:
                keys.add(key)
        elif low in ("allchannels", "resetchannels", "&*"):
            channels.clear()
            if low != "resetchannels":
                channels.add("*")
        elif rule.startswith("&"):
            channels.add(rule[1:])
        elif low in ("allcommands", "+@all", "nocommands", "-@all"):
            all_commands = low in ("allcommands", "+@all")
            allowed = set(every) if all_commands else set()
        elif rule[:1] in ("+", "-") and len(rule) > 1:
            names = table.names(low[1:])
            if names is None:
                understood = False
            elif rule[0] == "+":
                allowed |= names
            else:
                allowed -= names
        else:
            understood = False  # selectors "(...)" and anything unknown
    return Access(
        enabled=enabled,
        nopass=nopass,
        hashes=tuple(hashes),
        keys=frozenset(keys),
        channels=frozenset(channels),
        commands=frozenset(allowed & table.leaves),
        all_commands=all_commands,
        understood=understood,
    )


def _key_rule(rule: str) -> str | None:
    """``PERMS~pattern`` (``R``, ``W`` or ``RW``) for a key rule, ``""`` for ``resetkeys``,
    ``None`` when it is not one."""
    low = rule.lower()
    if low in ("allkeys", "resetkeys"):
        return "RW~*" if low == "allkeys" else ""
    if rule.startswith("~"):
        return "RW" + rule
    perms, sep, pattern = rule[1:].partition("~")
    if not sep or not perms or set(perms.upper()) - {"R", "W"}:
        return None
    return "".join(sorted(set(perms.upper()))) + "~" + pattern


def acl_entry(user: str, access: Access, rules: Sequence[str]) -> str:
    """The ``cluster/acls`` entry of ``user`` with ``rules`` and the password hashes and on/off
    state of ``access``: :func:`nsbackup.acl.acl_line` for the usual user (on, one password)."""
    if access.enabled and len(access.hashes) == 1 and not access.nopass:
        return acl.acl_line(user, access.hashes[0], list(rules))
    credentials = ["nopass"] if access.nopass else [f"#{h}" for h in access.hashes]
    state = "on" if access.enabled else "off"
    return " ".join(["user", user, state, "sanitize-payload", *credentials, *rules])


def setuser_args(user: str, access: Access, rules: Sequence[str]) -> tuple[str, ...]:
    credentials = ["nopass"] if access.nopass else [f"#{h}" for h in access.hashes]
    return (user, "reset", "on" if access.enabled else "off", *credentials, *rules)


# -- the plan (pure) --------------------------------------------------------------------------


@attrs.frozen
class Plan:
    report: MigrationReport
    acl_ops: tuple[Op, ...]
    """``ACL SETUSER`` for each user whose rules change, then ``ACL SAVE``."""
    ops: tuple[Op, ...]
    """Every data write, then the events: one transaction."""


def empty_report(dry_run: bool) -> MigrationReport:
    return {
        "dry_run": dry_run,
        "changed": False,
        "module_uuids": [],
        "acl_users": [],
        "destinations": [],
        "unconverted_destinations": [],
        "schedules": [],
        "legacy_sets": [],
        "statuses": [],
        "pruned_modules": [],
        "pruned_statuses": [],
        "events": [],
        "warnings": [],
    }


def make_plan(reading: Reading, host: PluginHost, *, dry_run: bool = False) -> Plan:
    """What the migration does to ``reading``: the report, the ACL commands and the data
    transaction. No I/O (a generated module UUID is random)."""
    snap = reading.snapshot
    report = empty_report(dry_run)
    report["warnings"].extend(snap.warnings)
    live = set(snap.module_node)
    prune = bool(live)
    if not prune:
        report["warnings"].append(
            f"{MODULE_NODE} is empty: no module is taken as removed, nothing is pruned"
        )
    ops: list[Op] = []
    uuids_changed = _plan_module_uuids(snap, live, prune, ops, report)
    destinations = _plan_destinations(snap, host, ops, report)
    unconverted = {d["id"] for d in report["unconverted_destinations"]}
    for bid, fields in sorted(snap.schedules.items()):
        if fields.get("repository") in unconverted:
            report["warnings"].append(
                f"backup {bid} uses destination {fields['repository']}, which is not "
                "converted: its runs fail until it is fixed and migrate runs again"
            )
    schedules = _plan_schedules(snap, live, prune, ops, report)
    _plan_statuses(snap, live, prune, ops, report)
    acl_ops, acls_changed = _plan_acl(reading, ops, report)
    if destinations:
        ops.append(_publish_destinations(destinations))
    if schedules:
        ops.append(_publish_schedules(schedules))
    if acls_changed or uuids_changed:
        ops.append(Op("PUBLISH", EVENT_ACL_CHANGED, (ACLS,)))
    report["events"] = [
        {"channel": op.key, "payload": op.args[0]} for op in ops if op.command == "PUBLISH"
    ]
    if acls_changed:
        acl_ops.append(Op("ACL", "SAVE"))
    report["changed"] = bool(acl_ops or ops)
    return Plan(report, tuple(acl_ops), tuple(ops))


def _plan_module_uuids(
    snap: Snapshot, live: set[str], prune: bool, ops: list[Op], report: MigrationReport
) -> bool:
    changed = False
    missing = sorted(live - set(snap.module_uuid))
    # MODULE_UUID sits in module/<id>/environment, which the module writes itself: a module
    # claiming a UUID another module has (or had: its backups are still there), or that two
    # modules claim, would get that module's repository. Such a module gets no UUID here.
    claims: dict[str, list[str]] = {}
    for mid in missing:
        with contextlib.suppress(ValueError):
            claims.setdefault(str(uuidlib.UUID(snap.env_uuids.get(mid, ""))), []).append(mid)
    taken = {str(v).lower() for v in snap.module_uuid.values()}
    for mid in missing:
        entry: MigratedModuleUuid
        try:
            value = str(uuidlib.UUID(snap.env_uuids.get(mid, "")))
            if value in taken or len(claims[value]) > 1:
                holders = {m for m, u in snap.module_uuid.items() if str(u).lower() == value}
                others = sorted((holders | set(claims[value])) - {mid})
                report["warnings"].append(
                    f"module {mid} claims {legacy.MODULE_UUID_FIELD} {value} in "
                    f"{legacy.MODULE_ENV.format(mid)}, which {', '.join(others)} also has: "
                    "no UUID is given to it (it cannot be backed up) until the right one is "
                    f"set by hand (HSET {MODULE_UUID} {mid} <uuid>)"
                )
                continue
            entry = {"module_id": mid, "uuid": value, "source": "environment"}
        except ValueError:
            value = str(uuidlib.uuid4())
            entry = {"module_id": mid, "uuid": value, "source": "generated"}
            env = legacy.MODULE_ENV.format(mid)
            report["warnings"].append(
                f"module {mid} has no {legacy.MODULE_UUID_FIELD} in {env}: a random UUID is "
                f"given to it ({value}); backups it made before, if any, are under another UUID"
            )
        ops.append(Op("HSET", MODULE_UUID, (mid, value)))
        report["module_uuids"].append(entry)
        changed = True
    if prune:
        removed = sorted(set(snap.module_uuid) - live)
        if removed:
            ops.append(Op("HDEL", MODULE_UUID, tuple(removed)))
            report["pruned_modules"] = removed
            changed = True
    return changed


def _plan_destinations(
    snap: Snapshot, host: PluginHost, ops: list[Op], report: MigrationReport
) -> list[str]:
    changed: list[str] = []
    for uid in sorted(snap.destinations):
        fields = snap.destinations[uid]
        extra = sorted(set(fields) - set(legacy.PUBLIC_FIELDS))
        if uid not in snap.confs:
            result = _convert(uid, fields, snap.passwords.get(uid), host)
            if isinstance(result, str):
                report["unconverted_destinations"].append(
                    {
                        "id": uid,
                        "provider": fields.get("provider", ""),
                        "url": fields.get("url", ""),
                        "reason": result,
                    }
                )
                continue
            new_ops, item = result
        elif extra:
            new_ops, item = _clean(uid, fields, uid in snap.passwords)
        else:
            continue
        ops.extend(new_ops)
        item["removed_fields"] = extra
        report["destinations"].append(item)
        changed.append(uid)
    return changed


def _convert(
    uid: str, fields: Mapping[str, str], stored_password: str | None, host: PluginHost
) -> str | tuple[list[Op], MigratedDestination]:
    """The ops converting one legacy destination, or why it cannot be converted."""
    url = fields.get("url", "")
    if not url:
        return "the legacy hash has no url"
    provider_name = fields.get("provider") or legacy.infer_provider(url)
    if not provider_name:
        return "the legacy hash has no provider and its URL scheme names none"
    provider = host.providers.get(provider_name)
    if provider is None:
        return f"no provider plugin {provider_name!r} is installed"
    password = fields.get(legacy.PASSWORD_FIELD, "")
    if not password and not stored_password:
        return (
            f"it has no Restic password (field {legacy.PASSWORD_FIELD}): "
            "its repositories could not be read"
        )
    if password and stored_password and password != stored_password:
        return (
            f"its legacy password differs from the one already in {RESTIC_PASSWORD}; "
            "which one its repositories use must be decided by hand"
        )
    declared = {p.name for p in provider.parameters}
    canonical = legacy.canonical_url(url)
    name = fields.get("name", "")
    try:
        request = DestinationRequest.from_payload(
            {
                "provider": provider_name,
                "url": canonical,
                "name": name,
                "parameters": {k: v for k, v in fields.items() if k in declared},
            }
        )
        previous = StoredDestination(
            id=uid, provider=provider_name, url=canonical, name=name, basepath="", section={}
        )
        prepared = prepare(host, request, previous)
    except ValidationFailed as exc:
        return "; ".join(e.describe() for e in exc.errors)
    except NsbackupError as exc:
        return str(exc).splitlines()[0]
    new_ops = Store._destination_ops(prepared, None if stored_password else password, event=False)
    item: MigratedDestination = {
        "id": uid,
        "action": "converted",
        "provider": prepared.provider,
        "name": prepared.name,
        "url": prepared.url,
        "legacy_url": url,
        "basepath": prepared.basepath,
        "removed_fields": [],
    }
    return new_ops, item


def _clean(
    uid: str, fields: Mapping[str, str], has_password: bool
) -> tuple[list[Op], MigratedDestination]:
    """A destination already converted whose public hash still holds legacy fields."""
    key = DESTINATION.format(uid)
    public = {k: fields.get(k, "") for k in legacy.PUBLIC_FIELDS}
    ops = []
    password = fields.get(legacy.PASSWORD_FIELD, "")
    if password and not has_password:
        ops.append(Op("HSET", RESTIC_PASSWORD, (uid, password)))
    ops += [Op("DEL", key), Op("HSET", key, tuple(x for kv in public.items() for x in kv))]
    item: MigratedDestination = {
        "id": uid,
        "action": "cleaned",
        "provider": public["provider"],
        "name": public["name"],
        "url": public["url"],
        "legacy_url": public["url"],
        "basepath": public["basepath"],
        "removed_fields": [],
    }
    return ops, item


def _plan_schedules(
    snap: Snapshot, live: set[str], prune: bool, ops: list[Op], report: MigrationReport
) -> list[int]:
    added: dict[int, set[str]] = defaultdict(set)
    for mid, bids in sorted(snap.backup_sets.items()):
        key = legacy.BACKUP_SET.format(mid)
        ops.append(Op("DEL", key))
        report["legacy_sets"].append(key)
        if prune and mid not in live:
            continue  # a removed module: its membership goes with it
        for member in sorted(bids):
            if member.isdigit() and int(member) in snap.schedules:
                added[int(member)].add(mid)
            else:
                report["warnings"].append(
                    f"{key} names backup {member}, which does not exist: ignored"
                )
    changed: list[int] = []
    for bid, fields in sorted(snap.schedules.items()):
        current = set(fields.get("instances", "").split())
        wanted = current | added[bid]
        if prune:
            wanted &= live
        if wanted == current:
            continue
        instances = sorted(wanted)
        ops.append(Op("HSET", SCHEDULE.format(bid), ("instances", " ".join(instances))))
        entry: MigratedSchedule = {
            "id": bid,
            "instances": instances,
            "added": sorted(wanted - current),
            "removed": sorted(current - wanted),
        }
        report["schedules"].append(entry)
        changed.append(bid)
    return changed


def _plan_statuses(
    snap: Snapshot, live: set[str], prune: bool, ops: list[Op], report: MigrationReport
) -> None:
    for (mid, bid), fields in sorted(snap.legacy_statuses.items()):
        node = snap.module_node.get(mid, "")
        entry: MigratedStatus = {"module_id": mid, "backup_id": bid, "node_id": node, "action": ""}
        if not node or bid not in snap.schedules:
            entry["action"] = "dropped"
        elif mid in snap.status_fields.get((node, bid), frozenset()):
            entry["action"] = "kept_newer"
        else:
            value = json.dumps(legacy.status_value(fields))
            ops.append(Op("HSET", STATUS.format(node, bid), (mid, value)))
            entry["action"] = "copied"
        ops.append(Op("DEL", legacy.STATUS.format(mid, bid)))
        report["statuses"].append(entry)
    if not prune:
        return
    for (node, bid), modules in sorted(snap.status_fields.items()):
        dangling = sorted(modules - live)
        if dangling:
            ops.append(Op("HDEL", STATUS.format(node, bid), tuple(dangling)))
            pruned: PrunedStatus = {"node_id": node, "backup_id": bid, "module_ids": dangling}
            report["pruned_statuses"].append(pruned)


def _plan_acl(reading: Reading, ops: list[Op], report: MigrationReport) -> tuple[list[Op], bool]:
    """``ACL SETUSER`` ops for live node and module users whose effective rules are not
    nsbackup's, and ``cluster/acls`` rewrites for those whose entry does not match."""
    table = reading.commands
    entries: dict[str, list[str]] = defaultdict(list)
    for line in reading.snapshot.acls:
        words = line.split(None, 2)
        if len(words) >= 2 and words[0] == "user":
            entries[words[1]].append(line)
    setusers: list[Op] = []
    changed = False
    for line in sorted(reading.acl_list):
        words = line.split()
        if len(words) < 2 or words[0] != "user" or not (m := _USER.fullmatch(words[1])):
            continue
        user, (kind, ident) = words[1], m.groups()
        try:
            rules = acl.node_rules(ident) if kind == "node" else acl.module_rules(ident)
        except ValueError:
            report["warnings"].append(f"Redis user {user}: an id nsbackup cannot use; left as is")
            continue
        desired = evaluate(rules, table)
        current = evaluate(words[2:], table)
        rules_ok = current.same_rules(desired)
        own = entries.get(user, [])
        entry_ok = len(own) == 1 and _entry_matches(
            evaluate(own[0].split()[2:], table), current, desired
        )
        if rules_ok and entry_ok:
            continue
        if not rules_ok:
            setusers.append(Op("ACL", "SETUSER", setuser_args(user, current, rules)))
        if not entry_ok:
            if own:
                ops.append(Op("SREM", ACLS, tuple(sorted(own))))
            ops.append(Op("SADD", ACLS, (acl_entry(user, current, rules),)))
        item: MigratedAclUser = {
            "user": user,
            "enabled": current.enabled,
            "rules": not rules_ok,
            "entry": not entry_ok,
        }
        report["acl_users"].append(item)
        changed = True
    return setusers, changed


def _entry_matches(entry: Access, live: Access, desired: Access) -> bool:
    return (
        entry.same_rules(desired)
        and entry.enabled == live.enabled
        and entry.nopass == live.nopass
        and sorted(entry.hashes) == sorted(live.hashes)
    )


# -- applying ---------------------------------------------------------------------------------


def _apply_acl(store: Store, plan: Plan) -> None:
    """``ACL SETUSER`` each user, then ``ACL SAVE``, in one pipeline (each command atomic)."""
    pipe = store.writer.pipeline(transaction=False)
    for op in plan.acl_ops:
        pipe.execute_command(op.command, op.key, *op.args)
    results = store._run(pipe, store.user)
    for op, result in zip(plan.acl_ops, results, strict=True):
        if not isinstance(result, Exception):
            continue
        if op.key == "SAVE" and _NO_ACL_FILE in str(result):
            plan.report["warnings"].append(
                "this Redis has no ACL file (ACL SAVE refused): the new rules are live but "
                "will be lost at its next restart unless saved another way"
            )
            continue
        what = f"set the ACL of {op.args[0]}" if op.key == "SETUSER" else "save the ACLs"
        mapped = map_redis_error(result, store.user, what)
        raise mapped or NsbackupError(f"Redis refused to {what}")


def _execute_data(store: Store, ops: Sequence[Op], watched: Sequence[str], seen: Snapshot) -> None:
    """The data transaction, WATCHing every key read; the keys are re-read once watched so a
    change made since the first read is caught too."""

    def unchanged(pipe: Any) -> None:
        again, _ = _read_snapshot(store, with_acl=False)
        if again != seen:
            raise _changed_meanwhile()

    store._execute(ops, watch=watched, guard=unchanged, conflict=_changed_meanwhile)


def _changed_meanwhile() -> NsbackupError:
    return NsbackupError(
        "the backup keys changed while the migration ran; its data changes were not written "
        "(ACL changes, if any, were): run `nsbackup migrate` again"
    )
