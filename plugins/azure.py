"""Azure Blob Storage (``azure``), with an optional endpoint for emulators such as Azurite."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from nsbackup import hookimpl
from nsbackup.model import FieldError, Parameter, ValidatedDestination, field_error
from nsbackup.provider import (
    BaseProvider,
    Provider,
    UrlError,
    join_path,
    parse_http_url,
    split_container_path,
)
from nsbackup.secret import Secret


class AzureProvider(BaseProvider):
    name = "azure"
    description = "Azure Blob Storage"
    url_form = "azure:<container>[/<path>]"
    parameters = (
        Parameter(
            "azure_account_name", "Storage account name", required=True, pattern=r"[a-z0-9]{3,24}"
        ),
        Parameter("azure_account_key", "Storage account key", required=True, secret=True),
        Parameter(
            "endpoint",
            "Blob service endpoint, only for emulators and sovereign clouds "
            "(e.g. http://127.0.0.1:10000/devstoreaccount1)",
            pattern=r"https?://\S+",
        ),
    )

    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        if not url.startswith("azure:"):
            raise UrlError("must start with 'azure:'")
        container, path = split_container_path(
            url[6:], r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", "container"
        )
        return {"container": container, "basepath": join_path(container, path)}

    def check(self, params: Mapping[str, str], details: Mapping[str, str]) -> Sequence[FieldError]:
        endpoint = params.get("endpoint", "")
        try:
            if endpoint:
                parse_http_url(endpoint)
        except UrlError as exc:
            return [field_error("parameters", "endpoint", endpoint, "pattern", str(exc))]
        return []

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        p = validated.parameters
        section = {
            "type": "azureblob",
            "account": p["azure_account_name"],
            "key": Secret(p["azure_account_key"]),
        }
        if p.get("endpoint"):
            section["endpoint"] = p["endpoint"]
        return section

    def identity(self, validated: ValidatedDestination) -> Mapping[str, str]:
        p = validated.parameters
        return {
            "url": validated.url,
            "account": p["azure_account_name"],
            "endpoint": p.get("endpoint", ""),
        }

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        params = {
            "azure_account_name": section.get("account", ""),
            "azure_account_key": "" if hide_secrets else section.get("key", ""),
        }
        if section.get("endpoint"):
            params["endpoint"] = section["endpoint"]
        return params


@hookimpl
def nsbackup_register_providers(register: Callable[[Provider], None]) -> None:
    register(AzureProvider())
