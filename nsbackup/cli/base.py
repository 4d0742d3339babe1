"""What every command shares: the parser class, the context (options, output, the Cluster),
reading ``--data`` and printing results.

Commands parse their arguments, call one :class:`nsbackup.Cluster` method and format the
result; errors are :class:`~nsbackup.errors.NsbackupError`\\ s turned into exit codes in one
place (:func:`nsbackup.cli.main`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from nsbackup.errors import ValidationFailed

if TYPE_CHECKING:
    from nsbackup.api import Cluster

# A --data document deeper than this is refused before it can exhaust the stack.
MAX_DEPTH = 64

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
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


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
        raw = stdin.read()
    elif spec.startswith("@"):
        try:
            with open(spec[1:], encoding="utf-8") as handle:
                raw = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValidationFailed.one(
                "data", spec, "unreadable_file", f"cannot read {spec[1:]}: {reason}"
            ) from None
    else:
        raw = spec
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationFailed.one(
            "data",
            None,
            "invalid_json",
            f"--data is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
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
    parser.add_argument("--data", required=True, help="the request: JSON, @FILE or - (stdin)")
