"""A raw rclone configuration (``rclone``): one section of a backend from an allow-list.

Checks come from rclone's own option catalogue (:mod:`nsbackup.rclone`): every option must
exist for the backend; options that run a command, name a file on the node or read the
node's environment are refused; ``IsPassword`` options must be rclone-obscured. Wrapping and
local backends (``local``, ``alias``, ``combine``, ``union``, ``crypt``, ...) are never
allowed; ``NSBACKUP_RCLONE_EXTRA_TYPES=type,...`` adds storage backends to the allow-list.
An ``sftp`` section without ``shell_type`` gets ``shell_type = none`` so that rclone never
writes into its configuration file.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from nsbackup import hookimpl, ini
from nsbackup import rclone as rclone_bin
from nsbackup.errors import ValidationFailed
from nsbackup.model import (
    DestinationRequest,
    FieldError,
    Parameter,
    StoredDestination,
    ValidatedDestination,
    field_error,
)
from nsbackup.obscure import is_obscured
from nsbackup.provider import BaseProvider, Provider, UrlError, check_path, unknown_parameters
from nsbackup.secret import Secret

MAX_CONF = 100_000
EXTRA_TYPES_ENV = "NSBACKUP_RCLONE_EXTRA_TYPES"

# Backends that wrap other remotes, expose the node's own disk or hold no durable data.
NEVER_ALLOWED = frozenset(
    {
        "local",
        "alias",
        "combine",
        "union",
        "chunker",
        "crypt",
        "hasher",
        "compress",
        "cache",
        "memory",
        "archive",
        "http",
        "doi",
    }
)
DEFAULT_TYPES = frozenset(
    {
        "s3",
        "b2",
        "azureblob",
        "azurefiles",
        "swift",
        "gcs",
        "oos",
        "qingstor",
        "sftp",
        "ftp",
        "smb",
        "webdav",
        "drive",
        "onedrive",
        "dropbox",
        "box",
        "pcloud",
        "mega",
        "storj",
        "koofr",
        "jottacloud",
        "opendrive",
        "seafile",
        "sharefile",
        "yandex",
        "zoho",
        "hidrive",
        "filefabric",
        "mailru",
        "netstorage",
        "sugarsync",
        "internetarchive",
        "quatrix",
        "protondrive",
        "sia",
        "filescom",
        "iclouddrive",
        "pikpak",
        "putio",
        "premiumizeme",
        "fichier",
        "linkbox",
        "ulozto",
        "filen",
        "filelu",
        "gofile",
        "hdfs",
    }
)


def allowed_types(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    extra = (environ if environ is not None else os.environ).get(EXTRA_TYPES_ENV, "")
    added = {t.strip() for t in extra.split(",") if t.strip()}
    return (DEFAULT_TYPES | added) - NEVER_ALLOWED


def _err(parameter: str, error: str, message: str) -> FieldError:
    # The configuration text is secret as a whole: its value is never echoed.
    return field_error("parameters", parameter, "***", error, message)


class RcloneProvider(BaseProvider):
    name = "rclone"
    description = "Any storage rclone supports, from a pasted rclone configuration section"
    url_form = "rclone:<type>:<host>:<basepath> (derived; the request url is ignored)"
    parameters = (
        Parameter(
            "rclone_conf_secret",
            "rclone configuration text: one section, with or without its [header]",
            secret=True,
            max_length=MAX_CONF,
        ),
        Parameter(
            "rclone_conf_b64_secret",
            "The same, base64-encoded (used when rclone_conf_secret is null)",
            secret=True,
            max_length=MAX_CONF * 2,
        ),
        Parameter("basepath", "Path inside the remote (bucket/path, folder, ...)", max_length=512),
    )

    def validate(
        self, request: DestinationRequest, previous: StoredDestination | None
    ) -> ValidatedDestination:
        params = request.parameters
        errors: list[FieldError] = []
        errors.extend(unknown_parameters(self.name, params, {p.name for p in self.parameters}))
        text = self._config_text(params, previous, errors)
        basepath_raw = params.get("basepath")
        if basepath_raw is None:
            basepath_raw = previous.basepath if previous else ""
        basepath = ""
        if not isinstance(basepath_raw, str):
            errors.append(
                field_error("parameters", "basepath", None, "type", "basepath must be a string")
            )
        else:
            try:
                basepath = check_path(basepath_raw, "basepath")
            except UrlError as exc:
                errors.append(
                    field_error("parameters", "basepath", basepath_raw, "pattern", str(exc))
                )
        section: dict[str, str] = {}
        if text is not None and not errors:
            section = self._check_section(text, errors)
        if errors:
            raise ValidationFailed(errors)
        url = f"rclone:{section['type']}:{_host(section)}:{basepath}"
        return ValidatedDestination(
            self.name,
            url,
            {"basepath": basepath},
            details={**section, "basepath": basepath},
        )

    @staticmethod
    def _config_text(
        params: Mapping[str, object],
        previous: StoredDestination | None,
        errors: list[FieldError],
    ) -> str | None:
        plain = params.get("rclone_conf_secret")
        encoded = params.get("rclone_conf_b64_secret")
        if plain is None and encoded is not None:
            if not isinstance(encoded, str):
                errors.append(_err("rclone_conf_b64_secret", "type", "must be a string"))
                return None
            try:
                plain = base64.b64decode(encoded, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                errors.append(
                    _err(
                        "rclone_conf_b64_secret",
                        "invalid_base64",
                        "rclone_conf_b64_secret is not valid base64 of UTF-8 text",
                    )
                )
                return None
        if plain is not None and not isinstance(plain, str):
            errors.append(_err("rclone_conf_secret", "type", "must be a string or null"))
            return None
        if not plain:
            if previous is not None:  # alter: empty keeps the stored configuration
                return ini.render_section("stored", previous.section)
            errors.append(
                _err(
                    "rclone_conf_secret",
                    "required",
                    "rclone_conf_secret (or rclone_conf_b64_secret) is required",
                )
            )
            return None
        if len(plain) > MAX_CONF:
            errors.append(
                _err(
                    "rclone_conf_secret",
                    "maxLength",
                    f"the configuration is longer than {MAX_CONF} characters",
                )
            )
            return None
        return plain

    @staticmethod
    def _check_section(text: str, errors: list[FieldError]) -> dict[str, str]:
        try:
            _, options = ini.parse_one_section(text)
        except ini.IniError as exc:
            errors.append(_err("rclone_conf_secret", "rclone_conf_error", str(exc)))
            return {}
        backend_type = options.get("type", "")
        if not backend_type:
            errors.append(
                _err("rclone_conf_secret", "rclone_conf_error", "the section has no 'type' option")
            )
            return {}
        catalog = rclone_bin.catalog()
        allowed = allowed_types()
        if backend_type not in allowed or backend_type not in catalog:
            errors.append(
                _err(
                    "rclone_conf_secret",
                    "rclone_conf_error",
                    f"backend type {backend_type!r} is not allowed; allowed: "
                    f"{', '.join(sorted(allowed & set(catalog)))}",
                )
            )
            return {}
        backend = catalog[backend_type]
        section: dict[str, str] = {"type": backend_type}
        for key, value in options.items():
            if key == "type":
                continue
            option = backend.options.get(key)
            if option is None:
                errors.append(
                    _err(
                        "rclone_conf_secret",
                        "rclone_conf_error",
                        f"option {key!r} does not exist for backend {backend_type}",
                    )
                )
                continue
            if option.refusal:
                errors.append(
                    _err(
                        "rclone_conf_secret",
                        "rclone_conf_error",
                        f"option {key!r} is not allowed: {option.refusal}",
                    )
                )
                continue
            if option.is_password and value and not is_obscured(value):
                errors.append(
                    _err(
                        "rclone_conf_secret",
                        "rclone_conf_error",
                        f"option {key!r} must be obscured (rclone obscure)",
                    )
                )
                continue
            # A URL may carry a password (https://user:pass@host/): the value is then as
            # secret as the password, whatever the option's name.
            secret = option.secret or _has_password(value)
            section[key] = Secret(value) if secret else value
        if backend_type == "sftp" and "shell_type" not in section:
            # Otherwise rclone probes the server's shell and writes the answer back into its
            # configuration file (which nsbackup generates and must not see rewritten).
            section["shell_type"] = "none"
        return section

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        return {k: v for k, v in validated.details.items() if k != "basepath"}

    def basepath(self, validated: ValidatedDestination) -> str:
        return validated.parameters["basepath"]

    def public_basepath(self, validated: ValidatedDestination) -> str:
        return validated.parameters["basepath"]

    def identity(self, validated: ValidatedDestination) -> Mapping[str, str]:
        section = self.rclone_section(validated)
        backend = rclone_bin.catalog()[section["type"]]
        kept = {
            k: v
            for k, v in section.items()
            if not isinstance(v, Secret)
            and not (k in backend.options and backend.options[k].is_password)
        }
        return {**kept, "basepath": validated.parameters["basepath"]}

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        return {"rclone_conf_secret": "" if hide_secrets else _lines(section)}


def _has_password(value: str) -> bool:
    if "@" not in value or "://" not in value:
        return False
    try:
        return urlsplit(value.strip()).password is not None
    except ValueError:
        return True  # unreadable: hide it rather than guess


def _lines(section: Mapping[str, str]) -> str:
    text = ini.render_section("section", section)
    return text.split("\n", 1)[1]


def _host(section: Mapping[str, str]) -> str:
    for key in ("host", "endpoint", "url"):
        value = section.get(key, "")
        if value:
            host = urlsplit(value).hostname if "://" in value else value
            host = (host or "").rstrip("/")
            if re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", host):
                return host
    return ""


@hookimpl
def nsbackup_register_providers(register: Callable[[Provider], None]) -> None:
    register(RcloneProvider())
