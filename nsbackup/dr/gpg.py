"""GnuPG symmetric encryption of the cluster dump, driven through file descriptors.

Files NS8 writes (``gpg --batch -c --pinentry-mode loopback``) and opens (``gpg --decrypt
--batch --pinentry-mode loopback --passphrase-fd N``) are ordinary OpenPGP symmetric messages;
so are the ones written here. The passphrase reaches ``gpg`` through a pipe whose read end is
the only descriptor passed besides stdin/stdout/stderr (``--passphrase-fd``): never a command
line argument, never an environment variable, never a file. The plaintext goes in on stdin and
comes out on stdout, so it never touches the disk either. Each call uses a private
``GNUPGHOME`` (a fresh 0700 directory) whose gpg-agent is stopped and which is removed
afterwards; ``--no-symkey-cache`` keeps the agent from remembering the passphrase meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from nsbackup.errors import NsbackupError, Unreachable, ValidationFailed

TIMEOUT = 120.0
MAX_PASSPHRASE = 4096  # NS8's limit (import-backup-destinations: backup_password)
_BASE_OPTIONS = ("--batch", "--no-tty", "--no-symkey-cache", "--pinentry-mode", "loopback")


class DecryptionFailed(NsbackupError):
    """``gpg`` could not open the data. ``reason`` is ``invalid_passphrase`` (the data is an
    encrypted message but the passphrase does not open it) or ``invalid_file`` (not OpenPGP
    data, or damaged)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def gpg_binary() -> str:
    """``$NSBACKUP_GPG``, else ``gpg`` on ``PATH``; :class:`Unreachable` when there is none."""
    found = os.environ.get("NSBACKUP_GPG") or shutil.which("gpg")
    if not found:
        raise Unreachable("gpg is not installed (Debian package gnupg); the dump needs it")
    return found


def check_passphrase(passphrase: str) -> None:
    """Refuse a passphrase gpg would read differently from a descriptor (it reads one line)."""
    if not isinstance(passphrase, str) or not passphrase.strip():
        raise ValidationFailed.one(
            "passphrase", "", "required", "the passphrase is empty (or only blanks)"
        )
    if "\n" in passphrase or "\r" in passphrase or "\x00" in passphrase:
        raise ValidationFailed.one(
            "passphrase", "***", "pattern", "the passphrase must be one line (no CR, LF, NUL)"
        )
    if len(passphrase.encode()) > MAX_PASSPHRASE:
        raise ValidationFailed.one(
            "passphrase",
            "***",
            "maxLength",
            f"the passphrase is longer than {MAX_PASSPHRASE} bytes",
        )


def _child_env(home: str) -> dict[str, str]:
    # Nothing of ours (Redis credentials, ...) reaches gpg: only what it needs to run.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GNUPGHOME": home,
        "HOME": home,
        "LC_ALL": "C",
    }


@contextmanager
def private_home() -> Iterator[str]:
    """A fresh GNUPGHOME (mode 0700), its agent stopped and the directory removed at the end."""
    base = tempfile.gettempdir()
    if len(base) > 64:
        # gpg-agent's sockets live in the home directory and a unix socket path has at most
        # 107 bytes: a deep TMPDIR would leave gpg without its agent.
        base = "/tmp"
    home = tempfile.mkdtemp(prefix="nsbackup-gpg-", dir=base)
    try:
        yield home
    finally:
        gpgconf = shutil.which("gpgconf", path=os.path.dirname(gpg_binary()) or None) or (
            shutil.which("gpgconf")
        )
        if gpgconf:
            # Without it the agent exits by itself once its socket directory is gone.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [gpgconf, "--homedir", home, "--kill", "gpg-agent"],
                    env=_child_env(home),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=30,
                    check=False,
                )
        shutil.rmtree(home, ignore_errors=True)


def _passphrase_pipe(passphrase: str) -> int:
    """The read end of a pipe holding ``passphrase`` and a newline (write end closed)."""
    data = passphrase.encode() + b"\n"
    read_fd, write_fd = os.pipe()
    try:
        # At most 4097 bytes: far below the pipe's capacity, so this never blocks.
        os.write(write_fd, data)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


