"""``nsbackup plugins``, ``providers`` and the ``rclone`` helpers."""

from __future__ import annotations

import sys
from typing import Any

from nsbackup.cli.base import Context
from nsbackup.errors import ValidationFailed


def plugins(ctx: Context) -> int:
    report = ctx.cluster.plugins
    lines = []
    for info in report["plugins"]:
        items = ", ".join(f"{k}: {', '.join(v)}" for k, v in info["registered"].items())
        label = f"{info['name']} ({info['distribution']} {info['version']})"
        lines.append(label + (f"  {items}" if items else ""))
    lines += [f"FAILED {f['message']}" for f in report["failures"]]
    ctx.emit(report, "\n".join(lines))
    return 0


def providers(ctx: Context) -> int:
    data = ctx.cluster.providers
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


def _text(ctx: Context) -> str:
    text: str = ctx.args.text
    if text == "-":
        text = sys.stdin.read().rstrip("\n")
        if not text:
            raise ValidationFailed.one("text", "", "required", "nothing to read on stdin")
    return text


def obscure(ctx: Context) -> int:
    from nsbackup.obscure import obscure as rclone_obscure

    result = rclone_obscure(_text(ctx))
    ctx.emit({"obscured": result}, result)
    return 0


def reveal(ctx: Context) -> int:
    from nsbackup.obscure import RevealError
    from nsbackup.obscure import reveal as rclone_reveal

    try:
        result = rclone_reveal(_text(ctx))
    except RevealError as exc:
        raise ValidationFailed.one("text", "***", "invalid_obscured", str(exc)) from None
    ctx.emit({"revealed": result}, result)
    return 0


def register(top: Any, command: Any, group: Any) -> None:
    command(top, "plugins", plugins, "installed plugins and what each registered")
    command(top, "providers", providers, "destination providers and their parameters")
    rc = group("rclone", "rclone-compatible helpers")
    for name, func, what in (
        ("obscure", obscure, "obscure TEXT like rclone"),
        ("reveal", reveal, "reveal TEXT like rclone"),
    ):
        p = command(rc, name, func, what)
        p.add_argument("text", metavar="TEXT", help="the text, or - to read it from stdin")
