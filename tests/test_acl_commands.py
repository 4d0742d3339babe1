"""What a module or node Redis user may run (issue 8, items 2 and 3), against a real redis-server.

NS8's ``+@read +@write ... -@admin`` let any module or node ``FLUSHALL``, ``SWAPDB 0 9``
(every gateway then answers 401), ``SELECT`` another database, load or flush functions, and
learn key names it cannot read (``RANDOMKEY``, ``CLIENT TRACKING ... BCAST PREFIX private/``).
:mod:`nsbackup.acl` now allows a list of commands; here:

- every command and subcommand the server knows is checked with ``ACL DRYRUN`` against the
  committed table in tests/acl_command_table.py (an unknown command fails until someone decides);
- the destructive and name-leaking commands are really run as each role: each is refused
  (``NOPERM``) and a ``DUMP`` of every key in every database is byte-identical afterwards;
- an NS8-like agent workload works as each role, and a replica syncs with node credentials.

The users are loaded from their ``cluster/acls`` lines, word for word, as NS8's ``acl-load``
does on every node.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from nsbackup import acl
from nsbackup.store import (
    ACLS,
    EVENT_ACL_CHANGED,
    EVENT_DESTINATION_CHANGED,
    RCLONE_CONF,
    RESTIC_PASSWORD,
    RESTORE_UUID,
    Store,
)
from tests.acl_command_table import COMMANDS
from tests.cluster_seed import PASSWORDS, seed
from tests.redis_server import RedisServer
from tests.resp_client import RespConnection, RespError

MODULE = "module/mail1"
NODE = "node/1"
ROLES = (MODULE, NODE)
OWN = {MODULE: "module/mail1", NODE: "node/1"}  # a prefix each user may write
DEST = "6f1ac1a6-94b1-5a3e-a6c9-0a4dc43e7c0f"
LIBRARY = (
    "#!lua name=nsbackup_test\nredis.register_function('nsbackup_fn', function() return 1 end)"
)
EVIL_LIBRARY = "#!lua name=evil\nredis.register_function('evil', function() return 1 end)"
Arg = str | bytes | int


# -- fixtures and helpers ---------------------------------------------------------------------


def load_users_like_ns8(admin: redis.Redis, users: tuple[str, ...] = ROLES) -> None:
    """``ACL DELUSER`` + ``ACL SETUSER`` with each user's ``cluster/acls`` line, as NS8's
    ``acl-load`` does: the stored line itself must load."""
    lines = {line.split()[1]: line for line in admin.smembers(ACLS)}
    for user in users:
        admin.execute_command("ACL", "DELUSER", user)
        admin.execute_command("ACL", "SETUSER", *lines[user].split()[1:])


@pytest.fixture()
def cluster(redis_db: RedisServer) -> Iterator[redis.Redis]:
    """A seeded cluster with secrets, keys of every type in the users' own prefixes, a marker in
    database 9 and a function library (FLUSHALL leaves functions: they are removed after)."""
    admin = redis_db.client()
    seed(admin)
    load_users_like_ns8(admin)
    pipe = admin.pipeline(transaction=True)
    pipe.hset(f"cluster/backup_repository/{DEST}", mapping={"provider": "backblaze", "name": "B2"})
    pipe.hset(RCLONE_CONF, DEST, f"[{DEST}]\ntype = b2\nkey = rclone-secret")
    pipe.hset(RESTIC_PASSWORD, DEST, "restic-secret")
    pipe.hset(RESTORE_UUID, "new-uuid", "old-uuid")
    for own in OWN.values():
        pipe.set(f"{own}/string", "value")
        pipe.rpush(f"{own}/list", "b", "a", "c")
        pipe.hset(f"{own}/hash", mapping={"f": "v"})
        pipe.sadd(f"{own}/set", "x", "y")
        pipe.zadd(f"{own}/zset", {"m": 1.0})
        pipe.pfadd(f"{own}/hll", "a")
        pipe.set(f"{own}/expiring", "v", ex=3600)
    pipe.execute()
    admin.execute_command("FUNCTION", "LOAD", LIBRARY)
    with redis.Redis(
        host=redis_db.host,
        port=redis_db.port,
        db=9,
        username="cluster",
        password=redis_db.admin_password,
    ) as db9:
        db9.set("db9/marker", "kept")
    yield admin
    admin.execute_command("FUNCTION", "FLUSH")
    admin.execute_command("ACL", "LOG", "RESET")
    admin.close()


def connect(server: RedisServer, user: str, protocol: int = 2) -> RespConnection:
    """A raw connection authenticated as ``user`` (RESP3 when ``protocol`` is 3)."""
    conn = RespConnection(server.host, server.port)
    password = server.admin_password if user == "cluster" else PASSWORDS[user]
    if protocol == 3:
        reply = conn.call("HELLO", 3, "AUTH", user, password)
        assert isinstance(reply, dict) and reply[b"proto"] == 3, reply
    else:
        assert conn.call("AUTH", user, password) == "OK"
    return conn


def snapshot(server: RedisServer) -> dict[str, Any]:
    """As ``cluster``: ``DUMP`` of every key in every database and whether it expires, the
    function library, the users and the configuration."""
    with connect(server, "cluster") as conn:
        config = conn.call("CONFIG", "GET", "databases")
        assert isinstance(config, list)
        keys: dict[tuple[int, bytes], tuple[object, bool]] = {}
        for db in range(int(config[1])):
            assert conn.call("SELECT", db) == "OK"
            cursor = b"0"
            while True:
                reply = conn.call("SCAN", cursor, "COUNT", 1000)
                assert isinstance(reply, list)
                cursor, batch = reply
                for key in batch:
                    pttl = conn.call("PTTL", key)
                    keys[(db, key)] = (conn.call("DUMP", key), isinstance(pttl, int) and pttl > 0)
                if cursor == b"0":
                    break
        return {
            "keys": keys,
            "functions": conn.call("FUNCTION", "DUMP"),
            "users": conn.call("ACL", "LIST"),
            "config": conn.call("CONFIG", "GET", "*"),
        }


def is_noperm(reply: object, command: str | None = None) -> bool:
    """``reply`` is an ACL refusal (of ``command`` itself, when given)."""
    if not (isinstance(reply, RespError) and reply.startswith("NOPERM")):
        return False
    return command is None or f"to run the '{command}' command" in reply


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- the rules themselves ---------------------------------------------------------------------


def test_key_and_channel_patterns_are_ns8s() -> None:
    """Only the commands changed: keys and channels are NS8's own patterns (ref §1.3)."""

    def patterns(rules: list[str]) -> list[str]:
        return [rule for rule in rules if rule[0] in "~%&"]

    assert patterns(acl.module_rules("mail1")) == [
        "~module/mail1/*",
        "~task/module/mail1/*",
        "%R~cluster/*",
        "%R~node/*",
        "%R~module/*",
        "%R~private/agents/*",
        "&progress/module/mail1/*",
        "&module/mail1/event/*",
    ]
    assert patterns(acl.node_rules("1")) == [
        "~node/1/*",
        "~task/node/1/*",
        "%R~cluster/*",
        "%R~node/*",
        "%R~module/*",
        "%R~private/agents/*",
        "%R~private/nodes/*",
        "&progress/node/1/*",
        "&node/1/event/*",
        "&cluster/event/*",
    ]
    line = acl.acl_line("module/mail1", "a" * 64, acl.module_rules("mail1"))
    assert line.startswith(f"user module/mail1 on sanitize-payload #{'a' * 64} ~module/mail1/* ")


