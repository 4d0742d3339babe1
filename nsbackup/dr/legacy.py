"""NS8's pre-3.20 backup layout (ref §1.1 "Legacy", §9): the one place that knows its key names
and record formats.

nsbackup only reads this layout to migrate it away (:mod:`nsbackup.dr.migrate`); nothing else
may use these names. What it was:

- destinations: ``cluster/backup_repository/<uuid>`` held everything, secrets included, as
  flat fields: ``password`` (the Restic password), ``b2_account_id``/``b2_account_key``,
  ``aws_access_key_id``/``aws_secret_access_key``/``aws_default_region``,
  ``azure_account_name``/``azure_account_key``, ``smb_host``/``smb_user``/``smb_pass``/
  ``smb_domain``; URLs were Restic repository strings, sometimes in Restic's own colon form
  (``b2:<bucket>:<path>``, ``azure:<container>:/<path>``);
- schedule membership: one SET ``module/<id>/backups`` of backup ids per module;
- statuses: one HASH ``module/<id>/backup_status/<backup id>`` per module and schedule, each
  field a plain string;
- module UUIDs: only in each module's environment (``MODULE_UUID`` of
  ``module/<id>/environment``) before ``cluster/module_uuid`` existed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

BACKUP_SET = "module/{}/backups"
"""SET of the backup ids a module belongs to (replaced by ``cluster/backup/<id>``
``instances``)."""
STATUS = "module/{}/backup_status/{}"
"""HASH of a module's last run of a backup (replaced by ``node/<n>/backup_status/<id>``)."""
MODULE_ENV = "module/{}/environment"
"""A module's environment HASH (NS8 core's), where the module UUID was before
``cluster/module_uuid``."""
MODULE_UUID_FIELD = "MODULE_UUID"
"""The field of :data:`MODULE_ENV` that holds the module's UUID."""
PASSWORD_FIELD = "password"
"""The legacy destination field holding the Restic password."""
PUBLIC_FIELDS = ("url", "name", "provider", "basepath")
"""What a destination's public hash may hold; every other field is legacy (often a secret)."""

# Restic-style URLs put a colon between the container and the path (ref §14.23).
_COLON_FORM_SCHEMES = ("b2", "azure")


def key_pattern(template: str) -> re.Pattern[str]:
    """A regular expression matching the keys of a ``{}`` template (each ``{}`` one path
    segment, captured)."""
    return re.compile("^" + re.escape(template).replace(r"\{\}", "([^/]+)") + "$")


BACKUP_SET_KEY = key_pattern(BACKUP_SET)
STATUS_KEY = key_pattern(STATUS)
MODULE_ENV_KEY = key_pattern(MODULE_ENV)


def infer_provider(url: str) -> str | None:
    """The provider a legacy URL stands for, for destinations written before NS8 stored
    ``provider`` (``None`` when the scheme says nothing)."""
    scheme, _, rest = url.partition(":")
    if scheme == "b2":
        return "backblaze"
    if scheme == "s3":
        host = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", rest).split("/", 1)[0]
        return "aws" if re.fullmatch(r"(?:[a-z0-9.-]+\.)?amazonaws\.com", host) else "generic-s3"
    if scheme == "azure":
        return "azure"
    if scheme == "smb":
        return "smb"
    if scheme == "webdav":
        return "cluster"
    return None


def canonical_url(url: str) -> str:
    """``url`` in the form providers parse: Restic's ``b2:<bucket>:<path>`` and
    ``azure:<container>:/<path>`` become ``b2:<bucket>/<path>`` and ``azure:<container>/<path>``
    (NS8 kept the colon and derived a wrong base path, ref §14.23). Other URLs are returned
    unchanged (``s3:host:port/bucket`` keeps its port)."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in _COLON_FORM_SCHEMES:
        return url
    container, colon, path = rest.partition(":")
    if not colon or "/" in container:
        return url
    path = path.strip("/")
    return f"{scheme}:{container}/{path}" if path else f"{scheme}:{container}"


def status_value(fields: Mapping[str, str]) -> dict[str, Any]:
    """A legacy status HASH as the JSON object of ``node/<n>/backup_status/<id>`` (ref §1.2):
    the same fields, values cast to ``int`` where they are integers."""
    result: dict[str, Any] = {}
    for name, value in fields.items():
        try:
            result[name] = int(value)
        except (TypeError, ValueError):
            result[name] = value
    return result
