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
from nsbackup.errors import NsbackupError, ValidationFailed
from nsbackup.model import DestinationRequest, FieldError
from nsbackup.obscure import RevealError, obscure, reveal
from nsbackup.plugins import PluginHost, load_plugins
from nsbackup.secret import install_redaction

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

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    @property
    def host(self) -> PluginHost:
        if self._host is None:
            self._host = load_plugins()
            for failure in self._host.failures:
                print(f"warning: {failure}", file=self.err)
        return self._host

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
        "--node", default=os.environ.get("NODE_ID"), help="this node's id (default $NODE_ID)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    groups = parser.add_subparsers(dest="group", metavar="GROUP", parser_class=_Parser)
    groups.required = True

    def command(sub: Any, name: str, func: Callable[[Context], int], help_: str) -> Any:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    command(groups, "plugins", cmd_plugins, "installed plugins and what each registered")
    command(groups, "providers", cmd_providers, "destination providers and their parameters")

    dest = groups.add_parser("destination", help="backup destinations")
    dest_sub = dest.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    dest_sub.required = True
    render = command(
        dest_sub,
        "render",
        cmd_destination_render,
        "print the rclone section a request would produce (no Redis needed)",
    )
    render.add_argument("--data", required=True, help="request JSON, @FILE or - (stdin)")
    render.add_argument("--show-secrets", action="store_true", help="show secret values")

    rc = groups.add_parser("rclone", help="rclone-compatible helpers")
    rc_sub = rc.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    rc_sub.required = True
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
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
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
