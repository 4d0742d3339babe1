"""A raw RESP2/RESP3 connection for tests that must see every byte Redis sends.

redis-py consumes RESP3 push messages (client-side caching invalidations) itself; the ACL tests
need to see whether any arrive, so they talk to the server directly.
"""

from __future__ import annotations

import select
import socket
from typing import Self


class RespError(str):
    """An error reply (``-ERR ...`` or a RESP3 blob error)."""


class Push(list[object]):
    """A RESP3 push message (``>``), e.g. ``["invalidate", [b"private/..."]]``."""


class RespConnection:
    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = bytearray()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send(self, *args: str | bytes | int) -> None:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
        self._sock.sendall(b"".join(out))

    def call(self, *args: str | bytes | int) -> object:
        """Send one command and return the next reply that is not a push message."""
        self.send(*args)
        while True:
            reply = self.read()
            if not isinstance(reply, Push):
                return reply

    def call_collecting(self, *args: str | bytes | int) -> tuple[object, list[Push]]:
        """Send one command; return its reply and the push messages that arrived before it."""
        self.send(*args)
        pushes: list[Push] = []
        while True:
            reply = self.read()
            if not isinstance(reply, Push):
                return reply, pushes
            pushes.append(reply)

    def readable(self, timeout: float) -> bool:
        if self._buf:
            return True
        ready, _, _ = select.select([self._sock], [], [], timeout)
        return bool(ready)

    def read(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind in (b":", b"("):
            return int(rest)
        if kind == b",":
            return float(rest)
        if kind == b"#":
            return rest == b"t"
        if kind == b"_":
            return None
        if kind in (b"$", b"=", b"!"):
            size = int(rest)
            if size < 0:
                return None
            data = self._exact(size)
            if kind == b"!":
                return RespError(data.decode())
            return data[4:] if kind == b"=" else data
        if kind in (b"*", b"~", b">"):
            count = int(rest)
            if count < 0:
                return None
            items = [self.read() for _ in range(count)]
            return Push(items) if kind == b">" else items
        if kind == b"%":
            return {_hashable(self.read()): self.read() for _ in range(int(rest))}
        if kind == b"|":  # attributes precede the real reply
            for _ in range(2 * int(rest)):
                self.read()
            return self.read()
        raise ValueError(f"unexpected RESP line {line!r}")

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            self._fill()

    def _exact(self, size: int) -> bytes:
        while len(self._buf) < size + 2:
            self._fill()
        data = bytes(self._buf[:size])
        del self._buf[: size + 2]
        return data

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self._buf += chunk


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value
