"""The NS8 Redis key layout: one pipelined snapshot read, transactional writes with events.

This module is the only one that knows key names (SPEC §1, ref §1). Reads that belong together
are one pipeline (two round trips for a whole :class:`ClusterState`, whatever the number of
modules, destinations or schedules); writes that belong together are one ``MULTI`` with the
event they publish. Reads may come from a local replica while writes go to the leader.

Every Redis failure leaves this module as an :class:`~nsbackup.errors.NsbackupError` that names
the Redis user and what it was refused (never a value: a refused ``HSET`` may carry a secret).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import redis

from nsbackup.api import check_url, hide_password
from nsbackup.errors import (
    Conflict,
    NotFound,
    NsbackupError,
    PermissionDenied,
    Unreachable,
    ValidationFailed,
)
from nsbackup.model import (
    ClusterState,
    Destination,
    FieldError,
    Module,
    Node,
    PreparedDestination,
    Schedule,
)
from nsbackup.secret import Secret

log = logging.getLogger(__name__)

DESTINATION = "cluster/backup_repository/{}"
DESTINATION_PATTERN = "cluster/backup_repository/*"
RCLONE_CONF = "private/nodes/backup_destination/rclone_conf"
RESTIC_PASSWORD = "private/agents/backup_destination/restic_password"
RESTORE_UUID = "private/nodes/restore_uuid"
SCHEDULE = "cluster/backup/{}"
SEQUENCE = "cluster/backup_sequence"
STATUS = "node/{}/backup_status/{}"
MODULE_UUID = "cluster/module_uuid"
MODULE_NODE = "cluster/module_node"
MODULE_ENV = "module/{}/environment"
MODULE_UI_NAME = "module/{}/ui_name"
MODULE_UI_NOTE = "module/{}/ui_note"
MODULE_FLAGS = "module/{}/flags"
NODE_VPN = "node/{}/vpn"
NETWORK = "cluster/network"
CLUSTER_ENV = "cluster/environment"
CLUSTER_UUID = "cluster/uuid"
ACLS = "cluster/acls"

EVENT_DESTINATION_CHANGED = "cluster/event/backup-destination-changed"
EVENT_SCHEDULE_CHANGED = "cluster/event/backup-schedule-changed"
EVENT_ACL_CHANGED = "cluster/event/acl-changed"
EVENT_STATUS_CHANGED = "node/{}/event/backup-status-changed"

T = TypeVar("T")


def connect(
    url: str, *, username: str | None = None, password: str | None = None, timeout: float = 10
) -> redis.Redis:
    """A client for ``url`` (no I/O yet); credentials from the URL, else the arguments, else
    ``REDIS_USER``/``REDIS_PASSWORD``. A URL redis-py cannot use is a validation error on
    ``redis``."""
    check_url(url)
    try:
        client: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **_credentials(url, username, password),
        )
    except ValueError as exc:
        raise ValidationFailed.one(
            "redis", hide_password(url), "invalid_url", f"invalid Redis URL: {exc}"
        ) from None
    return client


def _credentials(url: str, username: str | None, password: str | None) -> dict[str, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password or parts.username:
        return {}
    user = username if username is not None else os.environ.get("REDIS_USER")
    secret = password if password is not None else os.environ.get("REDIS_PASSWORD")
    creds = {}
    if user:
        creds["username"] = user
    if secret:
        creds["password"] = secret
    return creds


def text_client(client: Any) -> Any:
    """``client`` itself when it decodes replies to ``str`` (NS8's ``redis_connect()`` does),
    else a sibling client with the same connection settings that does (its own pool; no I/O).
    """
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    if kwargs.get("decode_responses"):
        return client
    kwargs["decode_responses"] = True
    sibling_pool = redis.ConnectionPool(
        connection_class=pool.connection_class,
        max_connections=getattr(pool, "max_connections", None),
        **kwargs,
    )
    return redis.Redis(connection_pool=sibling_pool)


def identity(client: Any) -> str:
    """The Redis user a client authenticates as (``default`` when it gives none)."""
    kwargs = client.connection_pool.connection_kwargs
    return str(kwargs.get("username") or "default")


_PIPELINE_PREFIX = re.compile(r"^Command # (\d+) \(.*?\) of pipeline caused error: ", re.S)


def _first_line(exc: BaseException) -> str:
    # redis-py quotes the whole refused command (values included, possibly secrets) in
    # pipeline errors: keep only Redis' own reason.
    text = _PIPELINE_PREFIX.sub("", str(exc))
    return text.splitlines()[0] if text else type(exc).__name__


def map_redis_error(exc: BaseException, user: str, what: str = "") -> NsbackupError | None:
    """The :class:`NsbackupError` for a redis-py exception, or ``None`` if it is not one."""
    doing = f" ({what})" if what else ""
    if isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.ResponseError) and str(exc).startswith("NOPERM")
    ):
        return PermissionDenied(
            f"permission denied: Redis user {user!r} may not do this{doing}: {_first_line(exc)}"
        )
    if isinstance(
        exc, redis.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError
    ):
        return PermissionDenied(
            f"Redis authentication failed for user {user!r}: {_first_line(exc)}"
        )
    if isinstance(exc, redis.exceptions.InvalidResponse):
        # Something answers on the port, but not in RESP: an HTTP server, a typo in the port.
        return Unreachable(f"not a Redis server{doing}: {_first_line(exc)}")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        return Unreachable(f"Redis unreachable{doing}: {_first_line(exc)}")
    if isinstance(exc, redis.ResponseError) and "DB index is out of range" in str(exc):
        return Unreachable(f"Redis refused the database: {_first_line(exc)}")
    if isinstance(exc, redis.RedisError):
        return NsbackupError(f"Redis error{doing}: {_first_line(exc)}")
    return None


@contextmanager
def redis_errors(user: str = "default", what: str = "") -> Iterator[None]:
    """Map Redis failures to nsbackup errors (permission and connection errors exit 5)."""
    try:
        yield
    except redis.RedisError as exc:
        mapped = map_redis_error(exc, user, what)
        if mapped is None:  # pragma: no cover - every RedisError maps
            raise
        raise mapped from None


@attrs.frozen
class Op:
    """One write command of a transaction: ``command key *args``, or a ``PUBLISH``."""

    command: str
    key: str
    args: tuple[str, ...] = attrs.field(default=(), repr=False)  # values may be secrets

    def describe(self) -> str:
        if self.command == "PUBLISH":
            return f"publish on channel {self.key}"
        return f"run {self.command} on key {self.key}"


def _hset(key: str, mapping: Mapping[str, str]) -> Op:
    args: list[str] = []
    for field, value in mapping.items():
        args += [field, value]
    return Op("HSET", key, tuple(args))


class Store:
    """Reads from ``reader`` (e.g. the local replica), writes to ``writer`` (the leader).

    Clients that do not decode replies are replaced by siblings that do (:func:`text_client`).
    """

    def __init__(self, reader: Any, writer: Any | None = None) -> None:
        # redis-py's annotations are loose (bytes | str everywhere): hold the clients as Any.
        self.reader: Any = text_client(reader)
        self.writer: Any = self.reader if writer is None else text_client(writer)
        self.reader_user = identity(self.reader)
        self.user = identity(self.writer)
        self.round_trips = 0

    # -- helpers --------------------------------------------------------------------------
    def _run(self, pipe: Any, user: str | None = None) -> list[Any]:
        self.round_trips += 1
        with redis_errors(user or self.reader_user):
            result: list[Any] = pipe.execute(raise_on_error=False)
        return result

    def _call(self, func: Callable[[], T], user: str | None = None) -> T:
        self.round_trips += 1
        with redis_errors(user or self.reader_user):
            return func()

    def _refused(self, item: Any, what: str = "read") -> NsbackupError:
        mapped = (
            map_redis_error(item, self.reader_user, what) if isinstance(item, Exception) else None
        )
        return mapped or NsbackupError(f"Redis refused the {what}")

    def check_writable(self, ops: Sequence[Op]) -> None:
        """Ask Redis whether the writer may run ``ops``: they are queued inside ``MULTI`` and
        discarded, so nothing is written. Raise :class:`PermissionDenied` naming the first
        refused command. One round trip (two when ``MULTI`` itself is refused)."""
        self.round_trips += 1
        pool = self.writer.connection_pool
        refused: tuple[Op, Exception] | None = None
        with redis_errors(self.user, "checking write permissions"):
            try:
                conn = pool.get_connection()
            except TypeError:  # redis-py < 5.3 wants a command name
                conn = pool.get_connection("MULTI")
            try:
                try:
                    conn.send_command("MULTI")
                    conn.read_response()
                except redis.ResponseError as exc:  # without MULTI nothing may be queued
                    mapped = map_redis_error(exc, self.user, "use transactions")
                    raise (mapped or exc) from None
                commands = [(op.command, op.key, *op.args) for op in ops] + [("DISCARD",)]
                conn.send_packed_command(conn.pack_commands(commands))
                for op in ops:
                    try:
                        conn.read_response()
                    except redis.ResponseError as exc:
                        refused = refused or (op, exc)
                conn.read_response()  # DISCARD
            except BaseException:
                conn.disconnect()  # its transaction state is unknown
                raise
            finally:
                pool.release(conn)
        if refused is not None:
            op, error = refused
            mapped = map_redis_error(error, self.user, op.describe())
            raise mapped or NsbackupError(_first_line(error))

    def _execute(
        self,
        ops: Sequence[Op],
        *,
        watch: Sequence[str] = (),
        guard: Callable[[Any], None] | None = None,
        conflict: Callable[[], NsbackupError] | None = None,
    ) -> None:
        """Run ``ops`` in one ``MULTI``/``EXEC``. With ``watch``, ``guard(pipe)`` runs after
        ``WATCH`` (it may raise) and a concurrent change raises ``conflict()``."""
        self.round_trips += 1
        try:
            with self.writer.pipeline(transaction=True) as pipe:
                if watch:
                    pipe.watch(*watch)
                    if guard is not None:
                        guard(pipe)
                    pipe.multi()
                for op in ops:
                    pipe.execute_command(op.command, op.key, *op.args)
                pipe.execute()
        except redis.WatchError:
            if conflict is None:
                raise NsbackupError("a concurrent change interrupted the write") from None
            raise conflict() from None
        except redis.RedisError as exc:
            m = re.match(r"Command # (\d+) ", str(exc))
            index = int(m.group(1)) - 1 if m else -1
            what = ops[index].describe() if 0 <= index < len(ops) else "write"
            raise (map_redis_error(exc, self.user, what) or NsbackupError(str(exc))) from None

    def _write(self, ops: Sequence[Op], dry_run: bool) -> None:
        if dry_run:
            self.check_writable(ops)
        else:
            self._execute(ops)

    # -- the snapshot ---------------------------------------------------------------------
    def load(self, *, statuses: bool = False, details: bool = True) -> ClusterState:
        """The cluster in two pipelined round trips (three with ``details``, when some module
        is in no schedule), whatever its size. Secrets are left out (``None``) unless the
        reader may see ``private/nodes/*``; a reader that may see no private key at all finds
        the destinations with SCAN.

        ``details`` adds what only listings show: each module's ``ui_name`` (one ``MGET``)
        and the ``flags`` of the modules no schedule names (NS8's ``no_data_backup`` hides them
        from ``unconfigured_instances``). The gateway and destination changes do without.
        """
        pipe = self.reader.pipeline(transaction=False)
        pipe.hgetall(RCLONE_CONF)
        pipe.hgetall(RESTIC_PASSWORD)
        pipe.get(SEQUENCE)
        pipe.hgetall(MODULE_UUID)
        pipe.hgetall(MODULE_NODE)
        pipe.get(NETWORK)
        pipe.hget(CLUSTER_ENV, "NODE_ID")
        pipe.get(CLUSTER_UUID)
        pipe.smembers(ACLS)
        pipe.hgetall(RESTORE_UUID)
        (
            confs,
            passwords,
            sequence,
            module_uuid,
            module_node,
            network,
            leader,
            cluster_uuid,
            acls,
            grants,
        ) = self._run(pipe)
        fatal = [r for r in (sequence, module_uuid, module_node) if isinstance(r, Exception)]
        if fatal:
            raise self._refused(fatal[0])
        privileged = not isinstance(confs, Exception)
        if privileged:
            dest_ids = sorted(confs)
        elif not isinstance(passwords, Exception):
            # Modules may read the password hash (NS8 modules run Restic themselves): its
            # fields name the destinations without any key enumeration.
            confs, dest_ids = {}, sorted(passwords)
        else:
            confs, dest_ids = {}, self._scan_destination_ids()
        if isinstance(passwords, Exception) or not privileged:
            passwords = {}
        if isinstance(grants, Exception):
            grants = {}
        seq = _int(sequence)
        node_ids = sorted(
            set(module_node.values()) | ({leader} if _str(leader) else set()), key=_node_key
        )
        module_ids = sorted(module_node)
        schedule_ids = list(range(1, seq + 1))

        pipe = self.reader.pipeline(transaction=False)
        for uid in dest_ids:
            pipe.hgetall(DESTINATION.format(uid))
        for bid in schedule_ids:
            pipe.hgetall(SCHEDULE.format(bid))
        for node in node_ids:
            pipe.hget(NODE_VPN.format(node), "ip_address")
        if details and module_ids:
            pipe.mget([MODULE_UI_NAME.format(mid) for mid in module_ids])
        if statuses:
            for node in node_ids:
                for bid in schedule_ids:
                    pipe.hgetall(STATUS.format(node, bid))
        results = iter(
            self._run(pipe) if (dest_ids or schedule_ids or node_ids or module_ids) else []
        )

        destinations: dict[str, Destination] = {}
        for uid in dest_ids:
            public = _dict(next(results))
            if not public:
                log.warning("destination %s has a configuration but no public hash; ignored", uid)
                continue
            password = passwords.get(uid)
            destinations[uid] = Destination(
                id=uid,
                provider=public.get("provider", ""),
                url=public.get("url", ""),
                name=public.get("name", ""),
                basepath=public.get("basepath", ""),
                rclone_conf=confs.get(uid) if privileged else None,
                restic_password=Secret(password) if password else None,
            )
        schedules: dict[int, Schedule] = {}
        for bid in schedule_ids:
            raw = _dict(next(results))
            if raw:
                schedules[bid] = schedule_from_hash(bid, raw)
        nodes = {node: Node(node, _str(next(results))) for node in node_ids}
        ui_names = next(results) if details and module_ids else []
        if not isinstance(ui_names, list):  # refused: shown without names
            ui_names = []
        names = dict(zip(module_ids, ui_names, strict=False))
        status_map: dict[tuple[str, int], Mapping[str, Any]] = {}
        if statuses:
            for node in node_ids:
                for bid in schedule_ids:
                    raw = _dict(next(results))
                    if raw:
                        status_map[(node, bid)] = {m: _json(v) for m, v in raw.items()}
        flags: dict[str, frozenset[str]] = {}
        if details:
            configured = {mid for s in schedules.values() for mid in s.instances}
            unconfigured = [mid for mid in module_ids if mid not in configured]
            if unconfigured:
                pipe = self.reader.pipeline(transaction=False)
                for mid in unconfigured:
                    pipe.smembers(MODULE_FLAGS.format(mid))
                for mid, value in zip(unconfigured, self._run(pipe), strict=True):
                    flags[mid] = frozenset(value) if isinstance(value, set) else frozenset()
        modules = {
            mid: Module(
                id=mid,
                uuid=module_uuid.get(mid, ""),
                node=module_node[mid],
                ui_name=_str(names.get(mid)),
                flags=flags.get(mid, frozenset()),
            )
            for mid in module_ids
        }
        return ClusterState(
            destinations=destinations,
            schedules=schedules,
            modules=modules,
            nodes=nodes,
            leader=_str(leader),
            network=_str(network),
            cluster_uuid=_str(cluster_uuid),
            acls=tuple(sorted(acls)) if isinstance(acls, set) else (),
            restore_grants=grants,
            statuses=status_map,
            privileged=privileged,
            sequence=seq,
        )

    def _scan_destination_ids(self) -> list[str]:
        prefix = DESTINATION.format("")
        ids: list[str] = []
        cursor = 0
        while True:
            cursor, keys = self._call(
                lambda c=cursor: self.reader.scan(c, match=DESTINATION_PATTERN, count=1000)  # type: ignore[misc]
            )
            ids.extend(k[len(prefix) :] for k in keys)
            if cursor == 0:
                return sorted(set(ids))

    # -- destinations ---------------------------------------------------------------------
    def read_destination(self, uid: str) -> Destination | None:
        """One destination with its secrets (one pipelined round trip)."""
        pipe = self.reader.pipeline(transaction=False)
        pipe.hgetall(DESTINATION.format(uid))
        pipe.hget(RCLONE_CONF, uid)
        pipe.hget(RESTIC_PASSWORD, uid)
        public, conf, password = self._run(pipe)
        for item in (public, conf, password):
            if isinstance(item, Exception):
                raise self._refused(item)
        if not public and conf is None:
            return None
        return Destination(
            id=uid,
            provider=public.get("provider", ""),
            url=public.get("url", ""),
            name=public.get("name", ""),
            basepath=public.get("basepath", ""),
            rclone_conf=conf,
            restic_password=Secret(password) if password else None,
        )

    def destination_exists(self, uid: str) -> bool:
        pipe = self.writer.pipeline(transaction=False)
        pipe.exists(DESTINATION.format(uid))
        pipe.hexists(RCLONE_CONF, uid)
        exists_public, exists_conf = self._run(pipe, self.user)
        for item in (exists_public, exists_conf):
            if isinstance(item, Exception):
                raise self._refused(item)
        return bool(exists_public) or exists_conf is True

    @staticmethod
    def _destination_ops(
        prepared: PreparedDestination, password: str | None, event: bool = True
    ) -> list[Op]:
        key = DESTINATION.format(prepared.id)
        ops = [Op("HSET", RCLONE_CONF, (prepared.id, prepared.rclone_conf))]
        if password is not None:
            ops.append(Op("HSET", RESTIC_PASSWORD, (prepared.id, password)))
        ops += [Op("DEL", key), _hset(key, prepared.public())]
        if event:
            ops.append(_publish_destinations([prepared.id]))
        return ops

    def add_destination(
        self, prepared: PreparedDestination, password: str, *, dry_run: bool = False
    ) -> None:
        """Write a new destination and publish its event, in one transaction.

        Raise :class:`Conflict` (``backup_repository_exists``) when it exists already, also
        when another client adds it concurrently (the keys are WATCHed). With ``dry_run`` only
        check that the writer may (nothing is written).
        """
        ops = self._destination_ops(prepared, password)
        if dry_run:
            self.check_writable(ops)
            return
        key = DESTINATION.format(prepared.id)

        def guard(pipe: Any) -> None:
            with redis_errors(self.user):
                exists = pipe.exists(key) or pipe.hexists(RCLONE_CONF, prepared.id)
            if exists:
                raise destination_exists_error(prepared.id)

        self._execute(
            ops,
            watch=(key, RCLONE_CONF),
            guard=guard,
            conflict=lambda: destination_exists_error(prepared.id),
        )

    def alter_destination(self, prepared: PreparedDestination, *, dry_run: bool = False) -> None:
        self._write(self._destination_ops(prepared, None), dry_run)

    def remove_destination(
        self,
        uid: str,
        schedule_ids: Sequence[int],
        node_ids: Iterable[str],
        *,
        dry_run: bool = False,
    ) -> None:
        """Remove a destination, its secrets, the schedules that use it and their status keys;
        publish the schedule event (prom files are purged on it) and the destination event."""
        nodes = list(node_ids)
        ops = [
            Op("DEL", DESTINATION.format(uid)),
            Op("HDEL", RCLONE_CONF, (uid,)),
            Op("HDEL", RESTIC_PASSWORD, (uid,)),
        ]
        for bid in schedule_ids:
            ops.append(Op("DEL", SCHEDULE.format(bid)))
            ops += [Op("DEL", STATUS.format(node, bid)) for node in nodes]
        if schedule_ids:
            ops.append(_publish_schedules(schedule_ids))
        ops.append(_publish_destinations([uid]))
        self._write(ops, dry_run)

    # -- schedules ------------------------------------------------------------------------
    def add_schedule(self, schedule: Schedule, *, dry_run: bool = False) -> Schedule:
        """Take the next id (``INCR cluster/backup_sequence``) and write ``schedule`` under it
        with its event; return it with its id. ``dry_run`` checks the permissions only."""
        if dry_run:
            self.check_writable(
                [Op("INCR", SEQUENCE), *self._schedule_ops(attrs.evolve(schedule, id=0))]
            )
            return schedule
        bid = self._call(lambda: int(self.writer.incr(SEQUENCE)), self.user)
        stored = attrs.evolve(schedule, id=bid, name=schedule.name or f"Backup {bid}")
        self._execute(self._schedule_ops(stored))
        return stored

    @staticmethod
    def _schedule_ops(schedule: Schedule) -> list[Op]:
        key = SCHEDULE.format(schedule.id)
        return [
            Op("DEL", key),
            _hset(key, schedule_to_hash(schedule)),
            _publish_schedules([schedule.id]),
        ]

    def write_schedule(self, schedule: Schedule, *, dry_run: bool = False) -> None:
        self._write(self._schedule_ops(schedule), dry_run)

    def remove_schedule(self, bid: int, node_ids: Iterable[str], *, dry_run: bool = False) -> None:
        ops = [Op("DEL", SCHEDULE.format(bid))]
        ops += [Op("DEL", STATUS.format(node, bid)) for node in node_ids]
        ops.append(_publish_schedules([bid]))
        self._write(ops, dry_run)

    def read_schedule(self, bid: int) -> Schedule:
        raw = self._call(lambda: self.reader.hgetall(SCHEDULE.format(bid)))
        if not raw:
            raise NotFound(
                [FieldError("id", "id", bid, "backup_not_found", f"backup {bid} not found")]
            )
        return schedule_from_hash(bid, raw)

    # -- the cluster dump (ref §8.1, §8.2, §8.4) ------------------------------------------
    def destination_inventory(self) -> dict[str, set[str]]:
        """Which destination ids have a public hash (``public``), an rclone configuration
        (``rclone_conf``) and a Restic password (``restic_password``): what the dump export
        needs to name destinations it must leave out. One pipeline plus a SCAN."""
        pipe = self.reader.pipeline(transaction=False)
        pipe.hkeys(RCLONE_CONF)
        pipe.hkeys(RESTIC_PASSWORD)
        confs, passwords = self._run(pipe)
        for item in (confs, passwords):
            if isinstance(item, Exception):
                raise self._refused(item)
        return {
            "public": set(self._scan_destination_ids()),
            "rclone_conf": set(confs),
            "restic_password": set(passwords),
        }

    def existing_destinations(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` that exist on the leader (public hash or rclone configuration)."""
        wanted = sorted(set(ids))
        if not wanted:
            return set()
        pipe = self.writer.pipeline(transaction=False)
        for uid in wanted:
            pipe.exists(DESTINATION.format(uid))
            pipe.hexists(RCLONE_CONF, uid)
        replies = self._run(pipe, self.user)
        for item in replies:
            if isinstance(item, Exception):
                raise self._refused(item)
        return {
            uid
            for uid, public, conf in zip(wanted, replies[::2], replies[1::2], strict=True)
            if public or conf
        }

    @staticmethod
    def _restored_destination_ops(destinations: Sequence[Destination]) -> list[Op]:
        ops: list[Op] = []
        for dest in destinations:
            if dest.rclone_conf is None or dest.restic_password is None:
                raise ValueError(f"destination {dest.id} has no secrets to write")
            key = DESTINATION.format(dest.id)
            ops += [
                Op("HSET", RCLONE_CONF, (dest.id, dest.rclone_conf)),
                Op("HSET", RESTIC_PASSWORD, (dest.id, dest.restic_password.reveal())),
                Op("DEL", key),
                _hset(key, dest.public()),
            ]
        return ops

    def import_destinations(self, destinations: Sequence[Destination]) -> None:
        """Add ``destinations`` (none of which exists) with their secrets and one
        ``backup-destination-changed`` event, in one transaction. A destination created
        meanwhile by another client raises :class:`Conflict` and nothing is written."""
        if not destinations:
            return
        ids = [d.id for d in destinations]
        ops = self._restored_destination_ops(destinations)
        ops.append(_publish_destinations(ids))
        watched = [DESTINATION.format(uid) for uid in ids] + [RCLONE_CONF]

        def guard(pipe: Any) -> None:
            with redis_errors(self.user):
                for uid in ids:
                    if pipe.exists(DESTINATION.format(uid)) or pipe.hexists(RCLONE_CONF, uid):
                        raise destination_exists_error(uid)

        self._execute(
            ops,
            watch=watched,
            guard=guard,
            conflict=lambda: NsbackupError(
                "destinations changed while the dump was imported; nothing was written, "
                "run the import again"
            ),
        )

    def restore_backups(
        self, destinations: Sequence[Destination], schedules: Mapping[int, Mapping[str, str]]
    ) -> int:
        """Write ``destinations`` (public hash including ``basepath``, rclone configuration,
        Restic password) and the ``schedules`` hashes as they are, replacing keys of the same
        ids; raise ``backup_sequence`` to the highest schedule id (never lower it); publish
        ``backup-destination-changed`` and ``backup-schedule-changed``. One transaction;
        return the sequence."""
        current = self._call(lambda: self.writer.get(SEQUENCE), self.user)
        sequence = max([_int(current), *schedules])
        ops = self._restored_destination_ops(destinations)
        for bid in sorted(schedules):
            key = SCHEDULE.format(bid)
            ops += [Op("DEL", key), _hset(key, schedules[bid])]
        if schedules and sequence != _int(current):
            ops.append(Op("SET", SEQUENCE, (str(sequence),)))
        if destinations:
            ops.append(_publish_destinations([d.id for d in destinations]))
        if schedules:
            ops.append(_publish_schedules(sorted(schedules)))
        if not ops:
            return _int(current)

        def guard(pipe: Any) -> None:
            with redis_errors(self.user):
                if pipe.get(SEQUENCE) != current:
                    raise NsbackupError("backup_sequence changed during the restore")

        self._execute(
            ops,
            watch=(SEQUENCE,),
            guard=guard,
            conflict=lambda: NsbackupError(
                "schedules changed while the dump was restored; nothing was written, "
                "run the restore again"
            ),
        )
        return sequence

    # -- runs -----------------------------------------------------------------------------
    def module_backup_inputs(self, bid: int, module_id: str) -> ModuleInputs:
        """What the module side of a backup reads, in one round trip (as the module)."""
        pipe = self.reader.pipeline(transaction=False)
        pipe.hgetall(SCHEDULE.format(bid))
        pipe.hget(MODULE_UUID, module_id)
        pipe.get(CLUSTER_UUID)
        pipe.dump(MODULE_UI_NAME.format(module_id))
        pipe.dump(MODULE_UI_NOTE.format(module_id))
        raw, uuid, cluster_uuid, ui_name, ui_note = self._run(pipe)
        for item in (raw, uuid):
            if isinstance(item, Exception):
                raise self._refused(item)
        if not raw:
            raise NotFound(
                [FieldError("id", "id", bid, "backup_not_found", f"backup {bid} not found")]
            )
        schedule = schedule_from_hash(bid, raw)
        password = self._call(lambda: self.reader.hget(RESTIC_PASSWORD, schedule.repository))
        return ModuleInputs(
            schedule=schedule,
            module_uuid=_str(uuid),
            cluster_uuid=_str(cluster_uuid),
            restic_password=Secret(password) if isinstance(password, str) and password else None,
            dumps={
                name: value
                for name, value in (("ui_name", ui_name), ("ui_note", ui_note))
                if isinstance(value, bytes)
            },
        )

    def restic_password(self, destination: str) -> Secret | None:
        password = self._call(lambda: self.reader.hget(RESTIC_PASSWORD, destination))
        return Secret(password) if isinstance(password, str) and password else None

    def write_module_status(
        self, node_id: str, bid: int, module_id: str, status: Mapping[str, Any]
    ) -> None:
        """NS8's status of one module's run (ref §1.2, §5.3 step 6) and its event, on the
        leader, in one transaction."""
        event = {
            "node_id": int(node_id) if node_id.isdigit() else node_id,
            "backup_id": bid,
            "module_id": module_id,
        }
        self._execute(
            [
                Op("HSET", STATUS.format(node_id, bid), (module_id, json.dumps(dict(status)))),
                Op("PUBLISH", EVENT_STATUS_CHANGED.format(node_id), (json.dumps(event),)),
            ]
        )

    def module_statuses(self, node_id: str, bid: int) -> dict[str, Any]:
        raw = self._call(lambda: self.reader.hgetall(STATUS.format(node_id, bid)))
        return {mid: _json(value) for mid, value in _dict(raw).items()}

    # -- restore grants -------------------------------------------------------------------
    def restore_grants(self) -> dict[str, str]:
        """``private/nodes/restore_uuid``: new module UUID → source module UUID."""
        grants = self._call(lambda: self.reader.hgetall(RESTORE_UUID))
        return _dict(grants)

    def restore_grant(self, module_uuid: str) -> str | None:
        """The source module UUID ``module_uuid`` may read now, read from the leader (a replica
        may not have the grant just written yet)."""
        value = self._call(lambda: self.writer.hget(RESTORE_UUID, module_uuid))
        if isinstance(value, bytes):
            value = value.decode()
        return value or None

    def write_restore_grant(
        self, module_uuid: str, source_uuid: str, *, dry_run: bool = False
    ) -> None:
        """Let the module ``module_uuid`` read ``source_uuid``'s repository; the gateways
        reload on the destination event."""
        self._write(
            [
                Op("HSET", RESTORE_UUID, (module_uuid, source_uuid)),
                _publish_destinations([]),
            ],
            dry_run,
        )

    def remove_restore_grant(self, module_uuid: str, *, dry_run: bool = False) -> None:
        self._write([Op("HDEL", RESTORE_UUID, (module_uuid,)), _publish_destinations([])], dry_run)

    def relink_schedules(self, state: ClusterState, module_id: str, module_uuid: str) -> list[int]:
        """After a module is restored: every schedule whose ``uinstances`` holds its UUID gets
        the module back in ``instances`` (ref §8.3); one transaction and event."""
        changed: list[Schedule] = []
        for schedule in state.schedules.values():
            if module_uuid not in schedule.uinstances:
                continue
            instances = schedule.instances
            if module_id not in instances:
                instances = (*instances, module_id)
            uinstances = tuple(u for u in schedule.uinstances if u != module_uuid)
            changed.append(attrs.evolve(schedule, instances=instances, uinstances=uinstances))
        if not changed:
            return []
        ops: list[Op] = []
        for schedule in changed:
            key = SCHEDULE.format(schedule.id)
            ops += [Op("DEL", key), _hset(key, schedule_to_hash(schedule))]
        ids = sorted(s.id for s in changed)
        ops.append(_publish_schedules(ids))
        self._execute(ops)
        return ids


@attrs.frozen
class ModuleInputs:
    schedule: Schedule
    module_uuid: str
    cluster_uuid: str
    restic_password: Secret | None = attrs.field(repr=False)
    dumps: Mapping[str, bytes] = attrs.field(factory=dict, repr=False)
    """Redis ``DUMP`` payloads of ``module/<id>/ui_name`` and ``ui_note`` (ref §4.2 step 5)."""


def destination_exists_error(uid: str) -> Conflict:
    return Conflict(
        [FieldError("", "", "", "backup_repository_exists", f"destination {uid} exists already")]
    )


# -- formats ----------------------------------------------------------------------------------


def schedule_from_hash(bid: int, raw: Mapping[str, str]) -> Schedule:
    try:
        hint = json.loads(raw.get("schedule_hint") or "{}")
    except json.JSONDecodeError:
        hint = {}
    return Schedule(
        id=bid,
        name=raw.get("name", ""),
        repository=raw.get("repository", ""),
        schedule=raw.get("schedule", ""),
        retention=_int(raw.get("retention"), default=3),
        enabled=raw.get("enabled", "") == "1",
        instances=tuple(raw.get("instances", "").split()),
        uinstances=tuple(raw.get("uinstances", "").split()),
        schedule_hint=hint if isinstance(hint, dict) else {},
    )


def schedule_to_hash(schedule: Schedule) -> dict[str, str]:
    data = {
        "name": schedule.name,
        "repository": schedule.repository,
        "schedule": schedule.schedule,
        "schedule_hint": json.dumps(dict(schedule.schedule_hint)),
        "retention": str(schedule.retention),
        "enabled": "1" if schedule.enabled else "",
        "instances": " ".join(schedule.instances),
    }
    if schedule.uinstances:
        data["uinstances"] = " ".join(schedule.uinstances)
    return data


def _publish_destinations(ids: Sequence[str]) -> Op:
    return Op("PUBLISH", EVENT_DESTINATION_CHANGED, (json.dumps({"destination_ids": list(ids)}),))


def _publish_schedules(ids: Sequence[int]) -> Op:
    payload = json.dumps({"backup_ids": [str(i) for i in ids]})
    return Op("PUBLISH", EVENT_SCHEDULE_CHANGED, (payload,))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, str]:
    return value if isinstance(value, dict) else {}


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return None


def _node_key(node: str) -> tuple[int, str]:
    return (int(node), node) if node.isdigit() else (1 << 30, node)
