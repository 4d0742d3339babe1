"""The ``nsbackup`` command: parse, call the library, print, map errors to exit codes.

Data goes to stdout, messages to stderr; with ``--json`` stdout is exactly one JSON document.
Exit codes (SPEC §7): 0 ok, 1 failure, 2 usage or validation error (JSON error list on stdout),
3 partial, 4 busy, 5 unreachable, 6 plugin error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from nsbackup import __version__, destinations
from nsbackup.destinations import DestinationService
from nsbackup.errors import NsbackupError, ValidationFailed
from nsbackup.model import DestinationRequest, FieldError
from nsbackup.obscure import RevealError, obscure, reveal
from nsbackup.plugins import PluginHost, load_plugins
from nsbackup.schedules import ScheduleService
from nsbackup.secret import install_redaction
from nsbackup.store import Store, connect

log = logging.getLogger("nsbackup")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


class Context:
    """What a command needs: parsed options, the plugin host (loaded on first use), output."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self._host: PluginHost | None = None
        self._store: Store | None = None

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    @property
    def host(self) -> PluginHost:
        if self._host is None:
            self._host = load_plugins()  # failures are logged (stderr) by the loader
        return self._host

    @property
    def store(self) -> Store:
        """Reads from ``--redis`` (e.g. the local replica), writes to ``--redis-leader``."""
        if self._store is None:
            reader = connect(self.args.redis)
            leader = self.args.redis_leader
            writer = connect(leader) if leader and leader != self.args.redis else reader
            self._store = Store(reader, writer)
        return self._store

    def destinations(self) -> DestinationService:
        return DestinationService(
            self.store, self.host, node_id=self.args.node, repo_dir=self.args.repo_dir
        )

    def emit(self, data: Any, text: str | None = None) -> None:
        """Print ``data`` as JSON with ``--json``, else ``text`` (or JSON when no text)."""
        if self.json or text is None:
            print(json.dumps(data, indent=2, ensure_ascii=False), file=self.out)
        else:
            print(text, file=self.out)


