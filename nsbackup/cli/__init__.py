"""The ``nsbackup`` command: a thin wrapper over :class:`nsbackup.Cluster`.

Each command parses its arguments, calls one Cluster method and formats the result. Data goes
to stdout, messages to stderr; with ``--json`` stdout is exactly one JSON document. Errors are
mapped to exit codes here and nowhere else (SPEC §7): 0 ok, 1 failure, 2 usage or validation
error (JSON error list on stdout), 3 partial, 4 busy, 5 unreachable or permission denied,
6 plugin error. A traceback is printed only with ``-v``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

from nsbackup import __version__
from nsbackup.cli import (
    backup,
    destination,
    dump,
    gateway,
    info,
    module,
    quickstart,
    restore,
    schedule,
)
from nsbackup.cli.base import Command, Context, Parser, UsageError, path_error, printable
from nsbackup.cli.help import EPILOGS
from nsbackup.errors import NsbackupError, ValidationFailed

log = logging.getLogger("nsbackup")


VERBOSE_HELP = "-v: info messages, and an error's traceback after its message; -vv: debug too"
TOP_EPILOG = """\
exit codes: 0 ok, 1 failure, 2 usage or validation error, 3 partial, 4 busy,
5 unreachable or permission denied, 6 plugin error, 130 stopped by a signal

