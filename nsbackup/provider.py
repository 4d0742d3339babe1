"""The provider contract, and a base class that does the common validation work.

A provider turns an NS8 destination request into an rclone section. Providers are plugins
(registered through ``nsbackup_register_providers``); the core only talks to them through
:class:`Provider`. :class:`BaseProvider` is a convenience for authors: declare ``parameters``,
implement ``parse_url``, ``rclone_section`` and ``parameters_from_section``, and the checks
every provider needs (unknown/missing parameters, patterns, control characters, "an empty
secret keeps the stored one" on alter) come for free.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from nsbackup.errors import ValidationFailed
from nsbackup.model import (
    CONTROL_CHARS,
    DestinationRequest,
    FieldError,
    Parameter,
    StoredDestination,
    ValidatedDestination,
    field_error,
)
from nsbackup.secret import Secret

PROVIDER_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")


@runtime_checkable
class Provider(Protocol):
    """What a destination provider plugin must offer (see docs/plugins.md)."""

    # Read-only members, so that class attributes (as in BaseProvider) satisfy them too.
    @property
    def name(self) -> str:
        """Provider name as stored in ``cluster/backup_repository/<uuid>`` (``provider``)."""
        ...

    @property
    def description(self) -> str: ...

    @property
    def url_form(self) -> str:
        """The URL form users write, e.g. ``b2:<bucket>[/<path>]``."""
        ...

    @property
    def parameters(self) -> Sequence[Parameter]: ...

    def validate(
        self, request: DestinationRequest, previous: StoredDestination | None
    ) -> ValidatedDestination:
        """Check a request (``previous`` is the stored destination on alter).

        Raise :class:`~nsbackup.errors.ValidationFailed` listing every bad field; never put a
        secret value in an error.
        """
        ...

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        """The rclone options, ``type`` first. Values only: the core serializes them.

        Secret values must be :class:`~nsbackup.secret.Secret` instances so that displays hide
        them.
        """
        ...

    def basepath(self, validated: ValidatedDestination) -> str:
        """The path inside the remote where repositories live (no leading ``/``)."""
        ...

    def public_basepath(self, validated: ValidatedDestination) -> str:
        """The public ``basepath`` field (NS8 stores ``""`` for every provider but ``rclone``)."""
        ...

    def identity(self, validated: ValidatedDestination) -> Mapping[str, str]:
        """Non-secret values that say *where* the data lives; the destination UUID derives
        from them, so the same location cannot be added twice and the UUID reveals nothing
        about credentials."""
        ...

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        """The request parameters a stored section stands for (secrets ``""`` when hidden)."""
        ...

    def default_name(self, validated: ValidatedDestination, uuid: str) -> str:
        """The display name used when the request's name is empty."""
        ...


class UrlError(ValueError):
    """Raised by :meth:`BaseProvider.parse_url`; the message is shown to the user."""


def check_path(path: str, what: str = "path") -> str:
    """Normalise a ``/``-separated path (no leading/trailing ``/``); refuse ``.``/``..``/empty
    segments and control characters."""
    if CONTROL_CHARS.search(path):
        raise UrlError(f"{what} must not contain control characters")
    if "\\" in path:
        raise UrlError(f"{what} must not contain backslashes")
    stripped = path.strip("/")
    if not stripped:
        return ""
    for segment in stripped.split("/"):
        if segment in ("", ".", ".."):
            raise UrlError(f"{what} must not contain empty, '.' or '..' segments")
    if len(stripped) > 512:
        raise UrlError(f"{what} is longer than 512 characters")
    return stripped


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = rf"{_LABEL}(?:\.{_LABEL})*\.?"
IPV6 = r"\[[0-9A-Fa-f:.]+\]"
HOST = rf"(?:{HOSTNAME}|{IPV6})"
HOST_PORT = re.compile(rf"(?P<host>{HOST})(?::(?P<port>[0-9]{{1,5}}))?")


