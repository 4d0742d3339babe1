"""The gateway's private directories: its state directory and its run directory.

Everything the gateway writes is for its own user only (HAProxy and rclone run as that user):
``auth.map`` holds the password hashes of every node and module, the rclone configurations
hold destination credentials, and whoever can replace a socket in the run directory sees the
credentials HAProxy forwards to rclone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nsbackup.errors import NsbackupError, PermissionDenied, ValidationFailed
from nsbackup.gateway.context import MAX_SOCKET_DIR

PRIVATE = 0o700


def ensure_state_dir(path: Path) -> None:
    """Create the state directory (mode 0700) or make an existing one private. One that
    belongs to another user is refused: whoever can write haproxy.cfg controls HAProxy; one
    that is not a directory or cannot be written, as :func:`check_directory` says."""
    check_directory(path, "state_dir")
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise PermissionDenied(
            f"gateway state directory {path} belongs to uid {info.st_uid}, not to this "
            f"process (uid {os.geteuid()}): refusing to use it"
        )
    if stat.S_IMODE(info.st_mode) != PRIVATE:
        os.chmod(path, PRIVATE)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionDenied(f"gateway state directory {path} cannot be written")


def check_directory(directory: Path, field: str, *, create: bool = True) -> None:
    """Create ``directory`` (mode 0700) when missing (with ``create``); refuse a path that is
    not a directory (:class:`~nsbackup.errors.ValidationFailed`, exit 2) or that cannot be
    created (:class:`~nsbackup.errors.PermissionDenied`, exit 5), naming the path. Without
    ``create`` nothing is made: a missing directory only needs an ancestor that is one."""
    if not create:
        existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
        if existing is None or existing.is_dir():
            return
    else:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except (FileExistsError, NotADirectoryError):
            pass  # reported below
        except OSError as exc:
            raise PermissionDenied(f"cannot create {directory}: {exc.strerror or exc}") from None
        if directory.is_dir():
            return
    raise ValidationFailed.one(
        field,
        str(directory),
        "invalid_path",
        f"{directory} is not a directory (--{field.replace('_', '-')})",
    )


def ensure_run_dir(path: Path) -> None:
    """Create ``path`` with a single ``mkdir`` (mode 0700), or accept it when it already is
    a real directory (not a symlink) owned by this user with mode 0700 - a run directory an
    earlier gateway left behind. Anything else is refused with :class:`NsbackupError`: in a
    shared directory such as /tmp its name is predictable, and another user may have made it
    first.

    The parent must not let others rename entries: owned by root or this user, and not
    writable by group or others unless sticky (/tmp).
    """
    if len(str(path)) > MAX_SOCKET_DIR:
        raise NsbackupError(
            f"gateway run directory {path} is too long for unix sockets "
            f"({len(str(path))} > {MAX_SOCKET_DIR} characters): use a shorter state directory"
        )
    parent = path.parent.stat()
    if parent.st_uid not in (0, os.geteuid()) or (
        parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX
    ):
        raise NsbackupError(
            f"gateway run directory {path}: its parent can be changed by other users "
            f"(uid {parent.st_uid}, mode {stat.S_IMODE(parent.st_mode):04o}): refusing to use it"
        )
    try:
        os.mkdir(path, PRIVATE)
        created = True
    except FileExistsError:
        created = False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:  # ELOOP: a symlink; ENOTDIR: something else
        raise NsbackupError(
            f"gateway run directory {path} is not a real directory ({exc.strerror}): "
            "refusing to use it; remove it"
        ) from exc
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise NsbackupError(
                f"gateway run directory {path} belongs to uid {info.st_uid}, not to this "
                f"process (uid {os.geteuid()}): refusing to use it; remove it"
            )
        if created:
            os.fchmod(fd, PRIVATE)  # whatever the umask left
        elif stat.S_IMODE(info.st_mode) != PRIVATE:
            raise NsbackupError(
                f"gateway run directory {path} has mode {stat.S_IMODE(info.st_mode):04o}, "
                "not 0700: refusing to use it; remove it"
            )
    finally:
        os.close(fd)


def private_subdir(path: Path) -> None:
    """A directory inside the (private) run directory, mode 0700."""
    path.mkdir(mode=PRIVATE, exist_ok=True)
    os.chmod(path, PRIVATE)
