"""restic through the gateway: environment and process helpers.

Credentials never appear on a command line. restic < 0.16 (Debian 12 ships 0.14) only takes
REST credentials inside ``RESTIC_REPOSITORY``; newer restic reads
``RESTIC_REST_USERNAME``/``RESTIC_REST_PASSWORD``. Either way they travel in the environment.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

from nsbackup.errors import Unreachable

GATEWAY_URL = "http://127.0.0.1:4694"

EXIT_CODES = {
    0: "success",
    1: "fatal error",
    3: "some source data could not be read (partial backup)",
    10: "the repository does not exist",
    11: "the repository is locked",
    12: "wrong repository password",
    130: "restic was interrupted",
}

Failure = Literal["no_repository", "locked", "wrong_password", "partial", "fatal"]

# restic < 0.17 says these only in words, with exit status 1 (the texts are the same in 0.18).
# "unable to open config file" alone is not enough: 0.14 also prints it, and "Is there a
# repository at the following location?", when the gateway answers 401 or 403.
_NO_REPOSITORY = re.compile(
    r"unable to open config file: [^\n]*(?:does not exist|no such file or directory)"
)
_LOCKED = "repository is already locked"
_WRONG_PASSWORD = "wrong password or no key found"


def restic_binary() -> str:
    found = os.environ.get("NSBACKUP_RESTIC") or shutil.which("restic")
    if not found:
        raise Unreachable("restic not found (scripts/setup installs it)")
    return found


def restic_version(binary: str | None = None) -> tuple[int, int, int]:
    """The version of ``binary`` (default: :func:`restic_binary`), asked once per binary."""
    return _version_of(binary or restic_binary())


@functools.cache
def _version_of(binary: str) -> tuple[int, int, int]:
    out = subprocess.run(
        [binary, "version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    m = re.search(r"restic (\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise Unreachable(f"cannot read the restic version from {out[:80]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def restic_env(
    *,
    repository_path: str,
    user: str,
    password: str,
    restic_password: str,
    gateway_url: str = GATEWAY_URL,
    cache_dir: str | None = None,
    version: tuple[int, int, int] | None = None,
    binary: str | None = None,
) -> dict[str, str]:
    """Environment variables for restic to use ``<gateway>/<repository_path>`` as ``user``.

    ``repository_path`` is ``<destination-uuid>/<app>/<module-uuid>``. The credentials take the
    form ``version`` understands, by default the version of ``binary`` (default:
    :func:`restic_binary`); pass the same ``binary`` to :func:`run_restic`.
    """
    version = version or restic_version(binary)
    base = gateway_url.rstrip("/")
    path = repository_path.strip("/")
    env = {"RESTIC_PASSWORD": restic_password}
    if version >= (0, 16, 0):
        env["RESTIC_REPOSITORY"] = f"rest:{base}/{path}"
        env["RESTIC_REST_USERNAME"] = user
        env["RESTIC_REST_PASSWORD"] = password
    else:
        scheme, _, rest = base.partition("://")
        creds = f"{quote(user, safe='')}:{quote(password, safe='')}"
        env["RESTIC_REPOSITORY"] = f"rest:{scheme}://{creds}@{rest}/{path}"
    if cache_dir:
        env["RESTIC_CACHE_DIR"] = cache_dir
    return env


STALL = 900.0
"""Seconds a streaming restic (backup, restore) may go without any progress before it is
stopped: a destination that hangs after answering its health check would otherwise hold a run
for the whole timeout (``NSBACKUP_RESTIC_STALL`` overrides it)."""


def stall_bound() -> float:
    try:
        value = float(os.environ.get("NSBACKUP_RESTIC_STALL") or STALL)
    except ValueError:
        return STALL
    return value if 0 < value < float("inf") else STALL


def run_restic(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float = 3600,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cwd: str | None = None,
    binary: str | None = None,
    stall: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``binary`` (default: :func:`restic_binary`) with ``env`` added to a clean environment
    (no inherited ``RESTIC_*``). Never raises on a timeout: restic is killed and the result
    says why (return code -9 and a last ``nsbackup:`` line on stderr).

    With ``progress`` and ``--json``, each JSON message is passed to it as it arrives, and
    restic is also stopped when its progress stands still for ``stall`` seconds (default
    :func:`stall_bound`). Status lines are not kept in the result's stdout.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    environ.update(env)
    command = [binary or restic_binary(), *args]
    if progress is None or "--json" not in args:
        try:
            return subprocess.run(
                command,
                env=environ,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            partial = exc.stderr or ""
            err = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
            return subprocess.CompletedProcess(
                command, -9, "", err + f"\nnsbackup: restic stopped: no end after {timeout:g} s\n"
            )
    return _stream(command, environ, timeout, progress, cwd, stall or stall_bound())


def _stream(
    command: list[str],
    environ: Mapping[str, str],
    timeout: float,
    progress: Callable[[dict[str, Any]], None],
    cwd: str | None,
    stall: float,
) -> subprocess.CompletedProcess[str]:
    import threading
    import time

    lines: list[str] = []
    errors: list[str] = []
    stopped: list[str] = []
    with subprocess.Popen(
        command,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        stderr = proc.stderr
        # stderr is read beside stdout: restic writing more than a pipe's worth of errors
        # (thousands of unreadable files) must not block it while we wait on stdout.
        reader = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
        reader.start()
        started = time.monotonic()
        moved: dict[str, Any] = {"at": started, "to": None}  # the last change of progress

        def watchdog() -> None:
            while proc.poll() is None:
                now = time.monotonic()
                if now - started > timeout:
                    stopped.append(f"no end after {timeout:g} s")
                elif now - moved["at"] > stall:
                    stopped.append(f"no progress for {stall:g} s (the destination hangs?)")
                if stopped:
                    proc.kill()
                    return
                time.sleep(0.5)

        threading.Thread(target=watchdog, daemon=True).start()
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                lines.append(line)
                continue
            if not isinstance(message, dict):
                continue
            signature = tuple(
                message.get(k) for k in ("message_type", "bytes_done", "files_done", "item")
            )
            if signature != moved["to"]:
                moved["at"], moved["to"] = time.monotonic(), signature
            if message.get("message_type") != "status":
                lines.append(line)
            progress(message)
        proc.wait()
        reader.join(timeout=30)
    text = "".join(errors)
    if stopped:
        text += f"\nnsbackup: restic stopped: {stopped[0]}\n"
    return subprocess.CompletedProcess(command, proc.returncode, "".join(lines), text)


def explain(returncode: int) -> str:
    return EXIT_CODES.get(returncode, f"restic exited with status {returncode}")


_REFUSED = re.compile(r"HTTP response \((401|403)\)|\b(401) Unauthorized|\b(403) Forbidden")


def gateway_refusal(stderr: str) -> str | None:
    """``"401"`` or ``"403"`` when restic says the gateway refused its credentials or the
    repository (every version words it differently), else None."""
    found = _REFUSED.search(stderr)
    return next(g for g in found.groups() if g) if found else None


def classify_failure(returncode: int, stderr: str, version: tuple[int, int, int]) -> Failure:
    """What a failed restic command (``returncode`` != 0) of ``version`` ran into.

    - ``no_repository``: there is no repository at the location (``init`` it);
    - ``locked``: another restic holds a conflicting lock (try again later);
    - ``wrong_password``: the repository password opens no key;
    - ``partial``: ``backup`` saved a snapshot without some unreadable source files;
    - ``fatal``: anything else, including a gateway refusing the credentials (401/403), an
      interruption and exit codes this function does not know.

    restic >= 0.17.0 exits 10 (no repository) and 11 (locked), >= 0.17.1 exits 12 (wrong
    password); older ones exit 1 and say it on stderr, which is read then (as plain text or as
    a ``--json`` error line). Exit 3 (partial backup) exists in every supported version.
    """
    if returncode == 0:
        raise ValueError("restic succeeded: there is no failure to classify")
    if returncode == 3:
        return "partial"
    if version >= (0, 17, 0) and returncode == 10:
        return "no_repository"
    if version >= (0, 17, 0) and returncode == 11:
        return "locked"
    if version >= (0, 17, 1) and returncode == 12:
        return "wrong_password"
    if returncode == 1:
        if _NO_REPOSITORY.search(stderr):
            return "no_repository"
        if _LOCKED in stderr:
            return "locked"
        if _WRONG_PASSWORD in stderr:
            return "wrong_password"
    return "fatal"
