"""Elapses of systemd calendar expressions (``OnCalendar=``), computed by systemd itself.

``systemd-analyze calendar --base-time=@<epoch> --iterations=N <expression>`` prints the next
``N`` elapses strictly after the base time, evaluated in the local time zone of the process
(``TZ``, else ``/etc/localtime``) unless the expression names its own zone
(``*-*-* 01:00:00 Europe/Rome``). Each elapse is printed in local time, followed by an
``(in UTC):`` line when the local zone is not UTC; the UTC line is the one read here, so the
result does not depend on the zone abbreviation. ``systemd-analyze`` needs no running systemd
(it works in containers); its base time option exists since systemd 250.

systemd prints whole seconds: an expression with fractional seconds elapses up to one second
early here (timers themselves are only accurate to ``AccuracySec=``, one minute by default).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime

from nsbackup.errors import Unreachable, ValidationFailed

TIMEOUT = 20.0
_ELAPSE = re.compile(r"^\s*(Next elapse|Iter\. #\d+):\s*(.*?)\s*$")
_IN_UTC = re.compile(r"^\s*\(in UTC\):\s*(.*?)\s*$")
# "Mon 2024-01-01 01:00:00 CET": the weekday and the zone are ignored.
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})")


def systemd_analyze() -> str:
    """The ``systemd-analyze`` binary, or :class:`~nsbackup.errors.Unreachable` (exit 5)."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        raise Unreachable(
            "systemd-analyze not found: it computes schedule elapses (install systemd; it "
            "works without systemd running)"
        )
    return binary


def next_elapses(expression: str, after: float, count: int = 1) -> list[float]:
    """The next ``count`` elapses of ``expression`` strictly after ``after`` (both epoch
    seconds), in systemd's semantics and the process's time zone. Fewer (possibly none) when
    the expression has no more elapses, e.g. a date in the past. An expression systemd
    refuses raises :class:`~nsbackup.errors.ValidationFailed` (``bad_schedule_format``);
    a missing ``systemd-analyze`` raises :class:`~nsbackup.errors.Unreachable`."""
    if count < 1:
        raise ValueError("count must be >= 1")
    base = int(after)  # whole seconds: what systemd prints
    zone = os.environ.get("TZ")
    found = {e for e in _elapses(expression, base, count + 1, zone) if e > after}
    if len(found) < count:
        # A finite expression, or fractional seconds printed at or before ``after``: the
        # elapses after the next whole second are all later than ``after``.
        found |= {e for e in _elapses(expression, base + 1, count, zone) if e > after}
    return sorted(found)[:count]


def next_elapse(expression: str, after: float) -> float | None:
    """The first elapse of ``expression`` strictly after ``after``, or ``None`` for never."""
    found = next_elapses(expression, after, 1)
    return found[0] if found else None


@functools.lru_cache(maxsize=512)
def _elapses(expression: str, base: int, count: int, zone: str | None) -> tuple[float, ...]:
    # Cached: the answer for one expression, base second and TZ never changes (errors are
    # not cached). The environment keeps TZ; the C locale keeps systemd's words as parsed.
    if not expression.strip() or any(c in expression for c in "\r\n\0"):
        raise _bad(expression, "empty or contains a control character")
    env = {**os.environ, "LC_ALL": "C"}
    env.pop("SYSTEMD_COLORS", None)
    try:
        result = subprocess.run(
            [
                systemd_analyze(),
                "calendar",
                f"--base-time=@{base}",
                f"--iterations={count}",
                "--",
                expression,
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise Unreachable(f"systemd-analyze calendar did not answer in {TIMEOUT:g} s") from None
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()
        raise _bad(expression, reason[-1] if reason else f"exit {result.returncode}")
    return tuple(parse_elapses(result.stdout))


def parse_elapses(text: str) -> list[float]:
    """Epoch seconds of the elapses in the output of ``systemd-analyze calendar`` for one
    expression: each ``Next elapse:``/``Iter. #N:`` line, or the ``(in UTC):`` line that
    follows it when there is one (without it, the local zone is UTC). ``never`` ends the
    list."""
    values: list[str] = []
    for line in text.splitlines():
        elapse = _ELAPSE.match(line)
        if elapse:
            if elapse.group(2) == "never":
                break
            values.append(elapse.group(2))
            continue
        in_utc = _IN_UTC.match(line)
        if in_utc and values:
            values[-1] = in_utc.group(1)
    out = []
    for value in values:
        stamp = _TIMESTAMP.search(value)
        if stamp is None:
            raise ValueError(f"unexpected systemd-analyze output: {value!r}")
        moment = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        out.append(moment.timestamp())
    return out


def _bad(expression: str, reason: str) -> ValidationFailed:
    return ValidationFailed.one(
        "schedule",
        expression,
        "bad_schedule_format",
        f"invalid systemd calendar expression {expression!r}: {reason}",
    )
