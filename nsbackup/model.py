"""Value objects shared by the core and the plugins (frozen, slotted attrs classes)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from nsbackup.errors import ValidationFailed
from nsbackup.secret import REDACTED, Secret, is_secret_key

# C0 controls (CR, LF, NUL, TAB, ...) and DEL never reach a file: one rule for every string.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

# How much of a refused value an error repeats: enough to recognise it, never a pasted megabyte.
SHOWN_VALUE = 200
SHOWN_MESSAGE = 2000


def _cut(value: Any, limit: int = SHOWN_VALUE) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 1] + "…"
    return value


def _cut_message(value: str) -> str:
    text: str = _cut(value, SHOWN_MESSAGE)
    return text


@attrs.frozen
class FieldError:
    """One validation error, serialised as NS8's ``{"field","parameter","value","error"}``.

    ``message`` is a human sentence added beside NS8's keys; ``value`` is already hidden when the
    field is secret (``"***"``).
    """

    field: str = attrs.field(converter=_cut)
    parameter: str = attrs.field(converter=_cut)
    value: Any = attrs.field(converter=_cut)
    """Strings longer than ``SHOWN_VALUE`` characters are cut (and end with ``…``)."""
    error: str
    message: str = attrs.field(default="", converter=_cut_message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "parameter": self.parameter,
            "value": self.value,
            "error": self.error,
            "message": self.message,
        }

    def describe(self) -> str:
        where = self.parameter or self.field or "request"
        return f"{where}: {self.message or self.error}"


def field_error(
    field: str, parameter: str, value: Any, error: str, message: str, *, secret: bool = False
) -> FieldError:
    """A FieldError whose value is hidden when ``secret`` (or when it is a :class:`Secret`)."""
    if secret or isinstance(value, Secret):
        value = REDACTED if value not in (None, "") else value
    return FieldError(field, parameter, value, error, message)


@attrs.frozen
class Parameter:
    """A provider parameter as declared to users (``nsbackup providers``) and validated.

    ``pattern`` is a regular expression the whole value must match; ``obscured`` means the
    value is stored rclone-obscured in the config (it is still a secret).
    """

    name: str
    description: str
    required: bool = False
    secret: bool = False
    pattern: str | None = None
    max_length: int = 1024
    obscured: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "required": self.required,
            "secret": self.secret,
            "pattern": self.pattern,
            "max_length": self.max_length,
            "obscured": self.obscured,
        }


_REQUEST_KEYS = {"provider", "name", "url", "password", "parameters", "id"}

# Bounds of the request's free-text fields (a provider bounds each of its parameters with
# ``Parameter.max_length``).
MAX_LENGTH = {"provider": 64, "url": 2048, "name": 256, "password": 1024, "id": 64}
MAX_PARAMETERS = 64
MAX_PARAMETER_NAME = 64


@attrs.frozen
class DestinationRequest:
    """NS8's add/alter-backup-repository input, checked for shape only.

    ``None`` means "not given" (alter keeps the stored value); providers validate the rest.
    """

    provider: str
    url: str | None = None
    name: str | None = None
    password: Secret | None = None
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    id: str | None = None

    @classmethod
    def from_payload(cls, payload: Any, *, alter: bool = False) -> DestinationRequest:
        """Parse a JSON payload; raise :class:`ValidationFailed` naming every bad field.

        Every field is a string (``null`` = not given) of at most ``MAX_LENGTH`` characters
        without control characters; ``parameters`` is an object of strings (or ``null``)."""
        if not isinstance(payload, Mapping):
            raise ValidationFailed(
                [FieldError("", "", None, "type", "the request must be a JSON object")]
            )
        errors: list[FieldError] = []
        for key in payload:
            if key not in _REQUEST_KEYS:
                errors.append(
                    field_error(
                        str(key),
                        str(key),
                        None,
                        "additionalProperties",
                        f"unknown field {str(key)[:64]!r}; expected {sorted(_REQUEST_KEYS)}",
                    )
                )

        def text(key: str, *, required: bool, secret: bool = False) -> str | None:
            value = payload.get(key)
            if value is None:
                if required:
                    errors.append(field_error(key, key, None, "required", f"{key} is required"))
                return None
            problem = check_text(key, value, MAX_LENGTH[key])
            if problem:
                errors.append(field_error(key, key, value, *problem, secret=secret))
                return None
            assert isinstance(value, str)
            return value

        provider = text("provider", required=True)
        if provider == "":
            errors.append(field_error("provider", "provider", "", "minLength", "provider is empty"))
        url = text("url", required=False)
        name = text("name", required=False)
        password = text("password", required=False, secret=True)
        ident = text("id", required=alter)
        parameters = payload.get("parameters", {})
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, Mapping):
            errors.append(
                field_error(
                    "parameters", "parameters", None, "type", "parameters must be an object"
                )
            )
            parameters = {}
        elif len(parameters) > MAX_PARAMETERS:
            errors.append(
                field_error(
                    "parameters",
                    "parameters",
                    None,
                    "maxProperties",
                    f"parameters has more than {MAX_PARAMETERS} entries",
                )
            )
            parameters = {}
        for pname, pvalue in parameters.items():
            if len(pname) > MAX_PARAMETER_NAME or CONTROL_CHARS.search(pname):
                errors.append(
                    field_error(
                        "parameters",
                        pname,
                        None,
                        "propertyNames",
                        f"a parameter name has at most {MAX_PARAMETER_NAME} characters and no "
                        "control characters",
                    )
                )
            elif pvalue is not None and (isinstance(pvalue, bool) or not isinstance(pvalue, str)):
                errors.append(
                    field_error(
                        "parameters",
                        pname,
                        pvalue,
                        "type",
                        f"{pname} must be a string",
                        secret=is_secret_key(pname),
                    )
                )
        if errors:
            raise ValidationFailed(errors)
        return cls(
            provider=provider or "",
            url=url,
            name=name,
            password=Secret(password) if password else None,
            parameters=dict(parameters),
            id=ident,
        )


def check_text(name: str, value: Any, max_length: int) -> tuple[str, str] | None:
    """``(error, message)`` when ``value`` is not a string of at most ``max_length``
    characters without control characters; ``None`` when it is. The one rule for the
    free-text fields of every request (bools and numbers are refused alike)."""
    if not isinstance(value, str):
        return "type", f"{name} must be a string"
    if len(value) > max_length:
        return "maxLength", f"{name} is longer than {max_length} characters"
    if CONTROL_CHARS.search(value):
        return "pattern", f"{name} must not contain control characters (CR, LF, NUL, TAB, ...)"
    return None


@attrs.frozen
class StoredDestination:
    """A destination as stored: public fields plus its parsed rclone section (with secrets)."""

    id: str
    provider: str
    url: str
    name: str
    basepath: str
    section: Mapping[str, str] = attrs.field(repr=False)  # holds secrets


@attrs.frozen
class ValidatedDestination:
    """What a provider's ``validate`` returns: normalised values only the provider interprets.

    ``parameters`` holds the effective parameters (secret ones as :class:`Secret`, kept from the
    stored destination when the request left them empty); ``details`` holds values the provider
    derived (bucket, endpoint, ...) for its other methods.
    """

    provider: str
    url: str
    parameters: Mapping[str, str]
    details: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class PreparedDestination:
    """A validated destination, ready to be probed, stored or rendered."""

    id: str
    provider: str
    name: str
    url: str
    basepath: str
    public_basepath: str
    section: Mapping[str, str]  # secret values are Secret instances
    rclone_conf: str = attrs.field(repr=False)  # holds secrets
    hosted_at: str | None = None
    """Address of the node that hosts the data (``cluster`` provider), else None."""
    location: str = ""
    """The UUID the destination's location (its non-secret identity) gives; equal to ``id``
    for a destination added by nsbackup, while ``id`` never changes."""

    def public(self) -> dict[str, str]:
        """The public hash ``cluster/backup_repository/<id>`` (no secrets)."""
        return {
            "url": self.url,
            "name": self.name,
            "provider": self.provider,
            "basepath": self.public_basepath,
        }


# -- cluster state (one consistent snapshot read from Redis) --------------------------------


@attrs.frozen
class Destination:
    """A stored destination. ``rclone_conf`` and ``restic_password`` are ``None`` when the
    reader may not see secrets."""

    id: str
    provider: str
    url: str
    name: str
    basepath: str
    rclone_conf: str | None = attrs.field(default=None, repr=False)
    restic_password: Secret | None = attrs.field(default=None, repr=False)

    def public(self) -> dict[str, str]:
        return {
            "url": self.url,
            "name": self.name,
            "provider": self.provider,
            "basepath": self.basepath,
        }


@attrs.frozen
class Schedule:
    """``cluster/backup/<id>``."""

    id: int
    name: str
    repository: str
    schedule: str
    retention: int
    enabled: bool
    instances: tuple[str, ...] = ()
    uinstances: tuple[str, ...] = ()
    schedule_hint: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Module:
    id: str
    uuid: str
    node: str
    ui_name: str = ""
    """Loaded with ``details`` (listings); ``""`` otherwise."""
    flags: frozenset[str] = frozenset()
    """Loaded with ``details`` for modules no schedule names (``no_data_backup``)."""

    @property
    def app(self) -> str:
        """The application type: the module id without its trailing digits (``mail1`` →
        ``mail``). One canonical rule for repository paths and gateway authorisation (NS8
        mixed it with the image name, ref §3.7)."""
        return self.id.rstrip("0123456789") or self.id

    @property
    def repository_path(self) -> str:
        return f"{self.app}/{self.uuid}"


@attrs.frozen
class Node:
    id: str
    vpn_ip: str = ""


@attrs.frozen
class ClusterState:
    """An immutable snapshot of everything nsbackup reads from Redis, loaded in a constant
    number of round trips. ``privileged`` says whether secrets could be read."""

    destinations: Mapping[str, Destination]
    schedules: Mapping[int, Schedule]
    modules: Mapping[str, Module]
    nodes: Mapping[str, Node]
    leader: str = ""
    network: str = ""
    cluster_uuid: str = ""
    acls: tuple[str, ...] = ()
    restore_grants: Mapping[str, str] = attrs.field(factory=dict)
    statuses: Mapping[tuple[str, int], Mapping[str, Any]] = attrs.field(factory=dict)
    privileged: bool = False
    sequence: int = 0


@attrs.frozen
class NodeValidation:
    """The result of probing a destination from one node."""

    node_id: str
    ok: bool
    reason: str | None = None
    detail: str = ""
