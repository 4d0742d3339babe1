"""NS8's S3 vendor table (ref §2.2): substring tests on the endpoint host, first match wins.

It answers ``nsbackup_s3_vendor`` last (``trylast``), so a third-party plugin can add or
override a vendor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from nsbackup import hookimpl
from nsbackup.plugins import S3Vendor


def _label(host: str, n: int) -> str:
    labels = host.split(".")
    return labels[n] if n < len(labels) else ""


def _region(params: Mapping[str, str], host: str, n: int) -> str:
    # The parameter wins whenever it is present, even when empty (NS8 behaviour).
    return params["aws_default_region"] if "aws_default_region" in params else _label(host, n)


Rule = tuple[str, str, Callable[[str, Mapping[str, str]], dict[str, str]]]

VENDORS: tuple[Rule, ...] = (
    ("digitalocean", "DigitalOcean", lambda h, p: {"provider": "DigitalOcean"}),
    (
        "ovh.net",
        "OVH",
        lambda h, p: {
            "provider": "Other",
            "region": _region(p, h, 1),
            "location_constraint": _region(p, h, 1),
        },
    ),
    ("wasabi", "Wasabi", lambda h, p: {"provider": "Wasabi", "region": _region(p, h, 1)}),
    (
        "synology",
        "Synology",
        lambda h, p: {
            "provider": "Synology",
            "region": _region(p, h, 0),
            "no_check_bucket": "true",
        },
    ),
    (
        "your-objectstorage.com",
        "Hetzner",
        lambda h, p: {
            "provider": "Other",
            "region": _region(p, h, 0),
        },
    ),
    ("idrivee2", "IDrive", lambda h, p: {"provider": "IDrive", "no_check_bucket": "true"}),
    ("cubbit.eu", "Cubbit", lambda h, p: {"provider": "Other", "region": "eu-west-1"}),
    (
        "scalablestorage.it",
        "scalablestorage",
        lambda h, p: {
            "provider": "Other",
            "no_check_bucket": "true",
        },
    ),
)


def detect_vendor(host: str, parameters: Mapping[str, str]) -> S3Vendor:
    for needle, name, options in VENDORS:
        if needle in host:
            return S3Vendor(name, options(host, parameters))
    return S3Vendor("Other", {"provider": "Other"})


@hookimpl(trylast=True)
def nsbackup_s3_vendor(host: str, parameters: Mapping[str, str]) -> S3Vendor:
    return detect_vendor(host, parameters)
