"""The one reader and writer of rclone configuration text.

rclone reads ``key = value`` lines: it trims white space around the value, then removes one
pair of enclosing ``\"\"\"`` (or backticks); ``#``/``;`` start a comment only at the start of a
line; lines cannot continue. The writer below follows those rules: a value that would not come
back unchanged is wrapped in ``\"\"\"``, and a value rclone cannot hold at all (a control
character: CR, LF, NUL, ...) is refused with :class:`IniError`. ``%`` is an ordinary character.

Reading uses the standard library's ``configparser`` with interpolation off, key case kept,
no DEFAULT section and no continuation lines, then applies rclone's unquoting.
"""

from __future__ import annotations

import configparser
import csv
import io
import re
from collections.abc import Iterable, Mapping

from nsbackup.model import CONTROL_CHARS

# rclone remote names: letters, digits, "_", "-", ".", "+", "@" and inner spaces.
SECTION_NAME = re.compile(r"[\w.+@-](?:[\w.+@ -]*[\w.+@-])?")
OPTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_NO_DEFAULT = "\x00no-default-section"


class IniError(ValueError):
    """Text or values that cannot round-trip through an rclone config file.

    ``option`` names the offending key when there is one.
    """

    def __init__(self, message: str, option: str = "") -> None:
        super().__init__(message)
        self.option = option


def check_value(value: str, option: str = "") -> None:
    """Raise :class:`IniError` when ``value`` cannot be written to an rclone config."""
    if not isinstance(value, str):
        raise IniError(f"value of {option or 'option'} must be a string", option)
    if CONTROL_CHARS.search(value):
        raise IniError(
            f"{option or 'value'} must not contain control characters (CR, LF, NUL, TAB, ...)",
            option,
        )


def encode_value(value: str, option: str = "") -> str:
    """The text to write after ``key = `` so that rclone reads back exactly ``value``."""
    check_value(value, option)
    if value != value.strip() or value.startswith(('"""', "`")) or value.endswith(("`", '"""')):
        return f'"""{value}"""'
    return value


def decode_value(raw: str) -> str:
    """rclone's reading of the text after ``key =`` (the inverse of :func:`encode_value`)."""
    value = raw.strip()
    if len(value) >= 6 and value.startswith('"""') and value.endswith('"""'):
        return value[3:-3]
    if len(value) >= 2 and value.startswith("`") and value.endswith("`"):
        return value[1:-1]
    return value


def render_section(name: str, options: Mapping[str, str]) -> str:
    """One ``[name]`` section with ``key = value`` lines, newline-terminated."""
    if not SECTION_NAME.fullmatch(name):
        raise IniError(f"invalid section name {name!r}")
    lines = [f"[{name}]"]
    for key, value in options.items():
        if not OPTION_NAME.fullmatch(key):
            raise IniError(f"invalid option name {key!r}", key)
        lines.append(f"{key} = {encode_value(value, key)}")
    return "\n".join(lines) + "\n"


def render(sections: Mapping[str, Mapping[str, str]], comments: Iterable[str] = ()) -> str:
    """A whole config file: optional ``;`` comment lines, then each section."""
    head = ""
    for comment in comments:
        check_value(comment)
        head += f"; {comment}".rstrip() + "\n"
    return head + "\n".join(render_section(n, o) for n, o in sections.items())


def _parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,
        default_section=_NO_DEFAULT,
        strict=True,
        empty_lines_in_values=False,
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=None,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    return parser


def parse(text: str) -> dict[str, dict[str, str]]:
    """Sections of an rclone config text, values unquoted as rclone does.

    Raise :class:`IniError` for text rclone would refuse or read differently (continuation
    lines, duplicate sections or keys, option lines before any section, bad names).
    """
    if "\x00" in text:
        raise IniError("config text must not contain NUL")
    parser = _parser()
    try:
        parser.read_string(text)
    except configparser.MissingSectionHeaderError as exc:
        raise IniError("option lines before the first [section] header") from exc
    except configparser.Error as exc:
        raise IniError(f"cannot parse config: {exc.message.splitlines()[0]}") from exc
    result: dict[str, dict[str, str]] = {}
    for name in parser.sections():
        if not SECTION_NAME.fullmatch(name):
            raise IniError(f"invalid section name {name!r}")
        options: dict[str, str] = {}
        for key, raw in parser.items(name, raw=True):
            if not OPTION_NAME.fullmatch(key):
                raise IniError(f"invalid option name {key!r}", key)
            if raw is None or "\n" in raw:
                raise IniError(f"option {key!r} has a continuation line or no value", key)
            options[key] = decode_value(raw)
        result[name] = options
    return result


def parse_one_section(text: str) -> tuple[str | None, dict[str, str]]:
    """Exactly one section, whose ``[header]`` line may be missing (it then reads ``None``)."""
    stripped = [ln.strip() for ln in text.splitlines()]
    meaningful = [ln for ln in stripped if ln and not ln.startswith(("#", ";"))]
    has_header = bool(meaningful) and meaningful[0].startswith("[")
    sections = parse(text if has_header else f"[{_PLACEHOLDER}]\n{text}")
    if len(sections) != 1:
        raise IniError(f"exactly one section is allowed, found {len(sections)}")
    ((name, options),) = sections.items()
    if not options:
        raise IniError("the configuration is empty")
    return (name if has_header else None), options


_PLACEHOLDER = "nsbackup-section-placeholder"


def combine_upstreams(upstreams: Iterable[tuple[str, str]]) -> str:
    """The ``upstreams`` value of an rclone ``combine`` remote.

    Each item is (directory name, remote path such as ``uuid:bucket/path``); a token is
    ``"dir=remote"`` quoted as rclone's space-separated CSV list expects (``"`` doubled).
    """
    out = io.StringIO()
    writer = csv.writer(out, delimiter=" ", quotechar='"', quoting=csv.QUOTE_ALL, lineterminator="")
    tokens = []
    for directory, remote in upstreams:
        check_value(directory, "upstreams")
        check_value(remote, "upstreams")
        if "=" in directory or "/" in directory:
            raise IniError(f"invalid combine directory {directory!r}", "upstreams")
        tokens.append(f"{directory}={remote}")
    writer.writerow(tokens)
    return out.getvalue()


def split_upstreams(value: str) -> list[tuple[str, str]]:
    """Inverse of :func:`combine_upstreams`."""
    reader = csv.reader([value], delimiter=" ", quotechar='"', skipinitialspace=True)
    result = []
    for token in next(reader, []):
        if not token:
            continue
        directory, sep, remote = token.partition("=")
        if not sep:
            raise IniError(f"upstream {token!r} has no '='", "upstreams")
        result.append((directory, remote))
    return result
