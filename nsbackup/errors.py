"""Error types. Each carries a machine code; the CLI maps them to exit codes in one place."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nsbackup.model import FieldError


class NsbackupError(Exception):
    """Base class. ``exit_code`` is the CLI exit code of SPEC §7."""

    exit_code = 1
    code = "error"


class ValidationFailed(NsbackupError):
    """Bad input: one or more field errors (secret values already hidden)."""

    exit_code = 2
    code = "validation_failed"

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: Sequence[FieldError] = tuple(errors)
        if not self.errors:
            raise ValueError("ValidationFailed needs at least one FieldError")
        super().__init__("; ".join(e.describe() for e in self.errors))


class NotFound(NsbackupError):
    exit_code = 2
    code = "not_found"


class Conflict(NsbackupError):
    exit_code = 2
    code = "conflict"


class Partial(NsbackupError):
    """Some items failed while others succeeded."""

    exit_code = 3
    code = "partial"


class Busy(NsbackupError):
    exit_code = 4
    code = "busy"


class Unreachable(NsbackupError):
    """A destination or service cannot be reached, or refused access."""

    exit_code = 5
    code = "unreachable"


class PluginError(NsbackupError):
    exit_code = 6
    code = "plugin_error"
