"""Receiving the cluster's events as NS8 lets a node receive them.

On an NS8 cluster a node's Redis user may publish on its own channels only and may not
subscribe, while the unprivileged ``default`` user (no password) may subscribe to every channel
(ref §1.3). So a long-running part (the gateway, the scheduler) subscribes with its own client
and, when Redis refuses (``NOPERM``), with a credential-less connection to the same Redis — the
``default`` user. Under nsbackup's own ACL rules a node may subscribe to ``cluster/event/*``
itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from nsbackup.errors import PermissionDenied
from nsbackup.store import identity

SUBSCRIBE_TIMEOUT = 10.0


def _refused(exc: BaseException) -> bool:
    text = str(exc)
    return text.startswith(("NOPERM", "NOAUTH")) or "no permissions" in text


def anonymous_client(client: Any) -> Any:
    """A client for the same Redis as ``client`` with no credentials (NS8's ``default``)."""
    import redis

    kwargs = dict(client.connection_pool.connection_kwargs)
    for key in ("username", "password", "credential_provider"):
        kwargs.pop(key, None)
    kwargs["decode_responses"] = True
    pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=pool)


def _subscribed(client: Any, channels: Sequence[str]) -> Any:
    import redis

    pubsub = client.pubsub(ignore_subscribe_messages=False)
    try:
        pubsub.subscribe(*channels)
        confirmed = 0
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
        while confirmed < len(channels):
            if time.monotonic() > deadline:
                raise redis.exceptions.TimeoutError("no answer to SUBSCRIBE")
            message = pubsub.get_message(timeout=0.5)
            if message is not None and message.get("type") == "subscribe":
                confirmed += 1
        return pubsub
    except redis.exceptions.ResponseError as exc:
        pubsub.close()
        if _refused(exc):
            raise redis.exceptions.NoPermissionError(str(exc)) from None
        raise
    except BaseException:
        pubsub.close()
        raise


class Subscription:
    """Subscribe ``client``'s Redis to ``channels``: as the client's own user, else as
    ``default``. ``user`` says which one it is; :meth:`open` raises
    :class:`~nsbackup.errors.PermissionDenied` when neither may subscribe, and redis-py's
    connection errors when Redis is away (callers retry)."""

    def __init__(self, client: Any, channels: Sequence[str]) -> None:
        self.client = client
        self.channels = list(channels)
        self.user = identity(client)
        self._anonymous: Any = None

    def open(self) -> Any:
        import redis

        try:
            pubsub = _subscribed(self.client, self.channels)
            self.user = identity(self.client)
            return pubsub
        except (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError) as exc:
            if identity(self.client) == "default":
                raise PermissionDenied(f"Redis user default may not subscribe: {exc}") from None
            refused = f"{identity(self.client)}: {exc}"
        if self._anonymous is None:
            self._anonymous = anonymous_client(self.client)
        try:
            pubsub = _subscribed(self._anonymous, self.channels)
        except (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError) as exc:
            raise PermissionDenied(
                f"neither {refused} nor default may subscribe to {', '.join(self.channels)}: {exc}"
            ) from None
        self.user = "default"
        return pubsub

    def close(self) -> None:
        if self._anonymous is not None:
            self._anonymous.close()
            self._anonymous = None