class BaseProvider:
    """Common validation for providers whose options come from declared parameters."""

    name: ClassVar[str]
    description: ClassVar[str]
    url_form: ClassVar[str]
    parameters: ClassVar[Sequence[Parameter]] = ()

    # -- hooks for subclasses -------------------------------------------------------------
    def parse_url(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        """Return provider details derived from the URL (must include ``basepath``); raise
        :class:`UrlError` with a user-facing message when it is not of ``url_form``."""
        raise NotImplementedError

    def check(self, params: Mapping[str, str], details: Mapping[str, str]) -> Sequence[FieldError]:
        """Extra cross-field checks; return the errors."""
        return ()

    def rclone_section(self, validated: ValidatedDestination) -> Mapping[str, str]:
        raise NotImplementedError

    def parameters_from_section(
        self, section: Mapping[str, str], hide_secrets: bool
    ) -> dict[str, str]:
        raise NotImplementedError

    # -- defaults -------------------------------------------------------------------------
    def basepath(self, validated: ValidatedDestination) -> str:
        return validated.details.get("basepath", "")

    def public_basepath(self, validated: ValidatedDestination) -> str:
        return ""

    def identity(self, validated: ValidatedDestination) -> Mapping[str, str]:
        return {"url": validated.url}

    def default_name(self, validated: ValidatedDestination, uuid: str) -> str:
        return f"{self.name} {uuid[:4]}"

    @property
    def secret_parameters(self) -> Collection[str]:
        return {p.name for p in self.parameters if p.secret}

    # -- the common flow ------------------------------------------------------------------
    def validate(
        self, request: DestinationRequest, previous: StoredDestination | None
    ) -> ValidatedDestination:
        errors: list[FieldError] = []
        params = self._check_parameters(request, previous, errors)
        url = request.url if request.url is not None else (previous.url if previous else None)
        details: dict[str, str] = {}
        if url is None:
            errors.append(field_error("url", "url", None, "required", "url is required"))
        else:
            try:
                details = self.parse_url(url, params)
            except UrlError as exc:
                errors.append(
                    field_error("url", "url", url, "pattern", f"{exc}; expected {self.url_form}")
                )
        if not errors:
            errors.extend(self.check(params, details))
        if errors:
            raise ValidationFailed(errors)
        assert url is not None
        return ValidatedDestination(self.name, url, params, details)

    def _check_parameters(
        self,
        request: DestinationRequest,
        previous: StoredDestination | None,
        errors: list[FieldError],
    ) -> dict[str, str]:
        declared = {p.name: p for p in self.parameters}
        stored: dict[str, str] = {}
        if previous is not None:
            stored = self.parameters_from_section(previous.section, hide_secrets=False)
        given: Mapping[str, Any] = request.parameters
        result: dict[str, str] = {}
        errors.extend(unknown_parameters(self.name, given, declared))
        for name, param in declared.items():
            if name in given and given[name] is not None:
                raw = given[name]
            elif previous is not None and name in stored:
                raw = stored[name]  # alter: a parameter left out keeps its stored value
            else:
                raw = None
            if isinstance(raw, bool) or not isinstance(raw, str | int | type(None)):
                errors.append(
                    field_error(
                        "parameters",
                        name,
                        raw,
                        "type",
                        f"{name} must be a string",
                        secret=param.secret,
                    )
                )
                continue
            value = None if raw is None else str(raw)
            if param.secret and value == "" and name in stored:
                value = stored[name]  # alter: an empty secret keeps the stored one
            if value is None or (value == "" and param.required):
                if param.required:
                    errors.append(
                        field_error("parameters", name, value, "required", f"{name} is required")
                    )
                continue
            problem = self._check_value(param, value)
            if problem:
                code, message = problem
                errors.append(
                    field_error("parameters", name, value, code, message, secret=param.secret)
                )
                continue
            result[name] = Secret(value) if param.secret else value
        return result

    @staticmethod
    def _check_value(param: Parameter, value: str) -> tuple[str, str] | None:
        if CONTROL_CHARS.search(value):
            return "pattern", (
                f"{param.name} must not contain control characters (CR, LF, NUL, TAB, ...)"
            )
        if len(value) > param.max_length:
            return "maxLength", f"{param.name} is longer than {param.max_length} characters"
        if param.pattern and value and not re.fullmatch(param.pattern, value):
            return "pattern", f"{param.name} must match {param.pattern}"
        return None


def split_container_path(rest: str, container_pattern: str, what: str) -> tuple[str, str]:
    """Split ``<container>[/<path>]`` and check both parts; return (container, path)."""
    container, _, path = rest.partition("/")
    if not re.fullmatch(container_pattern, container):
        raise UrlError(f"{what} {container!r} is not valid (must match {container_pattern})")
    return container, check_path(path)


def parse_endpoint(text: str, *, default_scheme: str = "") -> tuple[str, str, str]:
    """Parse ``[http(s)://]host[:port]``; return (scheme, host, port)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = default_scheme, text
    elif scheme not in ("http", "https"):
        raise UrlError(f"scheme {scheme!r} is not supported (use http or https)")
    m = HOST_PORT.fullmatch(rest)
    if not m:
        raise UrlError(f"{rest!r} is not a valid host[:port]")
    port = m.group("port") or ""
    if port and not 0 < int(port) < 65536:
        raise UrlError(f"port {port} is out of range")
    return scheme, m.group("host"), port


def join_path(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def parse_http_url(text: str) -> tuple[str, str, str, str]:
    """Parse ``http(s)://host[:port][/path]``; return (scheme, host, port, path)."""
    m = re.fullmatch(r"(https?)://([^/?#]+)(/[^?#]*)?", text)
    if not m:
        raise UrlError("must be http(s)://host[:port][/path] without query or fragment")
    scheme, host, port = parse_endpoint(f"{m.group(1)}://{m.group(2)}")
    return scheme, host, port, check_path(m.group(3) or "")


def unknown_parameters(
    provider: str, given: Mapping[str, Any], declared: Collection[str]
) -> list[FieldError]:
    """One ``additionalProperties`` error per parameter the provider does not declare."""
    return [
        field_error(
            "parameters",
            str(key),
            None,
            "additionalProperties",
            f"unknown parameter {key!r} for provider {provider}; "
            f"expected {sorted(declared) or 'none'}",
        )
        for key in given
        if key not in declared
    ]