`nsbackup GROUP COMMAND --help` shows a command's payload fields and an example, e.g.:
  nsbackup destination add --help
  NSBACKUP_REDIS_URL=redis://127.0.0.1:6379/0 REDIS_USER=cluster REDIS_PASSWORD=... \\
      nsbackup backup list"""


def build_parser() -> argparse.ArgumentParser:
    from nsbackup.api import Settings
    from nsbackup.cli import migrate

    settings = Settings.from_env()
    parser = Parser(
        prog="nsbackup",
        description="Backup plumbing for NS8-style clusters: destinations, schedules, the "
        "per-node gateway, restic runs, restores and the cluster dump.",
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(settings=settings)
    parser.add_argument("--version", action="version", version=f"nsbackup {__version__}")
    parser.add_argument(
        "--redis",
        default=settings.redis_url,
        metavar="URL",
        help="Redis URL to read (default $NSBACKUP_REDIS_URL or redis://127.0.0.1:6379/0); "
        "credentials from the URL or $REDIS_USER/$REDIS_PASSWORD",
    )
    parser.add_argument(
        "--redis-leader",
        default=settings.leader_url,
        metavar="URL",
        help="Redis URL for writes (default $NSBACKUP_REDIS_LEADER_URL, else the --redis URL)",
    )
    parser.add_argument(
        "--node", default=settings.node_id, metavar="ID", help="this node's id (default $NODE_ID)"
    )
    parser.add_argument(
        "--repo-dir",
        default=settings.repo_dir,
        metavar="DIR",
        help="local disk served for node-hosted (cluster) destinations (default "
        "$NSBACKUP_REPO_DIR, else /var/lib/nsbackup/repo)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print exactly one JSON document on stdout"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    groups = parser.add_subparsers(dest="group", metavar="GROUP", parser_class=Parser)
    groups.required = True

    # --json and -v are accepted after the command too (`nsbackup plugins --json`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print exactly one JSON document on stdout",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP
    )

    def command(sub: Any, name: str, func: Command, help_: str) -> Any:
        words = f"{getattr(sub, 'group_name', '')} {name}".strip()
        p = sub.add_parser(
            name,
            help=help_,
            description=help_[:1].upper() + help_[1:] + ".",
            epilog=EPILOGS.get(words),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        p.set_defaults(func=func, command_parser=p)
        return p

    def group(name: str, help_: str) -> Any:
        sub = groups.add_parser(name, help=help_, description=help_[:1].upper() + help_[1:] + ".")
        commands = sub.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
        commands.required = True
        commands.group_name = name  # type: ignore[attr-defined]
        return commands

    info.register(groups, command, group)
    destination.register(group("destination", "backup destinations"), command)
    backup.register(group("backup", "backup schedules"), command)
    gateway.register(group("gateway", "the per-node backup gateway"), command)
    module.register(group("module", "what runs in a module's context"), command)
    schedule.register(group("schedule", "systemd timers of the schedules"), command)
    restore.register(group("restore", "restores and restore grants"), command)
    dump.register(group("dump", "the encrypted cluster dump (disaster recovery)"), command)
    schedule.register_scheduler(groups, command)
    quickstart.register(groups, command)
    migrate.register(groups, command)
    return parser


class Interrupted(NsbackupError):
    """SIGINT/SIGTERM ended the command (exit 130, like a shell)."""

    exit_code = 130
    code = "interrupted"


def _report(ctx: Context, exc: NsbackupError) -> int:
    """The one error boundary: each message once on stderr; with ``--json`` also exactly one
    JSON document on stdout (the error list for a validation error, ``{"error","message"}``
    otherwise). In text mode stdout stays empty: the person reading sees each message once."""
    if ctx.json:
        print(json.dumps(exc.to_json(), indent=2, ensure_ascii=False), file=ctx.out)
    lines = [e.describe() for e in exc.errors] if isinstance(exc, ValidationFailed) else [str(exc)]
    for line in lines:
        print(f"error: {printable(line)}", file=ctx.err)
    return exc.exit_code


def _usage(exc: UsageError, json_mode: bool, out: TextIO, err: TextIO) -> int:
    """argparse's own form on stderr (the usage line, then ``PROG: error: MESSAGE``); with
    ``--json`` the error list on stdout as for any validation error."""
    if json_mode:
        error = ValidationFailed.one("", None, "usage", str(exc))
        print(json.dumps(error.to_json(), indent=2, ensure_ascii=False), file=out)
    prog, _, message = str(exc).partition(": ")
    print(exc.usage.rstrip("\n"), file=err)
    print(f"{prog}: error: {printable(message)}", file=err)
    return 2


def _path_option(args: argparse.Namespace, filename: str) -> tuple[str | None, str]:
    """The command-line option whose path ``filename`` is, or lies under."""
    target = os.path.abspath(filename)
    for option, value in vars(args).items():
        if option in ("data", "redis", "redis_leader") or not isinstance(value, str) or not value:
            continue
        given = os.path.abspath(value)
        if target == given or target.startswith(given.rstrip("/") + "/"):
            return option.replace("_", "-"), value
    return None, filename


def _unexpected(args: argparse.Namespace, exc: Exception) -> NsbackupError:
    """What a user is told about an exception no service turned into an NsbackupError: a file
    system error names the option and the path (permission: exit 5; a file where a directory
    belongs: 2); anything else is a bug and says so."""
    if isinstance(exc, OSError) and exc.filename is not None:
        path = os.fsdecode(exc.filename)
        option, given = _path_option(args, path)
        same = os.path.abspath(given) == os.path.abspath(path)
        return path_error(exc, option, given if same else f"{given} ({path})")
    hint = "" if args.verbose else " (-v shows where)"
    return NsbackupError(f"internal error: {type(exc).__name__}{hint}")


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    from nsbackup.secret import install_redaction

    install_redaction(root)
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the command's own parser, with the command's usage line
            command_parser = getattr(args, "command_parser", None) or parser
            command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as exc:
        return _usage(exc, "--json" in argv, out, err)
    root.setLevel(
        logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    )
    ctx = Context(args, out, err)
    failure: BaseException
    try:
        code: int = args.func(ctx)
        return code
    except NsbackupError as exc:
        error, failure = exc, exc
    except KeyboardInterrupt as exc:
        error, failure = Interrupted("stopped by SIGINT or SIGTERM"), exc
    except Exception as exc:  # the boundary: a message, never a raw traceback
        error, failure = _unexpected(args, exc), exc
    code = _report(ctx, error)
    if args.verbose and not isinstance(failure, KeyboardInterrupt):
        traceback.print_exception(failure, file=err)
    return code


def entry() -> None:
    sys.exit(main())
