"""Secrets: a string type that never shows itself, and the one redaction rule (SPEC §6).

The rule: a mapping key whose lower-cased name ends with ``password``, ``secret``, ``token``,
``key`` or ``pass`` is secret, and so is every parameter a provider declares secret. It is used
by logging (:class:`RedactingFilter`), errors and CLI output alike.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

REDACTED = "***"
SECRET_SUFFIXES = ("password", "secret", "token", "key", "pass")


class Secret(str):
    """A ``str`` whose ``repr`` and ``format`` with ``!r`` never show the value.

    It compares and serialises like the plain string (it *is* one), so code that must use the
    value, e.g. the rclone serializer, just uses it; code that merely prints it shows ``***``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"

    def reveal(self) -> str:
        """The plain value, as an ordinary ``str``."""
        return str.__str__(self)


def is_secret_key(name: str, declared: Collection[str] = ()) -> bool:
    """True when a key named ``name`` holds a secret under the redaction rule."""
    return name in declared or name.lower().endswith(SECRET_SUFFIXES)


def redact(value: Any, declared: Collection[str] = ()) -> Any:
    """A copy of a nested payload with every secret value replaced by ``***``.

    ``Secret`` instances are replaced wherever they appear, whatever their key.
    """
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _present(v) else v)
            if isinstance(k, str) and is_secret_key(k, declared)
            else redact(v, declared)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, declared) for v in value]
    return value


def _present(value: Any) -> bool:
    # An empty or null secret is shown as it is: "not set" is useful and reveals nothing.
    return value not in (None, "")


class RedactingFilter(logging.Filter):
    """Replaces known secret values in log records with ``***``.

    Secrets are registered with :meth:`add` (the destination and run services do so when they
    handle one); mapping arguments are redacted by key with :func:`redact`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._values: set[str] = set()

    def add(self, value: str) -> None:
        if len(value) >= 4:  # shorter values would blank out ordinary words
            self._values.add(str.__str__(value))

    def _scrub(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = redact(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(redact(a) for a in record.args)
        message = record.getMessage()
        scrubbed = self._scrub(message)
        if scrubbed != message or record.args:
            record.msg, record.args = scrubbed, None
        return True


redacting_filter = RedactingFilter()
"""The process-wide filter; :func:`install_redaction` attaches it to a logger's handlers."""


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Attach the redacting filter to ``logger`` (default: the root logger) and its handlers."""
    target = logger or logging.getLogger()
    if redacting_filter not in target.filters:
        target.addFilter(redacting_filter)
    for handler in target.handlers:
        if redacting_filter not in handler.filters:
            handler.addFilter(redacting_filter)