@pytest.mark.parametrize("rules", [acl.module_rules("mail1"), acl.node_rules("1")])
def test_commands_are_an_allow_list(rules: list[str]) -> None:
    """Deny by default: ``-@all`` before any ``+``, and no ``+`` of a category (a category grows
    with each Redis release)."""
    commands = [rule for rule in rules if rule[0] in "+-"]
    assert commands[0] == "-@all"
    assert not [rule for rule in commands if rule.startswith("+@")]
    assert {"-@admin", "-@dangerous"} <= set(commands)
    # CLIENT is the one container allowed whole (minus its dangerous subcommands).
    containers = {name.split("|")[0] for name in COMMANDS if "|" in name}
    assert {rule[1:] for rule in commands if rule[0] == "+"} & containers == {"client"}
    assert "-client|tracking" in commands[commands.index("+client") :]


# Issue 8's class, decided independently of the table so that a careless edit of both the
# table and the rules still fails.
REFUSED_TO_BOTH = {
    # wipe, swap or move data; other databases
    "flushall", "flushdb", "swapdb", "select", "move", "copy", "migrate", "restore",
    "restore-asking", "function|flush", "function|load", "function|delete", "function|restore",
    "eval", "eval_ro", "evalsha", "evalsha_ro", "fcall", "fcall_ro", "script|load",
    "script|flush", "sort", "sort_ro",
    # key names, other clients' commands, channel names
    "randomkey", "keys", "client|tracking", "client|caching", "client|list", "monitor",
    "slowlog|get", "latency|latest", "pubsub|channels", "pubsub|numsub", "pubsub|numpat",
    "object|encoding", "memory|usage", "memory|stats", "info", "dbsize",
    # the server
    "debug", "config|set", "config|get", "acl|setuser", "acl|list", "acl|log", "client|kill",
    "client|pause", "client|no-evict", "wait", "failover", "replicaof", "slaveof", "shutdown",
    "save", "bgsave", "sync", "module|load", "pfdebug",
}  # fmt: skip
NODE_ONLY = {"scan", "subscribe", "psubscribe", "unsubscribe", "punsubscribe", "psync", "replconf"}
ALLOWED_TO_BOTH = {
    "dump",
    "auth", "hello", "ping", "echo", "quit", "reset", "client|setname", "client|id",
    "client|getname", "multi", "exec", "discard", "watch", "unwatch", "publish", "get", "set",
    "setex", "mget", "hget", "hgetall", "hset", "hdel", "hmset", "sadd", "srem", "smembers",
    "lpush", "rpush", "lrange", "brpop", "del", "exists", "type", "expire", "ttl", "persist",
    "incr", "rename",
}  # fmt: skip


