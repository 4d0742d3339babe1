"""A conformance suite for provider plugins.

Plugin authors call :func:`check_provider` from their own tests with one or more valid example
requests; it raises ``AssertionError`` naming the first rule the provider breaks::

    from nsbackup.testing import check_provider

    def test_conformance():
        check_provider(SftpProvider(), [{"provider": "sftp", "name": "", "url": "...",
                                         "parameters": {...}}])

The checks need the real rclone binary (it reads each rendered section back).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nsbackup import ini, rclone
from nsbackup.destinations import display_conf, prepare, stored_destination
from nsbackup.errors import PluginError, ValidationFailed
from nsbackup.model import DestinationRequest, PreparedDestination
from nsbackup.plugins import PluginHost, load_plugins
from nsbackup.provider import Provider

__all__ = ["check_provider"]

_CANARY = "nsbackup-canary-Zq8"
_INJECTIONS = ("a\nb", "a\rb", "a\x00b", "x\n[evil]\ntype = local")


class _Registers:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    def nsbackup_register_providers(self, register: Any) -> None:
        register(self.provider)


def _host_with(provider: Provider) -> PluginHost:
    from nsbackup import hookimpl

    host = load_plugins(disabled=set())
    if provider.name in host.providers:
        return host
    plugin = _Registers(provider)
    plugin.nsbackup_register_providers = hookimpl(  # type: ignore[method-assign]
        plugin.nsbackup_register_providers
    )
    host.register_plugin(plugin, f"conformance-{provider.name}")
    return host


def _dump(text: str) -> dict[str, dict[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rclone.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        result = rclone.run(["config", "dump"], config=path, timeout=60)
    assert result.returncode == 0, f"rclone refused the rendered config: {result.stderr}"
    data: dict[str, dict[str, str]] = json.loads(result.stdout)
    return data


def _with_secret(provider: Provider, payload: Mapping[str, Any], value: str) -> dict[str, Any]:
    params = dict(payload.get("parameters") or {})
    for p in provider.parameters:
        if p.secret and p.name in params:
            params[p.name] = value
    return {**payload, "parameters": params}


def check_provider(provider: Provider, examples: Iterable[Mapping[str, Any]]) -> None:
    """Check ``provider`` against the provider contract, using valid example requests."""
    host = _host_with(provider)
    secrets = [p.name for p in provider.parameters if p.secret]
    for example in examples:
        payload = _with_secret(provider, example, _CANARY)
        try:
            prepared: PreparedDestination = prepare(host, DestinationRequest.from_payload(payload))
        except (ValidationFailed, PluginError) as exc:
            raise AssertionError(f"valid example refused: {exc}") from exc
        # The rendered section is what rclone reads.
        assert _dump(prepared.rclone_conf) == {
            prepared.id: {k: str(v) for k, v in prepared.section.items()}
        }, "rclone reads the rendered section differently"
        # Secrets stay out of everything public or displayed.
        for text in (
            prepared.id,
            prepared.name,
            prepared.url,
            json.dumps(prepared.public()),
            display_conf(prepared),
            repr(prepared),
        ):
            assert _CANARY not in text, "a secret leaks into public fields or displays"
        # The UUID does not depend on secret values.
        other = prepare(
            host,
            DestinationRequest.from_payload(
                _with_secret(provider, example, "another-secret-value")
            ),
        )
        assert other.id == prepared.id, "the destination UUID depends on a secret"
        # A stored section maps back to parameters; hidden secrets are empty.
        section = ini.parse(prepared.rclone_conf)[prepared.id]
        hidden = provider.parameters_from_section(section, hide_secrets=True)
        assert _CANARY not in json.dumps(hidden), "parameters_from_section leaks when hidden"
        # Alter with empty secrets keeps the stored ones.
        stored = stored_destination(prepared.id, prepared.public(), prepared.rclone_conf)
        altered = prepare(
            host,
            DestinationRequest.from_payload(
                {**_with_secret(provider, example, ""), "id": prepared.id}, alter=True
            ),
            stored,
        )
        assert altered.id == prepared.id
        assert provider.parameters_from_section(
            ini.parse(altered.rclone_conf)[altered.id], hide_secrets=False
        ) == provider.parameters_from_section(section, hide_secrets=False), (
            "alter with empty secrets does not keep the stored ones"
        )
        # Control characters in any parameter are refused with a field error naming it.
        for name in example.get("parameters") or {}:
            for bad in _INJECTIONS:
                params = {**payload["parameters"], name: bad}
                try:
                    prepare(
                        host, DestinationRequest.from_payload({**payload, "parameters": params})
                    )
                except ValidationFailed as exc:
                    assert any(e.parameter == name for e in exc.errors), (
                        f"the error for {name} does not name it: {exc}"
                    )
                    if name in secrets:
                        assert all(
                            _CANARY not in str(e.value) and bad not in str(e.value)
                            for e in exc.errors
                        ), f"{name}'s value is echoed"
                else:
                    raise AssertionError(f"{name}={bad!r} was accepted")
