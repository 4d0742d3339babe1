"""Backblaze B2 (``backblaze``). No local B2 server exists: tested at config level only."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from nsbackup import hookimpl
from nsbackup.model import Parameter, ValidatedDestination
from nsbackup.provider import BaseProvider, Provider, UrlError, join_path, split_container_path
from nsbackup.secret import Secret


class BackblazeProvider(BaseProvider):
    name = "backblaze"
    description = "Backblaze B2"
    url_form = "b2:<bucket>[/<path>]"
    parameters = (
        Parameter(
            "b2_account_id",
            "Account or application key ID",
            required=True,
            pattern=r"[A-Za-z0-9]{1,128}",
        ),
        Parameter("b2_account_key", "Application key", required=True, secret=True),
    )

    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        if not url.startswith("b2:"):
            raise UrlError("must start with 'b2:'")
        bucket, path = split_container_path(url[3:], r"[A-Za-z0-9-]{6,50}", "bucket")
        return {"bucket": bucket, "basepath": join_path(bucket, path)}

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        p = validated.parameters
        return {"type": "b2", "account": p["b2_account_id"], "key": Secret(p["b2_account_key"])}

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        return {
            "b2_account_id": section.get("account", ""),
            "b2_account_key": "" if hide_secrets else section.get("key", ""),
        }

    def default_name(self, validated: ValidatedDestination, uuid: str) -> str:
        return "Backblaze " + validated.url.split(":", 1)[1]


@hookimpl
def nsbackup_register_providers(register: Callable[[Provider], None]) -> None:
    register(BackblazeProvider())