def test_the_table_refuses_issue_8s_class() -> None:
    wrong = [
        name
        for name in sorted(REFUSED_TO_BOTH | NODE_ONLY | ALLOWED_TO_BOTH)
        if (COMMANDS[name].module, COMMANDS[name].node)
        != (
            (False, False)
            if name in REFUSED_TO_BOTH
            else (False, True)
            if name in NODE_ONLY
            else (True, True)
        )
    ]
    assert not wrong


# -- every command the server knows -----------------------------------------------------------


def server_commands(conn: RespConnection) -> dict[str, int]:
    """``{name: arity}`` of every command and subcommand (``container|sub``) the server knows;
    a container with subcommands stands for its subcommands only."""
    names = conn.call("COMMAND", "LIST")
    assert isinstance(names, list)
    infos = conn.call("COMMAND", "INFO", *names)
    assert isinstance(infos, list)
    known: dict[str, int] = {}
    for info in infos:
        name, arity = info[0].decode(), info[1]
        subcommands = info[9] if len(info) > 9 else []
        if subcommands:
            known.update((sub[0].decode(), sub[1]) for sub in subcommands)
        else:
            known[name] = arity
    return known


def dryrun_arguments(name: str, arity: int, user: str) -> list[str]:
    """The command name and enough arguments for its arity, each one a name in the user's own
    writable prefix that also matches its channel patterns literally (``.../event/*``), so
    that key and channel permissions pass and only the command permission is tested."""
    words = name.split("|")
    filler = f"{OWN[user]}/event/*"
    return words + [filler] * (abs(arity) - len(words))


