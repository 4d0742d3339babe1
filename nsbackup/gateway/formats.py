"""Serializers for the gateway's line formats: HAProxy maps, env files, HAProxy tokens.

Every value that reaches one of these files goes through one of these functions: CR, LF and
NUL never reach a file, and a value that would change the meaning of a line is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from nsbackup.model import CONTROL_CHARS


class FormatError(ValueError):
    pass


_MAP_TOKEN = re.compile(r"[^\s#\\\"']+")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_ENV_VALUE = re.compile(r"[A-Za-z0-9_./:,@+=-]*")
_HAP_TOKEN = re.compile(r"[A-Za-z0-9_./:@\[\]-]+")


def map_line(key: str, value: str, width: int = 0) -> str:
    """``key value`` for an HAProxy map file; neither may contain white space or quotes."""
    for part in (key, value):
        if CONTROL_CHARS.search(part) or not _MAP_TOKEN.fullmatch(part):
            raise FormatError(f"invalid HAProxy map token {part!r}")
    return f"{key.ljust(width)} {value}\n"


def map_file(entries: Iterable[tuple[str, str]], width: int = 0) -> str:
    return "".join(map_line(k, v, width) for k, v in entries)


def env_line(name: str, value: str) -> str:
    if not _ENV_NAME.fullmatch(name) or not _ENV_VALUE.fullmatch(value):
        raise FormatError(f"invalid environment entry {name}={value!r}")
    return f"{name}={value}\n"


def hap_token(value: str) -> str:
    """A word for haproxy.cfg (paths, addresses, names): no spaces, quotes or comments."""
    if not _HAP_TOKEN.fullmatch(value):
        raise FormatError(f"invalid HAProxy configuration token {value!r}")
    return value
