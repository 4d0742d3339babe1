"""Error types: what callers of the API catch, and what the CLI maps to exit codes in one place.

Every failure the API reports is an :class:`NsbackupError` with a machine ``code``, the CLI
``exit_code`` of SPEC §7 and a ``to_json()`` that is what ``--json`` prints. Redis, HTTP and
subprocess exceptions never reach a caller as they are.

=====================  ====  ==================================================================
class                  exit  meaning
=====================  ====  ==================================================================
``ValidationFailed``   2     bad input; ``errors`` is NS8's ``[{"field","parameter","value",
                             "error"}]`` list (``to_json()``)
``NotFound``           2     an id that does not exist (a ``ValidationFailed``: NS8 reports it
                             as a validation error too)
``Conflict``           2     the thing exists already, e.g. ``backup_repository_exists``
``Partial``            3     some items failed, others succeeded
``Busy``               4     a lock was held past the wait
``Unreachable``        5     Redis, a destination or a service cannot be reached
``PermissionDenied``   5     the caller's credentials do not allow it (Redis ``NOPERM``, HTTP
                             401/403); nothing was written
``PluginError``        6     a plugin failed or is missing
=====================  ====  ==================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nsbackup.model import FieldError


class NsbackupError(Exception):
    """Base class of every error the API raises."""

    exit_code = 1
    code = "error"

    def to_json(self) -> Any:
        """What ``--json`` prints for this error."""
        return {"error": self.code, "message": str(self)}


class ValidationFailed(NsbackupError):
    """Bad input: one or more field errors (secret values already hidden)."""

    exit_code = 2
    code = "validation_failed"

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: Sequence[FieldError] = tuple(errors)
        if not self.errors:
            raise ValueError(f"{type(self).__name__} needs at least one FieldError")
        super().__init__("; ".join(e.describe() for e in self.errors))

    @classmethod
    def one(cls, field: str, value: Any, error: str, message: str) -> ValidationFailed:
        """An error about one field (``parameter`` is the field's name)."""
        from nsbackup.model import FieldError

        return cls([FieldError(field, field, value, error, message)])

    def to_json(self) -> list[dict[str, Any]]:
        """NS8's validation-error list: ``[{"field","parameter","value","error","message"}]``."""
        return [e.as_dict() for e in self.errors]


class NotFound(ValidationFailed):
    """An id that does not exist. NS8 reports these as validation errors (exit 2) with codes
    such as ``backup_repository_not_found`` or ``backup_not_found``."""

    code = "not_found"


class Conflict(ValidationFailed):
    """The object exists already (``backup_repository_exists``)."""

    code = "conflict"


class Partial(NsbackupError):
    """Some items failed while others succeeded. ``result`` holds the whole report."""

    exit_code = 3
    code = "partial"

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result

    def to_json(self) -> Any:
        return self.result if self.result is not None else super().to_json()


class Busy(NsbackupError):
    exit_code = 4
    code = "busy"


class Unreachable(NsbackupError):
    """A destination or service (Redis, the gateway, a binary) cannot be reached."""

    exit_code = 5
    code = "unreachable"


class PermissionDenied(NsbackupError):
    """The caller's identity is not allowed to do this; nothing was written."""

    exit_code = 5
    code = "permission_denied"


class PluginError(NsbackupError):
    exit_code = 6
    code = "plugin_error"
