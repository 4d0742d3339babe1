"""An SFTP destination provider for nsbackup (``sftp``): the worked example of docs/plugins.md.

A provider plugin is one class and one hook implementation, found through an entry point in
the ``nsbackup`` group (see ``pyproject.toml``). :class:`~nsbackup.provider.BaseProvider` does
the checks every provider needs (unknown/missing parameters, patterns, control characters,
"an empty secret keeps the stored one" on alter); this class only says how a URL is read and
which rclone options it stands for.

URL form ``sftp:<host>[:<port>]/<path>``; the path is relative to the login directory. The
password is stored rclone-obscured, as rclone requires for its ``pass`` option. It is required:
an sftp remote without one would fall back to the node's ssh-agent. Like rclone's default, the
example does not verify the server's host key; a production plugin would add a parameter for it
(rclone's ``host_keys`` option).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from nsbackup import hookimpl
from nsbackup.model import FieldError, Parameter, ValidatedDestination, field_error
from nsbackup.obscure import obscure, reveal_stored
from nsbackup.provider import HOSTNAME, BaseProvider, Provider, UrlError, check_path
from nsbackup.secret import Secret

DEFAULT_PORT = "22"


def _is_port(text: str) -> bool:
    return re.fullmatch(r"[0-9]{1,5}", text) is not None and 0 < int(text) < 65536


class SftpProvider(BaseProvider):
    name = "sftp"
    description = "SFTP server (password login)"
    url_form = "sftp:<host>[:<port>]/<path>"
    parameters = (
        Parameter("sftp_user", "User name", required=True, pattern=r"[^\s:/]{1,128}"),
        Parameter(
            "sftp_pass",
            "Password (stored rclone-obscured)",
            required=True,
            secret=True,
            obscured=True,
        ),
        Parameter(
            "sftp_port",
            f"TCP port when the URL has none (default {DEFAULT_PORT})",
            pattern=r"[0-9]{1,5}",
        ),
    )

    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        if not url.startswith("sftp:"):
            raise UrlError("must start with 'sftp:'")
        authority, _, path = url.removeprefix("sftp:").partition("/")
        host, colon, port = authority.partition(":")
        # HOSTNAME also matches IPv4 addresses; IPv6 literals are left out of this example.
        if not re.fullmatch(HOSTNAME, host):
            raise UrlError(f"{host!r} is not a host name or IPv4 address")
        if colon and not _is_port(port):
            raise UrlError(f"port {port!r} is not a number from 1 to 65535")
        basepath = check_path(path)
        if not basepath:
            raise UrlError("a path is required")
        return {"host": host.lower(), "port": str(int(port)) if colon else "", "basepath": basepath}

    def check(self, params: Mapping[str, str], details: Mapping[str, str]) -> Sequence[FieldError]:
        port = params.get("sftp_port", "")
        if port and not _is_port(port):
            return [
                field_error(
                    "parameters",
                    "sftp_port",
                    port,
                    "pattern",
                    "sftp_port must be a number from 1 to 65535",
                )
            ]
        return []

    @staticmethod
    def port(validated: ValidatedDestination) -> str:
        """The port to connect to: the URL's, else ``sftp_port``, else 22."""
        port = validated.details["port"] or validated.parameters.get("sftp_port")
        return str(int(port or DEFAULT_PORT))

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        p = validated.parameters
        return {
            "type": "sftp",
            "host": validated.details["host"],
            "port": self.port(validated),
            "user": p["sftp_user"],
            "pass": Secret(obscure(p["sftp_pass"])),
            # Run no shell commands on the server: backup accounts often have no shell, and
            # rclone would otherwise guess the shell and write its guess back into the config
            # file. Hash checks are off as a consequence; restic verifies its own data.
            "shell_type": "none",
        }

    def identity(self, validated: ValidatedDestination) -> Mapping[str, str]:
        # Where the data lives, not who logs in: same location, same destination UUID.
        return {
            "host": validated.details["host"],
            "port": self.port(validated),
            "path": validated.details["basepath"],
        }

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        password = "" if hide_secrets else reveal_stored(section.get("pass", ""))
        return {
            "sftp_user": section.get("user", ""),
            "sftp_pass": password,
            "sftp_port": section.get("port", ""),
        }

    def default_name(self, validated: ValidatedDestination, uuid: str) -> str:
        return f"SFTP {validated.details['host']}/{validated.details['basepath']}"


@hookimpl
def nsbackup_register_providers(register: Callable[[Provider], None]) -> None:
    register(SftpProvider())
