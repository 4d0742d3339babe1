"""The gateway's log: one line per event an operator needs, with its level.

- Under systemd (stderr is the journal: ``$JOURNAL_STREAM`` names it), lines carry the syslog
  level prefix ``<N>`` and no time: journald adds the time and reads the level
  (``journalctl -p warning`` works). Anywhere else (a terminal, a file, a container log) each
  line starts with the local time and the level name.
- What rclone and HAProxy print is relayed line by line with the level it deserves: start-up
  notices, peers that do not answer (every peer's backend reports it at start), proxies
  stopping at a reload and workers ending at a clean stop are debug messages; the rest keeps
  its level.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime
from typing import Any, TextIO

log = logging.getLogger("nsbackup.gateway")

_SYSLOG = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a Python level (``<4>`` for WARNING)."""
    for threshold, priority in sorted(_SYSLOG.items(), reverse=True):
        if levelno >= threshold:
            return priority
    return 7


def journal_stream(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal (systemd sets ``JOURNAL_STREAM=<dev>:<inode>`` for
    the stdout/stderr it connects to journald)."""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in wanted.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class GatewayFormatter(logging.Formatter):
    """``<N>message`` for the journal, ``2026-12-01T15:12:03.123+01:00 LEVEL message``
    elsewhere; every line of a multi-line message gets the prefix."""

    def __init__(self, journal: bool) -> None:
        super().__init__("%(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            prefix = f"<{syslog_priority(record.levelno)}>"
        else:
            moment = datetime.fromtimestamp(record.created).astimezone()
            prefix = f"{moment.isoformat(timespec='milliseconds')} {record.levelname} "
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def use_gateway_format(logger: logging.Logger, stream: TextIO) -> None:
    """Give every handler of ``logger`` the gateway's format (filters, such as the redacting
    one, stay)."""
    formatter = GatewayFormatter(journal=journal_stream(stream))
    for handler in logger.handlers:
        handler.setFormatter(formatter)


# -- rclone ------------------------------------------------------------------------------------

_RCLONE_LINE = re.compile(
    r"^(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)? )?"
    r"(?P<level>EMERGENCY|ALERT|CRITICAL|ERROR|WARNING|NOTICE|INFO|DEBUG)\s*: ?(?P<text>.*)$"
)
_RCLONE_LEVELS = {
    "EMERGENCY": logging.ERROR,
    "ALERT": logging.ERROR,
    "CRITICAL": logging.ERROR,
    "ERROR": logging.WARNING,
    "WARNING": logging.WARNING,
    "NOTICE": logging.INFO,
    "INFO": logging.DEBUG,
    "DEBUG": logging.DEBUG,
}
_RCLONE_QUIET = re.compile(
    r"Server started on|Serving restic REST API|Serving on "
    r"|--vfs-cache-mode writes or full is recommended"  # a WebDAV server without VFS cache
)


def relay_rclone(source: str, line: str) -> None:
    """Log one line rclone printed (its own time stamp removed)."""
    if not line.strip():
        return
    m = _RCLONE_LINE.match(line)
    if m is None:
        level, text = logging.WARNING, line  # a Go panic, say
    else:
        level, text = _RCLONE_LEVELS[m.group("level")], m.group("text")
        if _RCLONE_QUIET.search(text):
            level = logging.DEBUG
    log.log(level, "%s: %s", source, text[:2000])


# -- HAProxy -----------------------------------------------------------------------------------

_HAPROXY_LINE = re.compile(
    r"^\[(?P<level>NOTICE|WARNING|ALERT)\]\s+\((?P<pid>\d+)\) : (?P<text>.*)$"
)
_HAPROXY_QUIET = re.compile(
    r"^(Proxy \S+ stopped \(cumulated conns"
    r"|backend '[^']+' has no server available"
    r"|Server gw_\S+ is (UP|DOWN)"
    r"|Former worker \(\d+\) exited with code 0 "
    r"|haproxy version is |path to executable is "
    r"|Reloading HAProxy|Loading success|New worker \(\d+\) forked"
    r"|Stopping (frontend|backend|proxy) )"
)
_HAPROXY_STOP = re.compile(
    r"^(Exiting Master process|Current worker \(\d+\) exited with code (0|143) )"
)
# What the master says as it ends after a worker died; the gateway reports it (and restarts).
_HAPROXY_ENDING = re.compile(r"^(exit-on-failure: |All workers exited\. Exiting)")
_LOCAL_CHECK = re.compile(
    r"^Server rest_d\d+_(?P<hex>[0-9a-f]{32})/\S+ is (?P<state>UP|DOWN)"
    r"(?:, reason: (?P<why>[^,]*))?"
)
_WORKER_EXIT = re.compile(r"^Current worker \((?P<pid>\d+)\) exited with code (?P<code>\d+).*")


class HaproxyRelay:
    """Relays HAProxy's output with levels; remembers why the last worker ended."""

    def __init__(self) -> None:
        self.stopping = False
        """Set before a clean stop: the workers' exits it causes are expected."""
        self.last_worker_exit: str | None = None
        """HAProxy's line about the last worker that died, for the gateway's report."""
        self.last_alert: str | None = None
        """HAProxy's last alert (why it did not start, say)."""
        self.dropped: frozenset[str] = frozenset()
        """Destinations the gateway dropped: their local health check fails, as expected."""

    def reset(self) -> None:
        """A new master starts: forget the previous one's last words."""
        self.stopping = False
        self.last_worker_exit = self.last_alert = None

    def __call__(self, source: str, line: str) -> None:
        if not line.strip():
            return
        m = _HAPROXY_LINE.match(line)
        if m is None:
            log.warning("%s: %s", source, line[:2000])
            return
        level = {"NOTICE": logging.DEBUG, "WARNING": logging.WARNING, "ALERT": logging.ERROR}[
            m.group("level")
        ]
        text = m.group("text").strip()
        if m.group("level") == "ALERT":
            self.last_alert = text[:500]
        check = _LOCAL_CHECK.match(text)
        if check is not None:
            self._local_check(check.group("hex"), check.group("state"), check.group("why"))
            return
        if self.stopping and _HAPROXY_STOP.match(text):
            level = logging.DEBUG
        elif _WORKER_EXIT.match(text):  # a worker died: the gateway restarts HAProxy
            self.last_worker_exit = text
            level = logging.WARNING
        elif _HAPROXY_QUIET.match(text) or _HAPROXY_ENDING.match(text):
            level = logging.DEBUG
        log.log(level, "%s: %s", source, text[:2000])

    def _local_check(self, hexid: str, state: str, why: str | None) -> None:
        uid = f"{hexid[:8]}-{hexid[8:12]}-{hexid[12:16]}-{hexid[16:20]}-{hexid[20:]}"
        if uid in self.dropped:
            log.debug("destination %s (dropped): local health check %s", uid, state)
        elif state == "DOWN":
            log.warning(
                "destination %s: the local rclone server fails its health check (%s); local "
                "clients go to the peer gateways",
                uid,
                (why or "no reason given").strip(),
            )
        else:
            log.info("destination %s: the local rclone server passes its health check", uid)


def describe(values: Any, limit: int = 10) -> str:
    """``a, b, c`` (at most ``limit`` names, then ``and N more``)."""
    items = [str(v) for v in values]
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
