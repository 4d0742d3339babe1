from __future__ import annotations

import pytest

from nsbackup.plugins import PluginHost, load_plugins


@pytest.fixture(scope="session")
def host() -> PluginHost:
    """The plugins installed with nsbackup, loaded through their entry points."""
    loaded = load_plugins(disabled=set())
    assert not loaded.failures, loaded.failures
    return loaded


@pytest.fixture()
def fresh_host() -> PluginHost:
    """A private plugin host a test may add plugins to."""
    return load_plugins(disabled=set())


# -- Redis ------------------------------------------------------------------------------------

from collections.abc import Iterator  # noqa: E402

from tests.redis_server import RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (ACLs on, ``default`` off); see ``redis_db``."""
    with RedisServer() as server:
        yield server


@pytest.fixture()
def redis_db(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server, emptied (keys and extra users) before each test."""
    redis_server.flush()
    yield redis_server


@pytest.fixture()
def ns8_redis(redis_db: RedisServer) -> Iterator[RedisServer]:
    """The test cluster (tests/cluster_seed.py) with NS8's exact ACL users and ``default``
    user (tests/ns8_acl.py)."""
    from tests.ns8_acl import reset_default, seed_ns8

    seed_ns8(redis_db).close()
    try:
        yield redis_db
    finally:
        reset_default(redis_db)
