"""A general WebDAV destination (``webdav``): Nextcloud, ownCloud, any WebDAV server.

As for NS8's legacy WebDAV remotes, the section's ``url`` is ``scheme://host[:port]`` and the
URL's path is the base path inside it, except that a Nextcloud/ownCloud URL keeps its
``.../dav/files/<user>`` prefix in ``url`` (rclone's chunked uploads require it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from nsbackup import hookimpl
from nsbackup.model import Parameter, ValidatedDestination
from nsbackup.obscure import obscure, reveal_stored
from nsbackup.provider import BaseProvider, Provider, UrlError, parse_http_url
from nsbackup.secret import Secret

VENDORS = (
    "other",
    "nextcloud",
    "owncloud",
    "infinitescale",
    "sharepoint",
    "sharepoint-ntlm",
    "rclone",
    "fastmail",
)


class WebdavProvider(BaseProvider):
    name = "webdav"
    description = "WebDAV server (Nextcloud, ownCloud, ...)"
    url_form = "webdav:http(s)://<host>[:<port>][/<path>]"
    parameters = (
        Parameter("webdav_user", "User name", pattern=r"[^\s:]{1,256}"),
        Parameter("webdav_pass", "Password (stored rclone-obscured)", secret=True, obscured=True),
        Parameter(
            "webdav_vendor",
            f"Server kind: {', '.join(VENDORS)} (default other)",
            pattern="|".join(VENDORS),
        ),
    )

    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        if not url.startswith("webdav:"):
            raise UrlError("must start with 'webdav:'")
        scheme, host, port, path = parse_http_url(url[7:])
        root = f"{scheme}://{host}" + (f":{port}" if port else "")
        # Nextcloud/ownCloud chunked uploads need the remote url to end in /dav/files/USER.
        m = re.match(r"(.*?(?:^|/)dav/files/[^/]+)(?:/(.*))?$", path)
        if m:
            return {"root": f"{root}/{m.group(1)}", "basepath": m.group(2) or ""}
        return {"root": root, "basepath": path}

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        p = validated.parameters
        section = {
            "type": "webdav",
            "url": validated.details["root"],
            "vendor": p.get("webdav_vendor") or "other",
        }
        if p.get("webdav_user"):
            section["user"] = p["webdav_user"]
        if p.get("webdav_pass"):
            section["pass"] = Secret(obscure(p["webdav_pass"]))
        return section

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        password = "" if hide_secrets else reveal_stored(section.get("pass", ""))
        return {
            "webdav_user": section.get("user", ""),
            "webdav_pass": password,
            "webdav_vendor": section.get("vendor", "other"),
        }


@hookimpl
def nsbackup_register_providers(register: Callable[[Provider], None]) -> None:
    register(WebdavProvider())
