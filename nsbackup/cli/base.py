"""What every command shares: the parser class, the context (options, output, the Cluster),
reading ``--data`` and printing results.

Commands parse their arguments, call one :class:`nsbackup.Cluster` method and format the
result; errors are :class:`~nsbackup.errors.NsbackupError`\\ s turned into exit codes in one
place (:func:`nsbackup.cli.main`).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from nsbackup.errors import NsbackupError, PermissionDenied, ValidationFailed

if TYPE_CHECKING:
    from nsbackup.api import Cluster

# A --data document deeper than this is refused before it can exhaust the stack.
MAX_DEPTH = 64
# A --data document longer than this is refused before it is parsed (every field has its own,
# smaller bound: this one keeps `--data - < /dev/zero` from filling the memory).
MAX_DATA = 4 * 1024 * 1024
# One line of a message on stderr: longer ones are cut (values a user pasted can be huge).
MAX_LINE = 1000

# Command options that override a Settings field (nsbackup.api.Settings).
SETTING_OPTIONS = {
    "gateway": "gateway_url",
    "modules_dir": "modules_dir",
    "metrics_dir": "metrics_dir",
    "runner": "runner",
    "module": "module_id",
    "module_dir": "module_dir",
}


class UsageError(Exception):
    """A command line argparse refuses: ``usage`` is the parser's usage line(s)."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", self.format_usage())


Command = Callable[["Context"], int]


