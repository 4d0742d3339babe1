"""The access log (``gateway serve --access-log FILE|-``): one line per request.

HAProxy sends one datagram per request to a unix socket in the run directory (``log
unix@... format raw``; the fields are :data:`plugins.gateway.ACCESS_LOG_FORMAT`). A datagram
socket keeps working across HAProxy reloads and restarts (old workers log to the same place),
never blocks HAProxy (a full queue drops lines instead) and gives whole records. This module
reads them and writes (one line each)::

    2026-12-01T15:12:03.123+01:00 127.0.0.1:40112 module/mail1 GET /<uuid>/mail/<uuid>/config
    200 155 0 3ms restic_append

time, source, user (``-`` when none was given), method, path (as sent, percent-encoding kept,
no query), status, bytes sent, bytes received, duration (HAProxy's ``%Ta``) and the backend.
No credential reaches it: HAProxy does not send the Authorization header or the query, and
every field is reduced to printable characters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import TextIO

import attrs

log = logging.getLogger("nsbackup.gateway")

RECEIVE_BUFFER = 1 << 20
"""Room for bursts while the writer is busy."""


@attrs.frozen
class AccessRecord:
    time: float
    source: str
    user: str
    method: str
    path: str
    status: str
    bytes_sent: str
    bytes_received: str
    duration_ms: str
    backend: str

    def line(self) -> str:
        moment = datetime.fromtimestamp(self.time).astimezone().isoformat(timespec="milliseconds")
        return (
            f"{moment} {self.source} {self.user or '-'} {self.method or '-'} {self.path or '-'} "
            f"{self.status} {self.bytes_sent} {self.bytes_received} {self.duration_ms}ms "
            f"{self.backend}"
        )


def printable(text: str, limit: int = 2048) -> str:
    """``text`` with every character that is not printable ASCII (spaces included) escaped
    as ``\\xNN``/``\\uNNNN``: one record is one line of words."""
    out = []
    for char in text[:limit]:
        if "!" <= char <= "~" and char != "\\":
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)


def _unhex(field: str) -> str:
    """A field HAProxy sent as ``x<hex>``, decoded and made printable; ``x-`` (a variable
    that was never set) is empty."""
    if not field.startswith("x"):
        raise ValueError(field)
    if field == "x-":
        return ""
    return printable(bytes.fromhex(field[1:]).decode("utf-8", "replace"))


def parse_record(data: bytes) -> AccessRecord | None:
    """One HAProxy datagram, or ``None`` when it is not one of ours."""
    words = data.decode("ascii", "replace").split()
    if len(words) != 10:
        return None
    stamp, source, user, method, path, status, sent, received, duration, backend = words
    try:
        return AccessRecord(
            time=float(stamp),
            source=printable(source, 64),
            user=_unhex(user),
            method=_unhex(method),
            path=_unhex(path),
            status=printable(status, 8),
            bytes_sent=printable(sent, 24),
            bytes_received=printable(received, 24),
            duration_ms=printable(duration, 24),
            backend=printable(backend, 128),
        )
    except ValueError:
        return None


class AccessLogWriter:
    """Lines to standard output (``-``) or appended to a file (mode 0600), reopened when the
    file is moved or removed (logrotate)."""

    def __init__(self, target: str, stdout: TextIO | None = None) -> None:
        self.target = target
        self._stdout = stdout
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        if target != "-":
            self._open()  # a path that cannot be written fails the start, with its reason

    def _open(self) -> None:
        fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        info = os.fstat(fd)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._ident = fd, (info.st_dev, info.st_ino)

    def write(self, line: str) -> None:
        if self.target == "-":
            stream = self._stdout or sys.stdout
            stream.write(line + "\n")
            stream.flush()
            return
        try:
            info = os.stat(self.target)
            moved = (info.st_dev, info.st_ino) != self._ident
        except FileNotFoundError:
            moved = True
        if moved:
            self._open()
        assert self._fd is not None
        os.write(self._fd, (line + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AccessLog:
    """Receives HAProxy's access datagrams on ``socket_path`` and writes them with
    ``writer`` from a daemon thread, until :meth:`stop`."""

    def __init__(self, socket_path: str, writer: AccessLogWriter) -> None:
        self.socket_path = socket_path
        self.writer = writer
        self.lines = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        Path(self.socket_path).unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o077)
        try:
            sock.bind(self.socket_path)
        finally:
            os.umask(old)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        failing = False
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            record = parse_record(data)
            if record is None:
                continue
            try:
                self.writer.write(record.line())
                self.lines += 1
                failing = False
            except OSError as exc:
                if not failing:
                    log.warning("access log %s cannot be written: %s", self.writer.target, exc)
                failing = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        Path(self.socket_path).unlink(missing_ok=True)
        self.writer.close()
