"""The plugin system: registration, validation, failures, disabling, look-up hooks."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from nsbackup_plugins.backblaze import BackblazeProvider

from nsbackup import hookimpl
from nsbackup.destinations import prepare
from nsbackup.errors import PluginError, ValidationFailed
from nsbackup.model import DestinationRequest, ValidatedDestination
from nsbackup.plugins import PluginHost, S3Vendor, load_plugins
from nsbackup.provider import BaseProvider
from tests.builtin import BUILTIN_PLUGINS


class DummyProvider(BaseProvider):
    name = "dummy"
    description = "test provider"
    url_form = "dummy:<x>"
    parameters = ()

    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        return {"basepath": url.split(":", 1)[1]}

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        return {"type": "memory"}

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        return {}


class Registers:
    def __init__(self, *items: Any) -> None:
        self.items = items

    @hookimpl
    def nsbackup_register_providers(self, register: Callable[[Any], None]) -> None:
        for item in self.items:
            register(item)


def test_builtins_load_through_entry_points(host: PluginHost) -> None:
    assert set(host.plugins) == BUILTIN_PLUGINS
    for info in host.plugins.values():
        assert info.dist == "nsbackup"
    assert host.plugins["s3"].registered == {"provider": ("aws", "generic-s3")}
    assert "nsbackup_s3_vendor" in host.plugins["s3_vendors"].hooks


def test_inline_plugin_registers_and_unregisters(fresh_host: PluginHost) -> None:
    info = fresh_host.register_plugin(Registers(DummyProvider()), "dummy-plugin", "d", "1.0")
    try:
        assert fresh_host.owner("provider", "dummy") == "dummy-plugin"
        assert info.registered == {"provider": ("dummy",)}
        prepared = prepare(
            fresh_host,
            DestinationRequest.from_payload(
                {"provider": "dummy", "url": "dummy:x", "parameters": {}}
            ),
        )
        assert prepared.section == {"type": "memory"} and prepared.name.startswith("dummy ")
    finally:
        fresh_host.unregister_plugin("dummy-plugin")
    assert "dummy" not in fresh_host.providers
    with pytest.raises(ValidationFailed):
        fresh_host.provider("dummy")


def test_duplicate_provider_names_both_plugins(fresh_host: PluginHost) -> None:
    with pytest.raises(PluginError) as info:
        fresh_host.register_plugin(Registers(BackblazeProvider()), "intruder")
    message = str(info.value)
    assert "backblaze" in message and "intruder" in message
    assert "plugin backblaze" in message  # the owner
    assert fresh_host.owner("provider", "backblaze") == "backblaze"
    assert "intruder" not in fresh_host.plugins and fresh_host.pm.get_plugin("intruder") is None


def test_invalid_registrations_are_refused_whole(fresh_host: PluginHost) -> None:
    class NoName:
        pass

    class BadName(DummyProvider):
        name = "Bad Name"

    for bad in (NoName(), BadName(), "text"):
        with pytest.raises(PluginError):
            fresh_host.register_plugin(Registers(DummyProvider(), bad), "bad")
        assert "dummy" not in fresh_host.providers  # nothing of the plugin stays
        assert fresh_host.pm.get_plugin("bad") is None


def test_unknown_hook_is_refused(fresh_host: PluginHost) -> None:
    class Typo:
        @hookimpl
        def nsbackup_register_provider(self, register: Any) -> None:  # missing "s"
            pass

    with pytest.raises(PluginError, match="unknown hook"):
        fresh_host.register_plugin(Typo(), "typo")


def test_register_hook_that_raises(fresh_host: PluginHost) -> None:
    class Raises:
        @hookimpl
        def nsbackup_register_providers(self, register: Any) -> None:
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="RuntimeError: boom"):
        fresh_host.register_plugin(Raises(), "raises")


def _entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group="nsbackup")


def test_broken_entry_points_are_reported_and_others_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    module = types.ModuleType("nsbackup_test_good")
    module.nsbackup_register_providers = hookimpl(  # type: ignore[attr-defined]
        lambda register: register(DummyProvider())
    )
    monkeypatch.setitem(sys.modules, "nsbackup_test_good", module)
    eps = [
        *importlib.metadata.entry_points(group="nsbackup"),
        _entry_point("missing", "nsbackup_test_does_not_exist"),
        _entry_point("good", "nsbackup_test_good"),
    ]
    with caplog.at_level(logging.WARNING):
        loaded = load_plugins(eps, disabled=set())
    assert [str(f) for f in loaded.failures] == [
        "plugin missing (? ?) failed to load: ModuleNotFoundError: "
        "No module named 'nsbackup_test_does_not_exist'"
    ]
    assert "failed to load" in caplog.text
    assert "dummy" in loaded.providers and "backblaze" in loaded.providers


def test_disable_plugins_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSBACKUP_DISABLE_PLUGINS", "backblaze, smb")
    loaded = load_plugins()
    assert "backblaze" not in loaded.providers and "smb" not in loaded.providers
    assert "aws" in loaded.providers and not loaded.failures


def test_s3_vendor_hook_lets_a_plugin_add_a_vendor(fresh_host: PluginHost) -> None:
    class Acme:
        @hookimpl
        def nsbackup_s3_vendor(self, host: str, parameters: Mapping[str, str]) -> S3Vendor | None:
            if host.endswith(".acme.test"):
                return S3Vendor("Acme", {"provider": "Ceph", "no_check_bucket": "true"})
            return None

    fresh_host.register_plugin(Acme(), "acme")
    payload = {
        "provider": "generic-s3",
        "url": "s3:s3.acme.test/b1x",
        "parameters": {"aws_access_key_id": "a", "aws_secret_access_key": "b"},
    }
    section = prepare(fresh_host, DestinationRequest.from_payload(payload)).section
    assert section["provider"] == "Ceph" and section["no_check_bucket"] == "true"
    # hosts the plugin does not know still reach the built-in table
    payload["url"] = "s3:s3.eu-central-1.wasabisys.com/b1x"
    section = prepare(fresh_host, DestinationRequest.from_payload(payload)).section
    assert section["provider"] == "Wasabi"


def test_provider_crash_is_a_plugin_error_without_secrets(fresh_host: PluginHost) -> None:
    class Crashing(DummyProvider):
        name = "crashing"

        def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
            raise KeyError("topsecret-value")

    fresh_host.register_plugin(Registers(Crashing()), "crashing-plugin")
    with pytest.raises(PluginError) as info:
        prepare(
            fresh_host, DestinationRequest.from_payload({"provider": "crashing", "url": "dummy:x"})
        )
    assert "crashing-plugin" in str(info.value) and "topsecret" not in str(info.value)
    assert info.value.exit_code == 6
