"""HTTP to the node's gateway: WebDAV (metadata files, the cluster dump, listings) with the
caller's gateway credentials, every request bounded by a timeout (ref §13: 3 s to connect, 10 s
to read)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import attrs

from nsbackup.errors import NsbackupError, PermissionDenied, Unreachable

TIMEOUT = (3.0, 10.0)
_DAV = "{DAV:}"


@attrs.frozen
class Entry:
    """One PROPFIND answer: a path (decoded, relative to the gateway root), whether it is a
    collection, its size and modification time (epoch seconds, or ``None``)."""

    path: str
    collection: bool
    size: int
    modified: float | None


class GatewayClient:
    """WebDAV through the gateway at ``url`` as ``user``."""

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        *,
        timeout: tuple[float, float] = TIMEOUT,
    ) -> None:
        import requests

        self.url = url.rstrip("/")
        self.user = user
        self.timeout = timeout
        self._session = requests.Session()
        self._session.auth = (user, password)
        self._session.trust_env = False  # no proxies from the environment for loopback traffic

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        target = self.url + quote("/" + path.lstrip("/"))
        try:
            response = self._session.request(method, target, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise Unreachable(
                f"gateway {self.url} unreachable ({method} /{path.lstrip('/')}): "
                f"{type(exc).__name__}"
            ) from None
        if response.status_code in (401, 403):
            raise PermissionDenied(
                f"permission denied: the gateway refused {method} /{path.lstrip('/')} to "
                f"{self.user!r} ({response.status_code})"
            )
        return response

    def _check(self, response: Any, method: str, path: str, ok: tuple[int, ...]) -> None:
        if response.status_code not in ok:
            raise NsbackupError(
                f"gateway answered {response.status_code} to {method} /{path.lstrip('/')}"
            )

    def mkcol(self, path: str) -> None:
        """Create a collection; one that exists already is fine."""
        response = self._request("MKCOL", path)
        self._check(response, "MKCOL", path, (201, 405))

    def put(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Upload ``data`` to ``path``, creating the parent collections first."""
        parts = path.strip("/").split("/")
        for depth in range(2, len(parts)):  # /<dest>/ exists; create what is below it
            self.mkcol("/".join(parts[:depth]) + "/")
        response = self._request("PUT", path, data=data, headers={"Content-Type": content_type})
        self._check(response, "PUT", path, (200, 201, 204))

    def get(self, path: str, *, limit: int = 1 << 20) -> bytes | None:
        """The content of ``path`` (at most ``limit`` bytes), or ``None`` when it is absent."""
        response = self._request("GET", path, stream=True)
        try:
            if response.status_code == 404:
                return None
            self._check(response, "GET", path, (200,))
            data = response.raw.read(limit + 1, decode_content=True)
        finally:
            response.close()
        if len(data) > limit:
            raise NsbackupError(f"/{path.lstrip('/')} is larger than {limit} bytes")
        return bytes(data)

    def rest_names(self, repository: str, kind: str) -> list[str]:
        """The object names of ``kind`` (``snapshots``, ``locks``, ...) in the restic
        repository ``repository`` (``<destination>/<app>/<uuid>``), read with restic's REST
        protocol: a listing, no key derivation."""
        path = f"{repository.strip('/')}/{kind}/"
        response = self._request(
            "GET", path, headers={"Accept": "application/vnd.x.restic.rest.v2"}
        )
        if response.status_code == 404:
            return []
        self._check(response, "GET", path, (200,))
        try:
            items = response.json()
        except ValueError:
            raise NsbackupError(f"the gateway sent an invalid listing of /{path}") from None
        return [str(i.get("name")) for i in items if isinstance(i, dict) and i.get("name")]

    def propfind(self, path: str, depth: str = "1") -> list[Entry]:
        """The entries of ``path`` (``Depth`` ``0`` or ``1``); ``[]`` when it is absent."""
        response = self._request("PROPFIND", path, headers={"Depth": depth})
        if response.status_code == 404:
            return []
        self._check(response, "PROPFIND", path, (207,))
        return list(_entries(response.content, urlsplit(self.url).path))


def _entries(body: bytes, prefix: str) -> Iterator[Entry]:
    from datetime import UTC
    from email.utils import parsedate_to_datetime

    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise NsbackupError(f"the gateway sent an invalid PROPFIND answer: {exc}") from None
    for response in root.iter(f"{_DAV}response"):
        href = response.findtext(f"{_DAV}href") or ""
        path = unquote(urlsplit(href).path)
        if prefix and path.startswith(prefix):
            path = path[len(prefix) :]
        prop = response.find(f"{_DAV}propstat/{_DAV}prop")
        collection = (
            prop is not None and prop.find(f"{_DAV}resourcetype/{_DAV}collection") is not None
        )
        size_text = prop.findtext(f"{_DAV}getcontentlength") if prop is not None else None
        modified_text = prop.findtext(f"{_DAV}getlastmodified") if prop is not None else None
        modified = None
        if modified_text:
            try:
                when = parsedate_to_datetime(modified_text)
                if when.tzinfo is None:  # "-0000": a time in UTC without a zone
                    when = when.replace(tzinfo=UTC)
                modified = when.timestamp()
            except (TypeError, ValueError):
                modified = None
        try:
            size = int(size_text) if size_text else 0
        except ValueError:
            size = 0
        yield Entry(path=path, collection=collection, size=size, modified=modified)
