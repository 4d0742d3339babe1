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
