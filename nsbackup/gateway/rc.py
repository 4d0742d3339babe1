"""A tiny client for rclone's remote control API over a unix socket, and for HAProxy's CLI."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class RcError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"rclone rc error {status}: {message}")
        self.status = status
        self.message = message


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def rc_call(
    socket_path: str, method: str, params: dict[str, Any] | None = None, timeout: float = 30
) -> dict[str, Any]:
    """POST ``/<method>`` with JSON ``params``; raise :class:`RcError` on an rc error."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        body = json.dumps(params or {})
        conn.request("POST", f"/{method}", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read().decode("utf-8", "replace")
    finally:
        conn.close()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        data = {"error": raw.strip()[:500]}
    if response.status != 200:
        message = data.get("error") if isinstance(data, dict) else None
        raise RcError(response.status, str(message or raw)[:1000])
    return data if isinstance(data, dict) else {}


def haproxy_command(socket_path: str, command: str, timeout: float = 10) -> str:
    """One command on an HAProxy CLI socket (admin or master); return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(command.encode() + b"\n")
        # The master CLI keeps the connection open until it sees the end of the input.
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")
