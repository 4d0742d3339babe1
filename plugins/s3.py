"""Amazon S3 (``aws``) and any S3-compatible service (``generic-s3``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from nsbackup import hookimpl
from nsbackup.model import Parameter, ValidatedDestination
from nsbackup.plugins import Lookups
from nsbackup.provider import (
    BaseProvider,
    Provider,
    UrlError,
    join_path,
    parse_endpoint,
    split_container_path,
)
from nsbackup.secret import Secret

BUCKET = r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}"

S3_PARAMETERS = (
    Parameter("aws_access_key_id", "Access key ID", required=True, pattern=r"\S{1,256}"),
    Parameter("aws_secret_access_key", "Secret access key", required=True, secret=True),
    Parameter(
        "aws_default_region",
        "Region (e.g. eu-west-1); empty: the service default",
        pattern=r"[A-Za-z0-9_-]{0,64}",
    ),
)


def _parameters_from_section(section: Mapping[str, str], hide_secrets: bool) -> dict[str, str]:
    params = {
        "aws_access_key_id": section.get("access_key_id", ""),
        "aws_secret_access_key": "" if hide_secrets else section.get("secret_access_key", ""),
    }
    if "region" in section:
        params["aws_default_region"] = section["region"]
    return params


class AwsProvider(BaseProvider):
    name = "aws"
    description = "Amazon S3"
    url_form = "s3:s3.amazonaws.com/<bucket>[/<path>]"
    parameters = S3_PARAMETERS

    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        if not url.startswith("s3:"):
            raise UrlError("must start with 's3:'")
        host, sep, rest = url[3:].partition("/")
        if not sep:
            raise UrlError("bucket is missing")
        _, host, _ = parse_endpoint(host)
        if not re.fullmatch(r"(?:[a-z0-9.-]+\.)?amazonaws\.com", host):
            raise UrlError(f"{host!r} is not an Amazon endpoint (use generic-s3 for others)")
        bucket, path = split_container_path(rest, BUCKET, "bucket")
        return {"endpoint": host, "bucket": bucket, "basepath": join_path(bucket, path)}

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        p = validated.parameters
        section = {
            "type": "s3",
            "provider": "AWS",
            "access_key_id": p["aws_access_key_id"],
            "secret_access_key": Secret(p["aws_secret_access_key"]),
            "endpoint": validated.details["endpoint"],
        }
        if p.get("aws_default_region"):
            section["region"] = p["aws_default_region"]
        return section

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        return _parameters_from_section(section, hide_secrets)

    def default_name(self, validated: ValidatedDestination, uuid: str) -> str:
        return "AWS " + validated.url.split("/", 1)[1]


class GenericS3Provider(BaseProvider):
    name = "generic-s3"
    description = (
        "S3-compatible storage (DigitalOcean, OVH, Wasabi, Synology, Hetzner, IDrive, Cubbit, "
        "MinIO, ...); a bare host means HTTPS, or give http://host:port"
    )
    url_form = "s3:[http(s)://]<endpoint>[:<port>]/<bucket>[/<path>]"
    parameters = S3_PARAMETERS

    def __init__(self, vendor_lookup: Callable[[str, Mapping[str, str]], object]) -> None:
        self._vendor_lookup = vendor_lookup

    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        if not url.startswith("s3:"):
            raise UrlError("must start with 's3:'")
        given = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url[3:])
        prefix = given.group(0).lower() if given else ""
        endpoint, sep, rest = url[3 + len(prefix) :].partition("/")
        if not sep:
            raise UrlError("bucket is missing")
        scheme, host, _ = parse_endpoint(prefix + endpoint)
        bucket, path = split_container_path(rest, BUCKET, "bucket")
        return {
            "endpoint": prefix + endpoint,
            "host": host,
            "scheme": scheme,
            "bucket": bucket,
            "basepath": join_path(bucket, path),
        }

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        p = validated.parameters
        section: dict[str, str] = {
            "type": "s3",
            "provider": "Other",
            "access_key_id": p["aws_access_key_id"],
            "secret_access_key": Secret(p["aws_secret_access_key"]),
            "endpoint": validated.details["endpoint"],
        }
        if p.get("aws_default_region"):
            section["region"] = p["aws_default_region"]
        vendor = self._vendor_lookup(validated.details["host"], p)
        options = getattr(vendor, "options", None) or {}
        section.update(options)
        return section

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        return _parameters_from_section(section, hide_secrets)


@hookimpl
def nsbackup_register_providers(register: Callable[[Provider], None], lookups: Lookups) -> None:
    register(AwsProvider())
    register(GenericS3Provider(lookups.s3_vendor))
