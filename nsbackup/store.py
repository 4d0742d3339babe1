"""The NS8 Redis key layout: one pipelined snapshot read, transactional writes with events.

This module is the only one that knows key names (SPEC §1, ref §1). Reads that belong together
are one pipeline (two round trips for a whole :class:`ClusterState`, whatever the number of
modules, destinations or schedules); writes that belong together are one ``MULTI`` with the
event they publish. Reads may come from a local replica while writes go to the leader.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis

from nsbackup.errors import Conflict, NotFound, Unreachable
from nsbackup.model import (
    ClusterState,
    Destination,
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
    """A client for ``url``; credentials from the URL, else the arguments, else
    ``REDIS_USER``/``REDIS_PASSWORD``."""
    client: redis.Redis = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        **_credentials(url, username, password),
    )
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


@contextmanager
def redis_errors() -> Iterator[None]:
    """Map Redis failures to nsbackup errors (exit 5)."""
    try:
        yield
    except redis.exceptions.NoPermissionError as exc:
        raise Unreachable(f"Redis permission denied: {_first_line(exc)}") from None
    except redis.AuthenticationError as exc:
        raise Unreachable(f"Redis authentication failed: {_first_line(exc)}") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unreachable(f"Redis unreachable: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class Store:
    """Reads from ``reader`` (e.g. the local replica), writes to ``writer`` (the leader)."""

    def __init__(self, reader: redis.Redis, writer: redis.Redis | None = None) -> None:
        # redis-py's annotations are loose (bytes | str everywhere): hold the clients as Any.
        self.reader: Any = reader
        self.writer: Any = writer if writer is not None else reader
        self.round_trips = 0

    # -- helpers --------------------------------------------------------------------------
    def _run(self, pipe: Any) -> list[Any]:
        self.round_trips += 1
        with redis_errors():
            result: list[Any] = pipe.execute(raise_on_error=False)
        return result

    def _call(self, func: Callable[[], T]) -> T:
        self.round_trips += 1
        with redis_errors():
            return func()

    # -- the snapshot ---------------------------------------------------------------------
    def load(self, *, statuses: bool = False) -> ClusterState:
        """Everything in two pipelined round trips. Secrets are left out (``None``) unless the
        reader may see ``private/nodes/*``; a reader that may see no private key at all finds
        the destinations with SCAN."""
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
            raise Unreachable(f"Redis refused the read: {_first_line(fatal[0])}")
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
        for mid in module_ids:
            pipe.hget(MODULE_ENV.format(mid), "IMAGE_URL")
            pipe.get(MODULE_UI_NAME.format(mid))
            pipe.smembers(MODULE_FLAGS.format(mid))
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
        modules: dict[str, Module] = {}
        for mid in module_ids:
            image_url, ui_name, flags = next(results), next(results), next(results)
            uuid = module_uuid.get(mid, "")
            modules[mid] = Module(
                id=mid,
                uuid=uuid,
                node=module_node[mid],
                ui_name=_str(ui_name),
                image_url=_str(image_url),
                flags=frozenset(flags) if isinstance(flags, set) else frozenset(),
            )
        status_map: dict[tuple[str, int], Mapping[str, Any]] = {}
        if statuses:
            for node in node_ids:
                for bid in schedule_ids:
                    raw = _dict(next(results))
                    if raw:
                        status_map[(node, bid)] = {m: _json(v) for m, v in raw.items()}
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
                raise Unreachable(f"Redis refused the read: {_first_line(item)}")
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
        exists_public, exists_conf = self._run(pipe)
        return bool(exists_public) or exists_conf is True

    def add_destination(self, prepared: PreparedDestination, password: str) -> None:
        """Write a new destination and publish its event, in one transaction.

        Raise :class:`Conflict` (``backup_repository_exists``) when it exists already, also
        when another client adds it concurrently (the keys are WATCHed).
        """
        key = DESTINATION.format(prepared.id)
        with redis_errors(), self.writer.pipeline(transaction=True) as pipe:
            self.round_trips += 1
            pipe.watch(key, RCLONE_CONF)
            if pipe.exists(key) or pipe.hexists(RCLONE_CONF, prepared.id):
                raise Conflict("backup_repository_exists")
            pipe.multi()
            pipe.hset(RCLONE_CONF, prepared.id, prepared.rclone_conf)
            pipe.hset(RESTIC_PASSWORD, prepared.id, password)
            pipe.delete(key)
            pipe.hset(key, mapping=prepared.public())
            pipe.publish(EVENT_DESTINATION_CHANGED, _event_destinations([prepared.id]))
            try:
                pipe.execute()
            except redis.WatchError:
                raise Conflict("backup_repository_exists") from None

    def alter_destination(self, prepared: PreparedDestination) -> None:
        key = DESTINATION.format(prepared.id)
        pipe = self.writer.pipeline(transaction=True)
        pipe.hset(RCLONE_CONF, prepared.id, prepared.rclone_conf)
        pipe.delete(key)
        pipe.hset(key, mapping=prepared.public())
        pipe.publish(EVENT_DESTINATION_CHANGED, _event_destinations([prepared.id]))
        _raise_first(self._run(pipe))

    def remove_destination(
        self, uid: str, schedule_ids: Sequence[int], node_ids: Iterable[str]
    ) -> None:
        """Remove a destination, its secrets, the schedules that use it and their status keys;
        publish the schedule event (prom files are purged on it) and the destination event."""
        nodes = list(node_ids)
        pipe = self.writer.pipeline(transaction=True)
        pipe.delete(DESTINATION.format(uid))
        pipe.hdel(RCLONE_CONF, uid)
        pipe.hdel(RESTIC_PASSWORD, uid)
        for bid in schedule_ids:
            pipe.delete(SCHEDULE.format(bid))
            for node in nodes:
                pipe.delete(STATUS.format(node, bid))
        if schedule_ids:
            pipe.publish(EVENT_SCHEDULE_CHANGED, _event_schedules(schedule_ids))
        pipe.publish(EVENT_DESTINATION_CHANGED, _event_destinations([uid]))
        _raise_first(self._run(pipe))

    # -- schedules ------------------------------------------------------------------------
    def next_schedule_id(self) -> int:
        return int(self._call(lambda: self.writer.incr(SEQUENCE)))

    def write_schedule(self, schedule: Schedule) -> None:
        key = SCHEDULE.format(schedule.id)
        pipe = self.writer.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=schedule_to_hash(schedule))
        pipe.publish(EVENT_SCHEDULE_CHANGED, _event_schedules([schedule.id]))
        _raise_first(self._run(pipe))

    def remove_schedule(self, bid: int, node_ids: Iterable[str]) -> None:
        pipe = self.writer.pipeline(transaction=True)
        pipe.delete(SCHEDULE.format(bid))
        for node in node_ids:
            pipe.delete(STATUS.format(node, bid))
        pipe.publish(EVENT_SCHEDULE_CHANGED, _event_schedules([bid]))
        _raise_first(self._run(pipe))

    def read_schedule(self, bid: int) -> Schedule:
        raw = self._call(lambda: self.reader.hgetall(SCHEDULE.format(bid)))
        if not raw:
            raise NotFound(f"backup {bid} not found")
        return schedule_from_hash(bid, raw)


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


def _event_destinations(ids: Sequence[str]) -> str:
    return json.dumps({"destination_ids": list(ids)})


def _event_schedules(ids: Sequence[int]) -> str:
    return json.dumps({"backup_ids": [str(i) for i in ids]})


def _raise_first(results: Sequence[Any]) -> None:
    for item in results:
        if isinstance(item, Exception):
            with redis_errors():
                raise item


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