def read_data(spec: str, stdin: TextIO) -> Any:
    """``--data`` value: inline JSON, ``@FILE`` or ``-`` for standard input."""
    if spec == "-":
        raw = stdin.read()
    elif spec.startswith("@"):
        try:
            with open(spec[1:], encoding="utf-8") as handle:
                raw = handle.read()
        except OSError as exc:
            raise ValidationFailed(
                [
                    FieldError(
                        "data",
                        "data",
                        spec,
                        "unreadable_file",
                        f"cannot read {spec[1:]}: {exc.strerror}",
                    )
                ]
            ) from None
    else:
        raw = spec
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(
            [
                FieldError(
                    "data",
                    "data",
                    None,
                    "invalid_json",
                    f"--data is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                )
            ]
        ) from None


# -- commands ---------------------------------------------------------------------------------


def cmd_plugins(ctx: Context) -> int:
    host = ctx.host
    data = {
        "plugins": [info.as_dict() for info in host.plugins.values()],
        "failures": [
            {
                "name": f.name,
                "distribution": f.dist,
                "version": f.version,
                "error": f.reason,
                "message": str(f),
            }
            for f in host.failures
        ],
    }
    lines = []
    for info in host.plugins.values():
        items = ", ".join(f"{k}: {', '.join(v)}" for k, v in info.registered.items())
        lines.append(f"{info.name} ({info.dist} {info.version})" + (f"  {items}" if items else ""))
    lines += [f"FAILED {f}" for f in host.failures]
    ctx.emit(data, "\n".join(lines))
    return 0


def cmd_providers(ctx: Context) -> int:
    host = ctx.host
    data: list[dict[str, Any]] = [
        {
            "name": p.name,
            "description": p.description,
            "url_form": p.url_form,
            "plugin": host.owner("provider", p.name),
            "parameters": [param.as_dict() for param in p.parameters],
        }
        for p in sorted(host.providers.values(), key=lambda p: p.name)
    ]
    lines = []
    for item in data:
        lines.append(f"{item['name']}: {item['description']}")
        lines.append(f"    url: {item['url_form']}")
        for param in item["parameters"]:
            flags = [
                f for f, on in (("required", param["required"]), ("secret", param["secret"])) if on
            ]
            lines.append(
                f"    {param['name']}{' (' + ', '.join(flags) + ')' if flags else ''}"
                f": {param['description']}"
            )
    ctx.emit(data, "\n".join(lines))
    return 0


def cmd_destination_render(ctx: Context) -> int:
    payload = read_data(ctx.args.data, sys.stdin)
    request = DestinationRequest.from_payload(payload)
    prepared = destinations.prepare(ctx.host, request)
    result = destinations.render_result(prepared, show_secrets=ctx.args.show_secrets)
    ctx.emit(result, result["rclone_conf"].rstrip("\n"))
    return 0


def cmd_destination_add(ctx: Context) -> int:
    result = ctx.destinations().add(read_data(ctx.args.data, sys.stdin))
    ctx.emit(result, f"{result['id']}")  # the Restic password only in --json output
    return 0


def cmd_destination_alter(ctx: Context) -> int:
    ctx.destinations().alter(read_data(ctx.args.data, sys.stdin))
    ctx.emit({}, "")
    return 0


def cmd_destination_remove(ctx: Context) -> int:
    result = ctx.destinations().remove(ctx.args.id)
    ctx.emit(
        result,
        f"removed {result['id']}"
        + (
            f" and backups {', '.join(map(str, result['removed_backups']))}"
            if result["removed_backups"]
            else ""
        ),
    )
    return 0


def cmd_destination_list(ctx: Context) -> int:
    result = ctx.destinations().list(show_secrets=ctx.args.show_secrets)
    lines = [
        f"{r['id']}  {r['provider']:<10} {r['name']}  ({r['url']})" for r in result["repositories"]
    ]
    ctx.emit(result, "\n".join(lines) if lines else "no destinations")
    return 0


def cmd_destination_validate(ctx: Context) -> int:
    result = ctx.destinations().validate_request(read_data(ctx.args.data, sys.stdin))
    ok = [n["node_id"] for n in result["nodes"] if n["ok"]]
    ctx.emit(result, f"{result['id']}: usable from node(s) {', '.join(ok)}")
    return 0


def cmd_backup_add(ctx: Context) -> int:
    bid = ScheduleService(ctx.store).add(read_data(ctx.args.data, sys.stdin))
    ctx.emit(bid, str(bid))
    return 0


def cmd_backup_alter(ctx: Context) -> int:
    ScheduleService(ctx.store).alter(read_data(ctx.args.data, sys.stdin))
    ctx.emit({}, "")
    return 0


def cmd_backup_remove(ctx: Context) -> int:
    ScheduleService(ctx.store).remove(ctx.args.id)
    ctx.emit({"id": ctx.args.id}, f"removed backup {ctx.args.id}")
    return 0


def cmd_backup_list(ctx: Context) -> int:
    result = ScheduleService(ctx.store).list()
    lines = []
    for b in result["backups"]:
        state = "enabled" if b["enabled"] else "disabled"
        lines.append(
            f"{b['id']}  {b['name']}  -> {b['repository']}  {b['schedule']}  "
            f"keep {b['retention']}  {state}"
        )
        for item in b["instances"]:
            status = item["status"]
            shown = "never run" if status is None else ("ok" if status["success"] else "FAILED")
            lines.append(f"    {item['module_id']:<20} {shown}")
    ctx.emit(result, "\n".join(lines) if lines else "no backups")
    return 0


def _node_id(ctx: Context) -> str:
    if not ctx.args.node:
        raise ValidationFailed(
            [
                FieldError(
                    "node",
                    "node",
                    None,
                    "required",
                    "the local node id is required (--node or NODE_ID)",
                )
            ]
        )
    return str(ctx.args.node)


def cmd_gateway_render(ctx: Context) -> int:
    from pathlib import Path

    from nsbackup.gateway.context import GatewaySettings
    from nsbackup.gateway.render import build_context, render_files, write_files

    node = _node_id(ctx)
    settings = GatewaySettings(
        Path(ctx.args.out).resolve(), listen=ctx.args.listen, repo_dir=ctx.args.repo_dir
    )
    state = ctx.store.load()
    context, problems = build_context(state, ctx.host, node, settings)
    changed = write_files(settings.state_dir, render_files(ctx.host, context))
    for problem in problems:
        print(f"warning: {problem}", file=ctx.err)
    result = {
        "directory": str(settings.state_dir),
        "changed": changed,
        "skipped": [{"id": p.destination, "reason": p.reason} for p in problems],
    }
    ctx.emit(result, f"{len(changed)} file(s) changed in {settings.state_dir}")
    return 3 if problems else 0


def cmd_gateway_serve(ctx: Context) -> int:
    import signal
    from pathlib import Path

    from nsbackup.gateway.context import GatewaySettings
    from nsbackup.gateway.serve import Gateway

    node = _node_id(ctx)
    settings = GatewaySettings(
        Path(ctx.args.state_dir).resolve(),
        listen=ctx.args.listen,
        repo_dir=str(Path(ctx.args.repo_dir).resolve()),
    )
    gateway = Gateway(ctx.store, ctx.host, node, settings)

    def stop(signum: int, frame: object) -> None:
        gateway.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        gateway.start()
        for problem in gateway.problems:
            print(f"warning: {problem}", file=ctx.err)
        for dropped in sorted(gateway.dropped):
            print(
                f"warning: destination {dropped} dropped: its backend failed to start", file=ctx.err
            )
        print(f"gateway of node {node} listening on {settings.listen}", file=ctx.err, flush=True)
        gateway.serve_forever()
    finally:
        gateway.stop()
    return 0


def _secret_argument(ctx: Context) -> str:
    text: str = ctx.args.text
    if text == "-":
        text = sys.stdin.read().rstrip("\n")
    return text


def cmd_rclone_obscure(ctx: Context) -> int:
    result = obscure(_secret_argument(ctx))
    ctx.emit({"obscured": result}, result)
    return 0


def cmd_rclone_reveal(ctx: Context) -> int:
    try:
        result = reveal(_secret_argument(ctx))
    except RevealError as exc:
        raise ValidationFailed(
            [FieldError("text", "text", "***", "invalid_obscured", str(exc))]
        ) from None
    ctx.emit({"revealed": result}, result)
    return 0


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nsbackup", description="Backup plumbing for NS8-style clusters.")
    parser.add_argument("--version", action="version", version=f"nsbackup {__version__}")
    parser.add_argument(
        "--redis",
        default=os.environ.get("NSBACKUP_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis URL (default $NSBACKUP_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--redis-leader",
        default=os.environ.get("NSBACKUP_REDIS_LEADER_URL"),
        help="Redis URL for writes (default $NSBACKUP_REDIS_LEADER_URL, else the --redis URL)",
    )
    parser.add_argument(
        "--node", default=os.environ.get("NODE_ID"), help="this node's id (default $NODE_ID)"
    )
    parser.add_argument(
        "--repo-dir",
        default=os.environ.get("NSBACKUP_REPO_DIR", destinations.DEFAULT_REPO_DIR),
        help="local disk served for node-hosted (cluster) destinations ($NSBACKUP_REPO_DIR)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    groups = parser.add_subparsers(dest="group", metavar="GROUP", parser_class=_Parser)
    groups.required = True

    # --json and -v are accepted after the command too (`nsbackup plugins --json`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)

    def command(sub: Any, name: str, func: Callable[[Context], int], help_: str) -> Any:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(func=func)
        return p

    def group(name: str, help_: str) -> Any:
        sub = groups.add_parser(name, help=help_).add_subparsers(
            dest="command", metavar="COMMAND", parser_class=_Parser
        )
        sub.required = True
        return sub

    def gateway_options(p: Any) -> None:
        p.add_argument(
            "--listen",
            default="0.0.0.0:4694",
            metavar="ADDR:PORT",
            help="address the gateway listens on (default 0.0.0.0:4694)",
        )
        p.add_argument(
            "--repo-dir",
            default=argparse.SUPPRESS,
            metavar="DIR",
            help="local disk served for node-hosted (cluster) destinations",
        )

    command(groups, "plugins", cmd_plugins, "installed plugins and what each registered")
    command(groups, "providers", cmd_providers, "destination providers and their parameters")

    dest_sub = group("destination", "backup destinations")
    render = command(
        dest_sub,
        "render",
        cmd_destination_render,
        "print the rclone section a request would produce (no Redis needed)",
    )
    render.add_argument("--data", required=True, help="request JSON, @FILE or - (stdin)")
    render.add_argument("--show-secrets", action="store_true", help="show secret values")
    for name, func, what in (
        (
            "add",
            cmd_destination_add,
            "validate on the nodes, then save; prints id (and password with --json)",
        ),
        ("alter", cmd_destination_alter, "alter; an empty secret keeps the stored one"),
        ("validate", cmd_destination_validate, "validation only, nothing saved"),
    ):
        p = command(dest_sub, name, func, what)
        p.add_argument("--data", required=True, help="request JSON, @FILE or - (stdin)")
    p = command(
        dest_sub,
        "remove",
        cmd_destination_remove,
        "remove a destination and the backups that use it",
    )
    p.add_argument("id", metavar="ID")
    p = command(dest_sub, "list", cmd_destination_list, "destinations, without secrets")
    p.add_argument(
        "--show-secrets",
        action="store_true",
        help="include secrets and Restic passwords (node-privileged users only)",
    )

    backup_sub = group("backup", "backup schedules")
    for name, func, what in (
        ("add", cmd_backup_add, "add a schedule; prints its id"),
        ("alter", cmd_backup_alter, "alter a schedule (its destination cannot change)"),
    ):
        p = command(backup_sub, name, func, what)
        p.add_argument("--data", required=True, help="request JSON, @FILE or - (stdin)")
    p = command(backup_sub, "remove", cmd_backup_remove, "remove a schedule")
    p.add_argument("id", metavar="ID", type=int)
    command(backup_sub, "list", cmd_backup_list, "schedules with per-module status")

    gateway_sub = group("gateway", "the per-node backup gateway")
    p = command(gateway_sub, "render", cmd_gateway_render, "write the gateway files for this node")
    p.add_argument("--out", required=True, metavar="DIR", help="directory of the files")
    gateway_options(p)

    p = command(
        gateway_sub,
        "serve",
        cmd_gateway_serve,
        "run the gateway until stopped (SIGTERM/SIGINT stop it cleanly)",
    )
    p.add_argument(
        "--state-dir",
        required=True,
        metavar="DIR",
        help="where the gateway files, sockets and pid files live",
    )
    gateway_options(p)

    rc_sub = group("rclone", "rclone-compatible helpers")
    for name, func, what in (
        ("obscure", cmd_rclone_obscure, "obscure TEXT like rclone"),
        ("reveal", cmd_rclone_reveal, "reveal TEXT like rclone"),
    ):
        p = command(rc_sub, name, func, what)
        p.add_argument("text", metavar="TEXT", help="the text, or - to read it from stdin")
    return parser


def _print_errors(ctx_out: TextIO, err: TextIO, errors: Sequence[FieldError]) -> None:
    print(json.dumps([e.as_dict() for e in errors], indent=2, ensure_ascii=False), file=ctx_out)
    for e in errors:
        print(f"error: {e.describe()}", file=err)


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    install_redaction(root)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        _print_errors(out, err, [FieldError("", "", None, "usage", str(exc))])
        return 2
    root.setLevel(
        logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    )
    ctx = Context(args, out, err)
    try:
        code: int = args.func(ctx)
        return code
    except ValidationFailed as exc:
        _print_errors(out, err, exc.errors)
        return exc.exit_code
    except NsbackupError as exc:
        if ctx.json:
            print(json.dumps({"error": exc.code, "message": str(exc)}), file=out)
        print(f"error: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())
