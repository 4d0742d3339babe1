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