def _run(
    args: Sequence[str], passphrase: str, data: bytes, stdout: int
) -> subprocess.CompletedProcess[bytes]:
    check_passphrase(passphrase)
    binary = gpg_binary()
    with private_home() as home:
        fd = _passphrase_pipe(passphrase)
        try:
            return subprocess.run(
                [
                    binary,
                    "--homedir",
                    home,
                    *_BASE_OPTIONS,
                    "--passphrase-fd",
                    str(fd),
                    "--status-fd",
                    "2",
                    *args,
                ],
                input=data,
                stdout=stdout,
                stderr=subprocess.PIPE,
                pass_fds=(fd,),
                env=_child_env(home),
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise NsbackupError(f"gpg did not finish within {TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise Unreachable(f"cannot run gpg ({binary}): {exc.strerror}") from None
        finally:
            os.close(fd)


def _last_message(stderr: bytes) -> str:
    lines = [
        line
        for line in stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("[GNUPG:]")
    ]
    return lines[-1][:300] if lines else "no message"


def encrypt(plaintext: bytes, passphrase: str, output_fd: int) -> None:
    """Write the OpenPGP symmetric encryption of ``plaintext`` (AES-256) to ``output_fd``."""
    done = _run(
        [
            "--symmetric",
            "--cipher-algo",
            "AES256",
            "--compress-algo",
            "none",
            # The strongest count OpenPGP can encode, what gpg-agent's calibration yields on
            # any recent CPU: given here, it spares the agent's calibration (seconds).
            "--s2k-mode",
            "3",
            "--s2k-digest-algo",
            "SHA256",
            "--s2k-count",
            "65011712",
            "--output",
            "-",
        ],
        passphrase,
        plaintext,
        output_fd,
    )
    if done.returncode != 0:
        raise NsbackupError(
            f"gpg could not encrypt (exit {done.returncode}): {_last_message(done.stderr)}"
        )


def encrypt_bytes(plaintext: bytes, passphrase: str) -> bytes:
    """:func:`encrypt` into memory."""
    read_fd, write_fd = os.pipe()
    # gpg writes into a pipe drained by a thread: the ciphertext stays in memory too.
    chunks: list[bytes] = []

    def drain() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            while chunk := pipe.read(65536):
                chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        encrypt(plaintext, passphrase, write_fd)
    finally:
        os.close(write_fd)
        reader.join(TIMEOUT)
    return b"".join(chunks)


def decrypt(ciphertext: bytes, passphrase: str, max_output: int) -> bytes:
    """The plaintext of an OpenPGP symmetric message, at most ``max_output`` bytes;
    :class:`DecryptionFailed` otherwise.

    Only data that really was encrypted with a passphrase and decrypted with its integrity
    checked is returned: ``gpg --decrypt`` also exits 0 on a bare literal packet (``gpg
    --store``), which anybody can write without the passphrase. gpg stops writing at
    ``--max-output``, so a small file that expands (OpenPGP compression) cannot fill memory."""
    done = _run(
        ["--max-output", str(max_output), "--decrypt", "--output", "-"],
        passphrase,
        ciphertext,
        subprocess.PIPE,
    )
    status = {
        line.split()[1]
        for line in done.stderr.decode(errors="replace").splitlines()
        if line.startswith("[GNUPG:] ") and len(line.split()) > 1
    }
    errors = done.stderr.decode(errors="replace")
    if done.returncode == 0:
        if {"NEED_PASSPHRASE_SYM", "DECRYPTION_OKAY"} <= status and len(done.stdout) <= max_output:
            return done.stdout
        raise DecryptionFailed(
            "invalid_file",
            "not a passphrase-encrypted OpenPGP file (its content is not encrypted, so anybody "
            "could have written it)",
        )
    if "max-output" in errors:
        raise DecryptionFailed(
            "invalid_file", f"the file holds more than {max_output} bytes once decrypted"
        )
    if "BAD_PASSPHRASE" in errors or (
        "NEED_PASSPHRASE_SYM" in status
        and "DECRYPTION_FAILED" in status
        and "PLAINTEXT" not in status
    ):
        raise DecryptionFailed("invalid_passphrase", "the passphrase does not open this file")
    if "NEED_PASSPHRASE_SYM" not in status:
        raise DecryptionFailed(
            "invalid_file",
            "not a passphrase-encrypted OpenPGP file (gpg: " + _last_message(done.stderr) + ")",
        )
    raise DecryptionFailed(
        "invalid_file", "the encrypted file is damaged (gpg: " + _last_message(done.stderr) + ")"
    )