class Context:
    """What a command needs: parsed options, output streams and the Cluster (made on first
    use, so commands that need no Redis never touch it)."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self._cluster: Cluster | None = None

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            from nsbackup.api import Cluster

            settings = self.settings
            self._cluster = Cluster.from_url(
                self.args.redis,
                leader_url=self.args.redis_leader,
                node_id=self.args.node,
                repo_dir=self.args.repo_dir,
                username=settings.username or "",
                password=settings.password or "",
                settings=settings,
            )
        return self._cluster

    @property
    def settings(self) -> Any:
        """The environment's settings with this command's options applied."""
        import dataclasses

        settings = self.args.settings
        changes = {
            field: getattr(self.args, option)
            for option, field in SETTING_OPTIONS.items()
            if getattr(self.args, option, None) is not None
        }
        if hasattr(self.args, "gateway") and self.args.gateway is None:
            # A command that talks to the gateway checks $NSBACKUP_GATEWAY_URL like --gateway.
            try:
                _gateway_url(settings.gateway_url)
            except argparse.ArgumentTypeError as exc:
                raise ValidationFailed.one(
                    "gateway",
                    _shown_url(settings.gateway_url),
                    "invalid_url",
                    f"NSBACKUP_GATEWAY_URL: {exc}",
                ) from None
        return dataclasses.replace(settings, **changes) if changes else settings

    def emit(self, data: Any, text: str | None = None) -> None:
        """Print ``data`` as JSON with ``--json``, else ``text`` (or JSON when no text)."""
        if self.json or text is None:
            print(json.dumps(data, indent=2, ensure_ascii=False), file=self.out)
        elif text:
            print(text, file=self.out)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.err)

    def data(self) -> Any:
        return read_data(self.args.data, sys.stdin)


def read_data(spec: str, stdin: TextIO) -> Any:
    """``--data`` value: inline JSON, ``@FILE`` or ``-`` for standard input."""
    if spec == "-":
        raw = stdin.read(MAX_DATA + 1)
    elif spec.startswith("@"):
        try:
            with open(spec[1:], encoding="utf-8") as handle:
                raw = handle.read(MAX_DATA + 1)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValidationFailed.one(
                "data", spec, "unreadable_file", f"cannot read {spec[1:]}: {reason}"
            ) from None
    else:
        raw = spec
    if len(raw) > MAX_DATA:
        raise ValidationFailed.one(
            "data", None, "maxLength", f"--data is longer than {MAX_DATA // (1024 * 1024)} MiB"
        )
    try:
        value = json.loads(raw, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise ValidationFailed.one(
            "data",
            None,
            "invalid_json",
            f"--data is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except _NotJson as exc:
        raise ValidationFailed.one(
            "data", None, "invalid_json", f"--data is not valid JSON: {exc} is not a JSON number"
        ) from None
    except RecursionError:
        value = None
        too_deep = True
    else:
        too_deep = _depth(value) > MAX_DEPTH
    if too_deep:
        raise ValidationFailed.one(
            "data", None, "too_deep", f"--data is nested more than {MAX_DEPTH} levels deep"
        )
    return value


class _NotJson(ValueError):
    pass


def _not_json(constant: str) -> NoReturn:
    # Python's json reads NaN, Infinity and -Infinity, which JSON has not: they would come
    # back in outputs no other JSON reader accepts.
    raise _NotJson(constant)


def add_gateway(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gateway",
        metavar="URL",
        type=_gateway_url,
        help="the gateway, http://HOST:PORT (default $NSBACKUP_GATEWAY_URL)",
    )


def _gateway_url(text: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        port, parts = None, None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or (port is not None and not 0 < port < 65536)
    ):
        raise argparse.ArgumentTypeError(f"{_shown_url(text)!r} is not http://HOST:PORT")
    return text


def _shown_url(text: str) -> str:
    # A URL with credentials in it is not repeated: the password would be in the error.
    return "***" if "@" in text else text[:100]


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        metavar="JSON",
        help="the request: inline JSON, @FILE or - (standard input)",
    )


# -- what a human reads ---------------------------------------------------------------------


def printable(text: str, limit: int = MAX_LINE) -> str:
    """``text`` as one terminal line: control characters escaped (``\\n``, ``\\x1b``), cut
    after ``limit`` characters. Values users paste (and messages quoting them) can hold
    anything."""
    from nsbackup.model import CONTROL_CHARS  # on output only: keeps attrs out of --help

    shown = CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "") -> str:
    """Rows in columns as wide as their widest cell (the last one is not padded)."""
    cells = [[printable(str(c), 200) for c in row] for row in [list(headers), *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        lines.append(indent + "  ".join(padded).rstrip())
    return "\n".join(lines)


# -- paths given on the command line ----------------------------------------------------------


def path_error(exc: OSError, option: str | None, path: str, doing: str = "") -> NsbackupError:
    """The error for ``exc`` met while using ``path`` (given as ``--option``, when ``option``):
    permission problems exit 5, a path of the wrong kind (a file where a directory is needed,
    a missing parent) exits 2, anything else (a full disk) 1."""
    where = f"--{option} {path}" if option else path
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        because = f"{doing} ({reason})" if doing else reason
        return PermissionDenied(f"permission denied: {where}: {because}")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        reason = f"not a directory ({reason})"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.ENAMETOOLONG):
        field = option.replace("-", "_") if option else "path"
        return ValidationFailed.one(field, path, "invalid_path", f"{path}: {reason}")
    return NsbackupError(f"{where}: {reason}")


def check_directory(option: str, path: str, kind: str = "existing") -> None:
    """Check ``--option path`` before anything runs. ``kind``: ``existing`` (a directory that
    exists), ``new`` (nothing there yet, in an existing directory) or ``any`` (either). A
    directory that exists or would be created must be one this process may write in; the
    check leaves nothing behind."""
    import tempfile

    field = option.replace("-", "_")

    def refuse(message: str) -> ValidationFailed:
        return ValidationFailed.one(field, path, "invalid_path", message)

    if os.path.lexists(path):
        if kind == "new":
            raise refuse(f"--{option} needs a new directory: {path} exists already")
        if not os.path.isdir(path):
            raise refuse(f"{path}: not a directory")
        where = path
    elif kind == "existing":
        raise refuse(f"{path}: no such directory")
    else:
        where = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(where):
            raise refuse(f"{path}: {where} is not an existing directory")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        raise path_error(exc, option, path, "cannot create files there") from None