def redis_version(conn: RespConnection) -> tuple[int, int, int]:
    info = conn.call("INFO", "server")
    assert isinstance(info, bytes)
    found = re.search(rb"redis_version:(\d+)\.(\d+)\.(\d+)", info)
    assert found is not None
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def test_every_command_matches_the_committed_table(
    cluster: redis.Redis, redis_db: RedisServer
) -> None:
    with connect(redis_db, "cluster") as conn:
        version = redis_version(conn)
        known = server_commands(conn)
        asked = [(name, user) for name in sorted(known) for user in ROLES]
        for name, user in asked:  # one pipelined round trip
            conn.send("ACL", "DRYRUN", user, *dryrun_arguments(name, known[name], user))
        answers = {key: conn.read() for key in asked}
    shown = ".".join(map(str, version))
    problems: list[str] = []
    for name in sorted(known):
        decision = COMMANDS.get(name)
        if decision is None:
            problems.append(
                f"{name}: Redis {shown} knows this command and tests/acl_command_table.py does "
                "not. Decide whether modules and nodes may run it (docs/security.md, 'Redis'), "
                "add its line, and allow it in nsbackup/acl.py only if they may."
            )
            continue
        for user, expected in ((MODULE, decision.module), (NODE, decision.node)):
            answer = answers[(name, user)]
            text = answer.decode() if isinstance(answer, bytes) else str(answer)
            if text == "OK":
                allowed = True
            elif re.search(rf"no permissions to run the '{re.escape(name)}' command", text, re.I):
                allowed = False
            else:
                problems.append(f"{name} as {user}: ACL DRYRUN answered {text!r}")
                continue
            if allowed != expected:
                problems.append(
                    f"{name} as {user}: the table says {'allow' if expected else 'refuse'}, "
                    f"the rules of nsbackup/acl.py {'allow' if allowed else 'refuse'} it"
                )
    for name, decision in sorted(COMMANDS.items()):
        if name not in known and (decision.since is None or decision.since <= version):
            problems.append(
                f"{name}: in tests/acl_command_table.py but unknown to Redis {shown}; remove "
                "it or give the Redis version that added it"
            )
    assert not problems, "\n".join(problems)
    # the counts docs/security.md quotes
    assert sum(d.module for d in COMMANDS.values() if d.since is None) == 188
    assert sum(d.node for d in COMMANDS.values() if d.since is None) == 195


# -- the destructive and name-leaking commands, really run ------------------------------------


