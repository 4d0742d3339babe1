"""Redis ACL rules for the backup keys (ref §1.3), with NS8's holes closed.

Keys and channels are NS8's own patterns:

- Modules read ``cluster/*``, ``node/*``, ``module/*`` and ``private/agents/*`` and write their
  own ``module/<id>/*`` and ``task/module/<id>/*``; they never read ``private/nodes/*`` (rclone
  configurations with provider credentials, restore grants). ``private/agents/*`` (the Restic
  passwords) stays readable because NS8 modules run Restic themselves.
- Nodes read everything backup-related, write their own ``node/<id>/*`` and
  ``task/node/<id>/*``, and subscribe to cluster events (the gateway reloads on them).

Commands are an allow-list (``-@all`` first, then ``+`` each command), never Redis categories:
NS8 gives ``+@read +@write ... -@admin``, and in Redis 7 that still lets any module or node run
``FLUSHALL``, ``FLUSHDB``, ``SWAPDB``, ``SELECT``, ``MOVE``, ``COPY ... DB``, ``FUNCTION
FLUSH|LOAD|DELETE`` (wipe or swap the database: every gateway then answers 401 and every Restic
password is gone) and learn key names it cannot read (``RANDOMKEY``, ``CLIENT TRACKING ...
BCAST``), and a category quietly grows with each Redis release. A command is allowed only if

1. its every effect stays on the keys named in its arguments, so the key patterns decide
   (:data:`DATA_COMMANDS`), or
2. it concerns only the caller's own connection or transaction (:data:`SESSION_COMMANDS`,
   ``CLIENT`` without the subcommands in :data:`CLIENT_DENIED`), or
3. it is pub/sub on the user's own channels (``PUBLISH``; nodes also ``SUBSCRIBE``), or
4. NS8 needs it for a node: ``SCAN`` (node agents enumerate keys; a node replicates the whole
   database anyway, so key names are no secret from it), ``PSYNC`` and ``REPLCONF`` (NS8
   replicas connect with node credentials).

Every name is a Redis 7.0 command: the lines are loaded by every node's Redis, and ``ACL
SETUSER`` refuses a name the server does not know (so newer commands, such as 7.4's ``HEXPIRE``,
cannot be listed). ``CLIENT`` is the one container allowed as a whole, minus its dangerous
subcommands, because ``CLIENT SETINFO`` (Redis 7.2, sent by redis-py and go-redis on connect)
cannot be named; ``-@admin -@dangerous`` then strip whatever a later Redis adds to ``CLIENT``
in those categories. tests/test_acl_commands.py checks every command and subcommand of the
running server against a committed table. docs/security.md ("Redis") has the reasoning.
"""

from __future__ import annotations

import re

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Key-scoped data commands: each reads or writes only the keys in its arguments.
# Deliberately absent although key-scoped: COPY (its DB option writes another database), MOVE,
# SORT and SORT_RO (BY/GET read keys by pattern), RESTORE (crafted payloads), OBJECT, MEMORY
# (nothing needs them), PFDEBUG and PFSELFTEST (admin). DUMP is a read of a key the user may
# read anyway; a module backs up its ui_name/ui_note as DUMP payloads, as in NS8 (ref §4.2).
DATA_COMMANDS: tuple[str, ...] = (
    # keyspace
    "del", "unlink", "exists", "type", "touch", "rename", "renamenx",
    "ttl", "pttl", "expiretime", "pexpiretime",
    "expire", "pexpire", "expireat", "pexpireat", "persist",
    "dump",
    # strings
    "get", "mget", "getrange", "substr", "strlen", "lcs", "getdel", "getex", "getset",
    "set", "setnx", "setex", "psetex", "mset", "msetnx", "setrange", "append",
    "incr", "incrby", "incrbyfloat", "decr", "decrby",
    # hashes
    "hget", "hmget", "hgetall", "hkeys", "hvals", "hlen", "hexists", "hstrlen", "hrandfield",
    "hscan", "hset", "hsetnx", "hmset", "hdel", "hincrby", "hincrbyfloat",
    # lists
    "lrange", "lindex", "llen", "lpos", "lpush", "lpushx", "rpush", "rpushx", "linsert", "lset",
    "lrem", "ltrim", "lpop", "rpop", "lmpop", "lmove", "rpoplpush",
    "blpop", "brpop", "blmpop", "blmove", "brpoplpush",
    # sets
    "smembers", "sismember", "smismember", "scard", "srandmember", "sscan",
    "sinter", "sintercard", "sunion", "sdiff", "sinterstore", "sunionstore", "sdiffstore",
    "sadd", "srem", "spop", "smove",
    # sorted sets
    "zrange", "zrangebyscore", "zrangebylex", "zrevrange", "zrevrangebyscore",
    "zrevrangebylex", "zrangestore", "zscore", "zmscore", "zrank", "zrevrank", "zcard", "zcount",
    "zlexcount", "zrandmember", "zscan", "zinter", "zintercard", "zunion", "zdiff",
    "zinterstore", "zunionstore", "zdiffstore", "zadd", "zincrby", "zrem", "zremrangebyscore",
    "zremrangebylex", "zremrangebyrank", "zpopmin", "zpopmax", "zmpop",
    "bzpopmin", "bzpopmax", "bzmpop",
    # bitmaps, HyperLogLog, geo
    "getbit", "setbit", "bitcount", "bitpos", "bitop", "bitfield", "bitfield_ro",
    "pfadd", "pfcount", "pfmerge",
    "geoadd", "geopos", "geodist", "geohash", "geosearch", "geosearchstore",
    "georadius", "georadius_ro", "georadiusbymember", "georadiusbymember_ro",
    # streams
    "xadd", "xlen", "xrange", "xrevrange", "xread", "xreadgroup", "xdel", "xtrim", "xack",
    "xclaim", "xautoclaim", "xpending", "xsetid",
    "xgroup|create", "xgroup|createconsumer", "xgroup|delconsumer", "xgroup|destroy",
    "xgroup|setid", "xinfo|stream", "xinfo|groups", "xinfo|consumers",
)  # fmt: skip

