"""The pieces the migration decides with: the ACL rule evaluator (checked against a real
redis-server: what ``ACL SETUSER`` applies, how ``ACL LIST`` prints it, what ``ACL DRYRUN``
allows) and the legacy-format helpers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nsbackup import acl
from nsbackup.dr import legacy
from nsbackup.dr.migrate import CommandTable, acl_entry, evaluate
from tests.ns8_acl import module_rules as ns8_module_rules
from tests.ns8_acl import node_rules as ns8_node_rules
from tests.redis_server import RedisServer

PROBE = "module/probe1"


@pytest.fixture(scope="module")
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.execute_command("ACL", "DELUSER", PROBE)
    client.close()


@pytest.fixture(scope="module")
def table(admin: redis.Redis) -> CommandTable:
    return CommandTable.from_reply(admin.execute_command("COMMAND"))


def arities(admin: redis.Redis) -> dict[str, tuple[int, bool]]:
    """``{leaf: (arity, no_auth)}`` for every command and subcommand a client runs."""
    found: dict[str, tuple[int, bool]] = {}
    for name, info in admin.execute_command("COMMAND").items():
        subs = info.get("subcommands") or []
        if not subs:
            found[name] = (info["arity"], "no_auth" in info["flags"])
        for sub in subs:
            found[sub[0]] = (sub[1], "no_auth" in sub[2])
    return found


def applied(admin: redis.Redis, rules: list[str]) -> list[str] | None:
    """The probe user's ``ACL LIST`` words after ``ACL SETUSER probe reset <rules>``, or
    ``None`` when Redis refuses the rules."""
    try:
        admin.execute_command("ACL", "SETUSER", PROBE, "reset", *rules)
    except redis.ResponseError:
        return None
    line = next(u for u in admin.acl_list() if u.split()[1] == PROBE)
    return line.split()[2:]


RULE_NAMES = [
    "@read", "@write", "@admin", "@dangerous", "@keyspace", "@hash", "@string", "@connection",
    "@pubsub", "@scripting", "@slow", "@fast", "@transaction", "client", "client|kill",
    "client|id", "config", "config|get", "object", "object|encoding", "xgroup", "xgroup|create",
    "get", "set", "keys", "scan", "flushall", "publish", "subscribe", "acl", "acl|whoami",
    "debug", "psync",
]  # fmt: skip
COMMAND_RULES = st.lists(
    st.one_of(
        st.sampled_from(["allcommands", "nocommands", "+@all", "-@all"]),
        st.tuples(st.sampled_from("+-"), st.sampled_from(RULE_NAMES)).map("".join),
    ),
    max_size=12,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rules=COMMAND_RULES)
def test_command_rules_evaluate_as_redis_applies_them(
    admin: redis.Redis, table: CommandTable, rules: list[str]
) -> None:
    words = applied(admin, ["on", "nopass", "allkeys", "allchannels", *rules])
    assume(words is not None)
    assert words is not None
    mine = evaluate(["on", "nopass", "allkeys", "allchannels", *rules], table)
    printed = evaluate(words, table)  # Redis' normalised form means the same
    assert printed.understood and mine.understood
    assert printed.same_rules(mine)
    # and both are what Redis enforces, command by command
    leaves = arities(admin)
    pipe = admin.pipeline(transaction=False)
    for leaf, (arity, _) in leaves.items():
        parts = leaf.split("|")
        pipe.execute_command("ACL", "DRYRUN", PROBE, *parts, *["k"] * (abs(arity) - len(parts)))
    checked = 0
    for (leaf, (_, no_auth)), answer in zip(
        leaves.items(), pipe.execute(raise_on_error=False), strict=True
    ):
        if isinstance(answer, Exception) or no_auth:
            continue  # arity quirks; AUTH and HELLO are allowed to everybody
        assert (answer == "OK") == (leaf in mine.commands), (leaf, answer, rules)
        checked += 1
    assert checked > 300


KEY_WORDS = [
    "~a/*", "%R~b/*", "%W~c/*", "%RW~d/*", "resetkeys", "allkeys", "~*",
    "&ch/*", "&other", "resetchannels", "allchannels",
    "on", "off", ">pw1", ">pw2", f"#{hashlib.sha256(b'pw3').hexdigest()}", "nopass", "resetpass",
]  # fmt: skip
KEY_RULES = st.lists(st.sampled_from(KEY_WORDS), max_size=10)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rules=KEY_RULES)
def test_keys_channels_and_passwords_evaluate_as_redis_applies_them(
    admin: redis.Redis, table: CommandTable, rules: list[str]
) -> None:
    words = applied(admin, rules)
    assume(words is not None)
    assert words is not None
    mine, printed = evaluate(rules, table), evaluate(words, table)
    assert (mine.keys, mine.channels, mine.enabled, mine.nopass) == (
        printed.keys,
        printed.channels,
        printed.enabled,
        printed.nopass,
    )
    assert set(mine.hashes) == set(printed.hashes)
    got = admin.acl_getuser(PROBE)
    assert set(mine.hashes) == set(got["passwords"])


def test_ns8_rules_differ_and_nsbackups_match_wherever_they_are_written(
    admin: redis.Redis, table: CommandTable
) -> None:
    for user, ours, ns8 in (
        ("node/7", acl.node_rules("7"), ns8_node_rules("7")),
        ("module/web3", acl.module_rules("web3"), ns8_module_rules("web3")),
    ):
        desired = evaluate(ours, table)
        assert not evaluate(ns8, table).same_rules(desired)
        assert "flushall" not in desired.commands and "get" in desired.commands
        digest = hashlib.sha256(b"secret").hexdigest()
        live = evaluate(["on", f"#{digest}", *ours], table)
        line = acl_entry(user, live, ours)
        assert line == acl.acl_line(user, digest, ours)
        assert evaluate(line.split()[2:], table).same_rules(desired)
        off = evaluate(["off", f"#{digest}", *ours], table)
        assert acl_entry(user, off, ours).split()[2] == "off"


def test_rules_the_evaluator_cannot_model_are_never_taken_as_current(
    table: CommandTable,
) -> None:
    ours = acl.module_rules("web3")
    assert not evaluate([*ours, "(~x +get)"], table).understood
    assert not evaluate([*ours, "+select|0"], table).understood  # a first-argument rule
    assert not evaluate([*ours, "+nosuchcommand"], table).understood
    assert not evaluate([*ours, "%X~a"], table).understood


# -- the legacy formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("b2:bucket:path/to/repo", "b2:bucket/path/to/repo"),
        ("b2:bucket:/path/", "b2:bucket/path"),
        ("b2:bucket:", "b2:bucket"),
        ("azure:container:/deep/path", "azure:container/deep/path"),
        ("azure:container:/", "azure:container"),
        ("b2:bucket/path", "b2:bucket/path"),
        ("b2:bucket/a:b", "b2:bucket/a:b"),  # the colon is inside the path: not Restic's form
        ("s3:minio.local:9000/bucket", "s3:minio.local:9000/bucket"),  # a port
        ("smb:share/dir", "smb:share/dir"),
        ("webdav:http://10.5.4.1:4694", "webdav:http://10.5.4.1:4694"),
    ],
)
def test_canonical_url(url: str, expected: str) -> None:
    assert legacy.canonical_url(url) == expected


@given(
    scheme=st.sampled_from(["b2", "azure", "s3", "smb", "webdav"]),
    rest=st.text(st.sampled_from("ab:/-1"), max_size=12),
)
def test_canonical_url_is_idempotent(scheme: str, rest: str) -> None:
    once = legacy.canonical_url(f"{scheme}:{rest}")
    assert legacy.canonical_url(once) == once


@pytest.mark.parametrize(
    ("url", "provider"),
    [
        ("b2:bucket", "backblaze"),
        ("s3:s3.amazonaws.com/bucket", "aws"),
        ("s3:s3.eu-west-1.amazonaws.com/bucket", "aws"),
        ("s3:https://s3.wasabisys.com/bucket", "generic-s3"),
        ("azure:container", "azure"),
        ("smb:share", "smb"),
        ("webdav:http://10.5.4.1:4694", "cluster"),
        ("ftp:host", None),
    ],
)
def test_infer_provider(url: str, provider: str | None) -> None:
    assert legacy.infer_provider(url) == provider


def test_status_value_casts_integers_only() -> None:
    fields: dict[str, Any] = {"start": "17", "errors": "0", "total_size": "-1", "note": "1.5"}
    assert legacy.status_value(fields) == {
        "start": 17,
        "errors": 0,
        "total_size": -1,
        "note": "1.5",
    }


def test_legacy_key_patterns() -> None:
    assert legacy.BACKUP_SET_KEY.match("module/mail1/backups").groups() == ("mail1",)  # type: ignore[union-attr]
    assert legacy.STATUS_KEY.match("module/mail1/backup_status/3").groups() == ("mail1", "3")  # type: ignore[union-attr]
    assert legacy.STATUS_KEY.match("module/mail1/backup_status/3/x") is None
    assert legacy.BACKUP_SET_KEY.match("module/a/b/backups") is None