def hostile_commands(
    user: str, server: RedisServer, payloads: dict[str, bytes]
) -> list[tuple[Arg, ...]]:
    own = OWN[user]
    key, lst = f"{own}/string", f"{own}/list"
    return [
        ("FLUSHALL",),
        ("FLUSHALL", "ASYNC"),
        ("FLUSHDB",),
        ("FLUSHDB", "SYNC"),
        ("SWAPDB", 0, 9),
        ("SWAPDB", 9, 0),
        ("SELECT", 9),
        ("MOVE", key, 9),
        ("COPY", key, f"{own}/copy", "DB", 9),
        ("COPY", key, f"{own}/copy"),
        ("MIGRATE", server.host, server.port, key, 9, 1000, "COPY"),
        ("RESTORE", f"{own}/restored", 0, payloads["dump"]),
        ("RESTORE", key, 0, payloads["dump"], "REPLACE"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "FLUSH", "ASYNC"),
        ("FUNCTION", "DELETE", "nsbackup_test"),
        ("FUNCTION", "LOAD", EVIL_LIBRARY),
        ("FUNCTION", "LOAD", "REPLACE", LIBRARY.replace("return 1", "return 2")),
        ("FUNCTION", "RESTORE", payloads["functions"], "FLUSH"),
        ("FCALL", "nsbackup_fn", 0),
        ("EVAL", "return redis.call('FLUSHALL')", 0),
        ("EVAL_RO", "return redis.call('RANDOMKEY')", 0),
        ("SCRIPT", "LOAD", "return 1"),
        ("SCRIPT", "FLUSH"),
        ("RANDOMKEY",),
        ("KEYS", "*"),
        ("KEYS", "private/*"),
        ("DBSIZE",),
        ("SORT", lst, "BY", "private/*"),
        ("SORT", lst, "BY", "nosort", "GET", "private/nodes/*"),
        ("SORT", lst, "ALPHA", "STORE", f"{own}/sorted"),
        ("SORT_RO", lst, "BY", "private/*", "ALPHA"),
        ("OBJECT", "ENCODING", key),
        ("MEMORY", "USAGE", key),
        ("MEMORY", "STATS"),
        ("MEMORY", "PURGE"),
        ("CONFIG", "SET", "notify-keyspace-events", "KEA"),
        ("CONFIG", "GET", "*"),
        ("CONFIG", "RESETSTAT"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", user, "+@all", "~*"),
        ("ACL", "DELUSER", "cluster"),
        ("ACL", "LOG"),
        ("CLIENT", "LIST"),
        ("CLIENT", "KILL", "USER", "cluster"),
        ("CLIENT", "PAUSE", 1),
        ("CLIENT", "NO-EVICT", "ON"),
        ("CLIENT", "TRACKING", "ON"),
        ("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "private/"),
        ("CLIENT", "CACHING", "YES"),
        ("MONITOR",),
        ("SLOWLOG", "GET"),
        ("SLOWLOG", "RESET"),
        ("LATENCY", "LATEST"),
        ("INFO",),
        ("INFO", "keyspace"),
        ("ROLE",),
        ("LASTSAVE",),
        ("PUBSUB", "CHANNELS"),
        ("PUBSUB", "NUMSUB", EVENT_ACL_CHANGED),
        ("WAIT", 0, 0),
        ("REPLICAOF", "NO", "ONE"),
        ("FAILOVER", "ABORT"),
        ("SAVE",),
        ("BGSAVE",),
        ("PFDEBUG", "GETREG", f"{own}/hll"),
        ("SUBSCRIBE", "__redis__:invalidate"),  # nodes may SUBSCRIBE, not to this channel
        ("PSUBSCRIBE", "*"),
    ]


def refused_name(user: str, command: tuple[Arg, ...]) -> str | None:
    """The command name the refusal must give (``None``: a refused channel, not command)."""
    name = str(command[0]).lower()
    if user == NODE and name in ("subscribe", "psubscribe"):
        return None  # nodes may subscribe, only on their channels
    full = f"{name}|{str(command[1]).lower()}" if len(command) > 1 else name
    return full if full in COMMANDS else name


@pytest.mark.parametrize("user", ROLES)
def test_destructive_and_leaking_commands_are_refused_and_change_nothing(
    cluster: redis.Redis, redis_db: RedisServer, user: str
) -> None:
    before = snapshot(redis_db)
    payloads = {
        "dump": before["keys"][(0, f"{OWN[user]}/hash".encode())][0],
        "functions": before["functions"],
    }
    assert isinstance(payloads["dump"], bytes) and isinstance(payloads["functions"], bytes)
    allowed = []
    commands = hostile_commands(user, redis_db, payloads)
    for command in commands:
        with connect(redis_db, user) as conn:  # a fresh connection each: no state carries over
            reply = conn.call(*command)
            if not is_noperm(reply, refused_name(user, command)):
                allowed.append(f"{command[:3]!r} -> {reply!r}"[:200])
    assert not allowed, f"{user} was not refused:\n" + "\n".join(allowed)
    after = snapshot(redis_db)
    assert after["keys"] == before["keys"]
    assert after["functions"] == before["functions"]
    assert after["users"] == before["users"]
    assert after["config"] == before["config"]
    assert (9, b"db9/marker") in after["keys"]
    assert len(commands) > 60


@pytest.mark.parametrize("user", ROLES)
def test_select_then_write_stays_in_database_0(
    cluster: redis.Redis, redis_db: RedisServer, user: str
) -> None:
    with connect(redis_db, user) as conn:
        assert is_noperm(conn.call("SELECT", 9))
        assert conn.call("SET", f"{OWN[user]}/after-select", "v") == "OK"
        queued = conn.call("MULTI"), conn.call("SELECT", 9), conn.call("FLUSHDB")
        assert queued[0] == "OK" and is_noperm(queued[1]) and is_noperm(queued[2])
        assert str(conn.call("EXEC")).startswith("EXECABORT")
    assert cluster.get(f"{OWN[user]}/after-select") == "v"
    with connect(redis_db, "cluster") as admin:
        assert admin.call("SELECT", 9) == "OK"
        assert admin.call("KEYS", "*") == [b"db9/marker"]


def written_key_names(conn: RespConnection, admin: redis.Redis) -> list[object]:
    """Write under ``private/`` as ``cluster``, then collect whatever push messages reach
    ``conn`` before the reply to its next PING (Redis queues invalidations for a client before
    it answers the writer, so they would be there)."""
    admin.hset(RESTORE_UUID, "leak-probe", "x")
    admin.set("private/nodes/leak-probe", "x")
    reply, pushes = conn.call_collecting("PING")
    assert reply in ("PONG", b"PONG"), reply
    names: list[object] = []
    for push in pushes:
        if push and push[0] == b"invalidate" and isinstance(push[1], list):
            names += push[1]
    return names


@pytest.mark.parametrize("user", ROLES)
def test_client_tracking_cannot_stream_key_names(
    cluster: redis.Redis, redis_db: RedisServer, user: str
) -> None:
    # RESP3: invalidations arrive as push messages on the tracking connection itself.
    with connect(redis_db, user, protocol=3) as conn:
        for mode in (("BCAST", "PREFIX", "private/"), ("BCAST",), ()):
            assert is_noperm(conn.call("CLIENT", "TRACKING", "ON", *mode)), mode
        assert written_key_names(conn, cluster) == []
    # RESP2: invalidations are redirected to a connection subscribed to __redis__:invalidate.
    with connect(redis_db, user) as target, connect(redis_db, user) as conn:
        target_id = target.call("CLIENT", "ID")
        assert isinstance(target_id, int)
        reply = conn.call(
            "CLIENT", "TRACKING", "ON", "REDIRECT", target_id, "BCAST", "PREFIX", "private/"
        )
        assert is_noperm(reply)
        assert is_noperm(target.call("SUBSCRIBE", "__redis__:invalidate"))
    # The probe can fail: a user allowed to track (cluster) does learn the names.
    with connect(redis_db, "cluster", protocol=3) as conn:
        assert conn.call("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "private/") == "OK"
        assert b"private/nodes/leak-probe" in written_key_names(conn, cluster)


@pytest.mark.parametrize("user", ROLES)
def test_sort_by_and_get_patterns_are_refused(
    cluster: redis.Redis, redis_db: RedisServer, user: str
) -> None:
    """Redis 7 already refuses BY/GET patterns without full key access; SORT is refused
    outright so no later Redis or NS8 rule change can open it."""
    with connect(redis_db, user) as conn:
        for args in (("BY", "private/nodes/*"), ("BY", "nosort", "GET", "private/nodes/*")):
            reply = conn.call("SORT", f"{OWN[user]}/list", *args)
            assert is_noperm(reply, "sort"), reply


class _DebugEnabledRedis(RedisServer):
    """``DEBUG`` is refused before the ACL check unless enabled: enable it to see the ACL."""

    def _config(self) -> str:
        return super()._config() + "enable-debug-command yes\n"


def test_debug_is_refused_by_the_acl_itself() -> None:
    with _DebugEnabledRedis() as server:
        admin = server.client()
        seed(admin)
        load_users_like_ns8(admin)
        admin.set("node/1/string", "v")
        with connect(server, "cluster") as conn:
            assert conn.call("DEBUG", "SLEEP", 0) == "OK"  # reachable: the refusal is the ACL's
        for user in ROLES:
            with connect(server, user) as conn:
                for command in (
                    ("DEBUG", "SLEEP", 0),
                    ("DEBUG", "OBJECT", f"{OWN[user]}/string"),
                    ("DEBUG", "RELOAD"),
                    ("DEBUG", "CHANGE-REPL-ID"),
                ):
                    reply = conn.call(*command)
                    assert is_noperm(reply, "debug"), (user, reply)
        admin.close()


# -- what NS8 agents and nsbackup do keeps working --------------------------------------------


def agent_task(client: redis.Redis, admin: redis.Redis, agent: str) -> None:
    """One task the way NS8's Go agent runs it (core/agent/htask.go): BRPOP from the queue,
    the context with a TTL, progress on the task channel, then one MULTI with the final
    environment, output, error, exit code and a last progress message."""
    task = {"id": "7c4f", "action": "configure-module", "data": {"password": "x"}}
    admin.lpush(f"{agent}/tasks", json.dumps(task))
    popped = client.brpop([f"{agent}/tasks"], timeout=5)
    assert popped is not None and json.loads(popped[1])["id"] == "7c4f"
    context = f"task/{agent}/7c4f/context"
    progress = f"progress/{agent}/task/7c4f"
    assert client.set(context, popped[1], ex=60)
    client.publish(progress, json.dumps({"status": "running", "progress": 10}))
    assert client.expire(context, 120)
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(f"{agent}/environment")
        pipe.hset(f"{agent}/environment", mapping={"IMAGE_URL": "ghcr.io/x:1", "TCP_PORT": "2"})
        for name, value in (("output", "{}"), ("error", ""), ("exit_code", "0")):
            pipe.set(f"task/{agent}/7c4f/{name}", value, ex=86400)
        pipe.expire(context, 86400)
        pipe.publish(progress, json.dumps({"status": "completed", "progress": 100}))
        pipe.execute()
    assert admin.hget(f"{agent}/environment", "TCP_PORT") == "2"
    assert admin.get(f"task/{agent}/7c4f/exit_code") == "0"
    assert 0 < admin.ttl(f"task/{agent}/7c4f/output") <= 86400


def own_keys_workload(client: redis.Redis, own: str) -> None:
    """Strings, hashes, sets, lists, sorted sets, expiry, rename, DEL and an optimistic
    transaction (WATCH/MULTI/EXEC) on the user's own keys."""
    assert client.set(f"{own}/s", "1") and client.incr(f"{own}/s") == 2
    assert client.setnx(f"{own}/s", "x") is False
    assert client.getdel(f"{own}/s") == "2"
    client.hset(f"{own}/h", mapping={"a": "1", "b": "2"})
    client.hincrby(f"{own}/h", "a", 5)
    client.hdel(f"{own}/h", "b")
    assert client.hgetall(f"{own}/h") == {"a": "6"}
    client.sadd(f"{own}/flags", "x", "y")
    client.srem(f"{own}/flags", "y")
    assert client.smembers(f"{own}/flags") == {"x"}
    assert client.sismember(f"{own}/flags", "x")
    client.rpush(f"{own}/q", "1", "2", "3")
    assert client.lpop(f"{own}/q") == "1" and client.lrange(f"{own}/q", 0, -1) == ["2", "3"]
    client.zadd(f"{own}/z", {"a": 2, "b": 1})
    assert client.zrange(f"{own}/z", 0, -1) == ["b", "a"]
    client.set(f"{own}/tmp", "v", ex=100)
    assert 0 < client.ttl(f"{own}/tmp") <= 100
    assert client.persist(f"{own}/tmp") and client.ttl(f"{own}/tmp") == -1
    assert client.rename(f"{own}/tmp", f"{own}/tmp2")
    assert client.exists(f"{own}/tmp2") == 1 and client.type(f"{own}/tmp2") == "string"
    assert client.delete(f"{own}/tmp2", f"{own}/q", f"{own}/z") == 3
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(f"{own}/counter")
        current = int(pipe.get(f"{own}/counter") or 0)
        pipe.multi()
        pipe.set(f"{own}/counter", current + 1)
        pipe.execute()
    assert client.get(f"{own}/counter") == "1"


def session_workload(server: RedisServer, user: str) -> None:
    """What clients send around their commands, on raw connections: HELLO with AUTH and
    SETNAME, CLIENT ID/GETNAME/INFO, ECHO, PING, RESET, QUIT."""
    password = PASSWORDS[user]
    with RespConnection(server.host, server.port) as conn:
        hello = conn.call("HELLO", 3, "AUTH", user, password, "SETNAME", "agent")
        assert isinstance(hello, dict) and hello[b"proto"] == 3
        assert conn.call("CLIENT", "GETNAME") == b"agent"
        assert isinstance(conn.call("CLIENT", "ID"), int)
        info = conn.call("CLIENT", "INFO")
        assert isinstance(info, bytes) and f" user={user} ".encode() in info
        assert conn.call("ECHO", "hi") == b"hi" and conn.call("PING") == "PONG"
        assert conn.call("RESET") == "RESET"  # back to the default user, which is off
        assert str(conn.call("PING")).startswith("NOAUTH")
        assert conn.call("AUTH", user, password) == "OK"
        assert conn.call("QUIT") == "OK"


@pytest.mark.parametrize("protocol", [2, 3])
def test_module_agent_workload(cluster: redis.Redis, redis_db: RedisServer, protocol: int) -> None:
    module = redis.Redis(
        host=redis_db.host,
        port=redis_db.port,
        username=MODULE,
        password=PASSWORDS[MODULE],
        protocol=protocol,
        client_name=MODULE,  # CLIENT SETNAME on connect, like NS8's agent
        decode_responses=True,
        socket_timeout=10,
    )
    assert module.ping() and module.client_getname() == MODULE
    # reads: cluster/*, node/*, module/*, private/agents/*
    assert module.hget("cluster/module_node", "mail1") == "1"
    assert module.get("cluster/network") == "10.5.4.0/24"
    assert module.hget("node/1/vpn", "ip_address") == "10.5.4.1"
    assert module.hget("module/nextcloud3/environment", "IMAGE_URL")
    assert module.smembers("module/traefik1/flags") == {"no_data_backup"}
    assert module.hgetall(RESTIC_PASSWORD) == {DEST: "restic-secret"}
    agent_task(module, cluster, MODULE)
    own_keys_workload(module, OWN[MODULE])
    module.publish("module/mail1/event/backup-status-changed", "{}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        module.hgetall(RCLONE_CONF)
    state = Store(module).load()
    assert not state.privileged and list(state.destinations) == [DEST]
    session_workload(redis_db, MODULE)
    module.close()


def test_node_agent_and_gateway_workload(cluster: redis.Redis, redis_db: RedisServer) -> None:
    node = redis.Redis(
        host=redis_db.host,
        port=redis_db.port,
        username=NODE,
        password=PASSWORDS[NODE],
        client_name=NODE,
        decode_responses=True,
        socket_timeout=10,
    )
    assert node.hget(RCLONE_CONF, DEST) and node.hgetall(RESTORE_UUID)
    agent_task(node, cluster, NODE)
    own_keys_workload(node, OWN[NODE])
    node.hset("node/1/backup_status/1", "mail1", "{}")
    assert node.publish("node/1/event/backup-status-changed", "{}") == 0
    # SCAN stays for nodes (NS8 allows it; a node's replica holds every key anyway)
    found: list[str] = list(node.scan_iter(match="cluster/backup_repository/*"))
    assert found == [f"cluster/backup_repository/{DEST}"]
    state = Store(node).load()
    assert state.privileged and state.destinations[DEST].rclone_conf
    # the gateway follows cluster events: SUBSCRIBE and PSUBSCRIBE
    pubsub = node.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(EVENT_DESTINATION_CHANGED, EVENT_ACL_CHANGED)
    pubsub.psubscribe("cluster/event/*")
    wait_until(lambda: cluster.pubsub_numsub(EVENT_ACL_CHANGED)[0][1] == 1, "the subscription")
    assert cluster.publish(EVENT_ACL_CHANGED, "cluster/acls") == 2  # channel + pattern
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message is not None:
            seen.add(message["type"])
    assert seen == {"message", "pmessage"}
    assert node.publish(EVENT_DESTINATION_CHANGED, "{}") == 2  # nodes publish cluster events
    pubsub.close()
    session_workload(redis_db, NODE)
    node.close()


class _NodeReplica(RedisServer):
    """A replica that authenticates to its master as a node user, as NS8's replicas do."""

    def __init__(self, master: RedisServer, user: str, password: str) -> None:
        super().__init__(replica_of=master)
        self.master_user, self.master_password = user, password

    def _config(self) -> str:
        lines = super()._config().splitlines()
        lines = [
            f"masteruser {self.master_user}"
            if line.startswith("masteruser ")
            else f"masterauth {self.master_password}"
            if line.startswith("masterauth ")
            else line
            for line in lines
        ]
        return "\n".join(lines) + "\n"


def test_a_replica_syncs_with_node_credentials(cluster: redis.Redis, redis_db: RedisServer) -> None:
    # The master waits 5 s before a diskless full sync by default: not needed here.
    delay = cluster.config_get("repl-diskless-sync-delay")["repl-diskless-sync-delay"]
    cluster.config_set("repl-diskless-sync-delay", 0)
    try:
        with _NodeReplica(redis_db, NODE, PASSWORDS[NODE]) as replica:  # start() waits for sync
            replicas = [c for c in cluster.client_list() if "S" in c["flags"]]
            assert [c["user"] for c in replicas] == [NODE]
            reader = replica.client()
            assert reader.hget(RCLONE_CONF, DEST)  # the full sync brought everything
            cluster.set("cluster/after-sync", "1")
            wait_until(lambda: reader.get("cluster/after-sync") == "1", "the replication stream")
            reader.close()
    finally:
        cluster.config_set("repl-diskless-sync-delay", delay)