# The caller's own connection and transaction.
SESSION_COMMANDS: tuple[str, ...] = (
    "auth", "hello", "ping", "echo", "quit", "reset",
    "multi", "exec", "discard", "watch", "unwatch",
)  # fmt: skip

# CLIENT subcommands that reach beyond the caller's connection (other clients, the server) or
# stream key names (tracking: BCAST PREFIX reports the names of keys as they are written).
CLIENT_DENIED: tuple[str, ...] = (
    "kill", "list", "pause", "unpause", "unblock", "no-evict",
    "tracking", "caching", "getredir", "trackinginfo",
)  # fmt: skip

# Pub/sub a node needs beyond PUBLISH (never PUBSUB: its CHANNELS and NUMSUB list other users'
# channels).
NODE_SUBSCRIBE: tuple[str, ...] = ("subscribe", "psubscribe", "unsubscribe", "punsubscribe")


def _check(kind: str, ident: str) -> None:
    if not _ID.fullmatch(ident):
        raise ValueError(f"invalid {kind} id {ident!r}")


def _commands(extra: tuple[str, ...]) -> list[str]:
    return [
        "-@all",
        *(f"+{name}" for name in (*DATA_COMMANDS, *SESSION_COMMANDS, *extra)),
        "+client",
        *(f"-client|{sub}" for sub in CLIENT_DENIED),
        "+publish",
        # Whatever a later Redis adds to CLIENT in these categories stays refused.
        "-@admin",
        "-@dangerous",
    ]


def node_rules(node_id: str) -> list[str]:
    """ACL rules (``ACL SETUSER`` arguments after the password) for user ``node/<id>``."""
    _check("node", node_id)
    return [
        f"~node/{node_id}/*",
        f"~task/node/{node_id}/*",
        "%R~cluster/*",
        "%R~node/*",
        "%R~module/*",
        "%R~private/agents/*",
        "%R~private/nodes/*",
        f"&progress/node/{node_id}/*",
        f"&node/{node_id}/event/*",
        "&cluster/event/*",
        *_commands(("scan", *NODE_SUBSCRIBE)),
        # NS8 replicas authenticate with node credentials (after -@dangerous on purpose).
        "+psync",
        "+replconf",
    ]


def module_rules(module_id: str) -> list[str]:
    """ACL rules for user ``module/<id>``."""
    _check("module", module_id)
    return [
        f"~module/{module_id}/*",
        f"~task/module/{module_id}/*",
        "%R~cluster/*",
        "%R~node/*",
        "%R~module/*",
        "%R~private/agents/*",
        f"&progress/module/{module_id}/*",
        f"&module/{module_id}/event/*",
        *_commands(()),
    ]


def acl_line(user: str, password_sha256: str, rules: list[str]) -> str:
    """A ``cluster/acls`` entry in ``ACL LIST`` format (what NS8 stores and the gateway reads)."""
    if not re.fullmatch(r"[0-9a-f]{64}", password_sha256):
        raise ValueError("password_sha256 must be 64 lower-case hex digits")
    return " ".join(["user", user, "on", "sanitize-payload", f"#{password_sha256}", *rules])
