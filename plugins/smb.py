"""SMB/CIFS shares (``smb``); the password is stored rclone-obscured, as rclone requires."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from nsbackup import hookimpl
from nsbackup.model import Parameter, ValidatedDestination
from nsbackup.obscure import obscure, reveal_stored
from nsbackup.provider import (
    HOSTNAME,
    BaseProvider,
    Provider,
    UrlError,
    join_path,
    split_container_path,
)
from nsbackup.secret import Secret


class SmbProvider(BaseProvider):
    name = "smb"
    description = "SMB/CIFS share (Windows, Samba, NAS)"
    url_form = "smb:<share>[/<path>]"
    parameters = (
        Parameter(
            "smb_host",
            "Server host name or IP address",
            required=True,
            pattern=HOSTNAME,
            max_length=253,
        ),
        Parameter(
            "smb_user", "User name", required=True, pattern=r"[^\s/\\\[\]:;|=,+*?<>\"]{1,256}"
        ),
        Parameter(
            "smb_pass",
            "Password (stored rclone-obscured)",
            required=True,
            secret=True,
            obscured=True,
        ),
        Parameter(
            "smb_domain", "Domain or workgroup (default WORKGROUP)", pattern=r"[A-Za-z0-9._-]{0,64}"
        ),
        Parameter("smb_port", "TCP port (default 445)", pattern=r"[0-9]{1,5}"),
    )

    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        if not url.startswith("smb:"):
            raise UrlError("must start with 'smb:'")
        share, path = split_container_path(
            url[4:].lstrip("/"), r"[^\s/\\\[\]:;|=,+*?<>\"]{1,80}", "share"
        )
        port = params.get("smb_port", "")
        if port and not 0 < int(port) < 65536:
            raise UrlError(f"smb_port {port} is out of range")
        return {"share": share, "basepath": join_path(share, path)}

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        p = validated.parameters
        section = {
            "type": "smb",
            "host": p["smb_host"],
            "user": p["smb_user"],
            "pass": Secret(obscure(p["smb_pass"])),
        }
        if p.get("smb_domain"):
            section["domain"] = p["smb_domain"]
        if p.get("smb_port"):
            section["port"] = str(int(p["smb_port"]))
        return section

    def basepath(self, validated: ValidatedDestination) -> str:
        return validated.details["basepath"]

    def identity(self, validated: ValidatedDestination) -> Mapping[str, str]:
        p = validated.parameters
        return {
            "url": validated.url,
            "host": p["smb_host"].lower(),
            "port": str(int(p.get("smb_port") or 445)),
        }

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        password = "" if hide_secrets else reveal_stored(section.get("pass", ""))
        params = {
            "smb_host": section.get("host", ""),
            "smb_user": section.get("user", ""),
            "smb_pass": password,
            "smb_domain": section.get("domain", ""),
        }
        if section.get("port"):
            params["smb_port"] = section["port"]
        return params


@hookimpl
def nsbackup_register_providers(register: Callable[[Provider], None]) -> None:
    register(SmbProvider())
