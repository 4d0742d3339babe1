"""rclone-compatible ``obscure``/``reveal``.

rclone stores some options (``IsPassword`` in its option catalogue, e.g. the SMB and WebDAV
``pass``) "obscured": AES-256-CTR with a key compiled into rclone, a random 16-byte IV in front,
URL-safe base64 without padding. This is obfuscation, not encryption: anyone with rclone can
reveal it. The cipher comes from ``cryptography``; nothing here is hand-rolled.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# The fixed key from rclone's fs/config/obscure package.
_RCLONE_KEY = bytes(
    [
        0x9C, 0x93, 0x5B, 0x48, 0x73, 0x0A, 0x55, 0x4D,
        0x6B, 0xFD, 0x7C, 0x63, 0xC8, 0x86, 0xA9, 0x2B,
        0xD3, 0x90, 0x19, 0x8E, 0xB8, 0x12, 0x8A, 0xFB,
        0xF4, 0xDE, 0x16, 0x2B, 0x8B, 0x95, 0xF6, 0x38,
    ]
)  # fmt: skip
_IV_SIZE = 16
_RAW_URL_B64 = re.compile(r"[A-Za-z0-9_-]*")


class RevealError(ValueError):
    """The text is not something ``rclone obscure`` produced."""


def _crypt(iv: bytes, data: bytes) -> bytes:
    ctx = Cipher(algorithms.AES(_RCLONE_KEY), modes.CTR(iv)).encryptor()
    return ctx.update(data) + ctx.finalize()


def obscure(plaintext: str, *, iv: bytes | None = None) -> str:
    """Obscure ``plaintext`` exactly as ``rclone obscure`` does (random IV unless given)."""
    if iv is None:
        iv = os.urandom(_IV_SIZE)
    if len(iv) != _IV_SIZE:
        raise ValueError("iv must be 16 bytes")
    sealed = iv + _crypt(iv, plaintext.encode("utf-8"))
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def reveal(obscured: str) -> str:
    """Reveal text produced by ``rclone obscure``; raise :class:`RevealError` otherwise."""
    text = obscured
    if not _RAW_URL_B64.fullmatch(text) or len(text) % 4 == 1:
        raise RevealError("not unpadded URL-safe base64 - is it obscured?")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise RevealError("not valid base64 - is it obscured?") from exc
    if len(raw) < _IV_SIZE:
        raise RevealError("input too short when revealing password - is it obscured?")
    try:
        return _crypt(raw[:_IV_SIZE], raw[_IV_SIZE:]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RevealError("revealed bytes are not UTF-8 - is it obscured?") from exc


def is_obscured(text: str) -> bool:
    """True when ``text`` reveals cleanly (a heuristic: CTR mode has no integrity check)."""
    try:
        reveal(text)
    except RevealError:
        return False
    return True


def reveal_stored(obscured: str) -> str:
    """Reveal a stored obscured option; ``""`` when it is missing or not obscured."""
    if not obscured:
        return ""
    try:
        return reveal(obscured)
    except RevealError:
        return ""
