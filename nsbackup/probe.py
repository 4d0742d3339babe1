"""Checks that a destination is usable, with the real rclone and a throw-away config.

The steps follow NS8's validate-backup-destination (ref §2.10) with a stronger write check:
list the base path (a base path that does not exist yet is fine), create a probe directory,
write a small file in it, delete the file, remove the directory. Each step is bounded, so a
dead endpoint answers within seconds. The temporary config is mode 0600 inside a private
directory and is always removed.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import attrs

from nsbackup import rclone
from nsbackup.model import PreparedDestination
from nsbackup.secret import REDACTED, Secret

# Exit status 3 is rclone's "directory not found".
_RC_DIR_NOT_FOUND = 3
_UNREACHABLE = re.compile(
    r"connection refused|no such host|i/o timeout|context deadline exceeded|network is "
    r"unreachable|no route to host|tls: |x509: |dial tcp|connection reset|EOF$|timeout",
    re.IGNORECASE | re.MULTILINE,
)

# rclone starts each log line with a timestamp: noise in a message.
_TIMESTAMP = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} ", re.MULTILINE)
# rclone's log levels below ERROR: context, not the failure.
_NOTICE = re.compile(r"\s*(NOTICE|INFO|DEBUG)\s*:")
DETAIL_LENGTH = 400

REASONS = (
    "no_write_permission",
    "no_delete_permission",
    "no_read_permission",
    "backup_repository_not_accessible",
)
"""Failure reasons, most important first (NS8's ranking when several nodes fail)."""


@attrs.frozen
class ProbeResult:
    ok: bool
    reason: str | None = None
    step: str | None = None
    returncode: int | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


def most_important(reasons: Iterable[str]) -> str:
    """The reason to report when every node failed (NS8's ranking)."""
    found = set(reasons)
    for reason in REASONS:
        if reason in found:
            return reason
    return "backup_repository_not_accessible"


def probe(
    prepared: PreparedDestination,
    basepath: str | None = None,
    *,
    step_timeout: float = 30,
) -> ProbeResult:
    """Probe ``prepared`` through its rendered section. ``basepath`` overrides the provider's
    (e.g. the gateway's repository directory for a ``cluster`` destination)."""
    root = prepared.basepath if basepath is None else basepath
    remote = f"{prepared.id}:{root}"
    probe_dir = f"{remote.rstrip('/')}/.nsbackup-probe-{secrets.token_hex(6)}"
    hidden = [v for v in prepared.section.values() if isinstance(v, Secret) and v]

    with tempfile.TemporaryDirectory(prefix="nsbackup-probe-") as tmp:
        os.chmod(tmp, 0o700)
        config = Path(tmp) / "rclone.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(prepared.rclone_conf)
        cache = Path(tmp) / "cache"

        def step(name: str, args: list[str]) -> tuple[int, str]:
            result = rclone.run(
                [*args, *rclone.QUICK_FLAGS, "--cache-dir", str(cache)],
                config=config,
                timeout=step_timeout,
            )
            return result.returncode, _scrub(result.stderr, hidden)

        def failed(reason: str, name: str, rc: int, err: str) -> ProbeResult:
            if _UNREACHABLE.search(err) and name == "list":
                reason = "backup_repository_not_accessible"
            return ProbeResult(False, reason, name, rc, excerpt(err))

        def timed_out(reason: str, name: str) -> ProbeResult:
            detail = f"rclone did not finish the {name} step within {step_timeout:g} s"
            return ProbeResult(False, reason, name, None, detail)

        try:
            rc, err = step("list", ["lsd", remote])
        except subprocess.TimeoutExpired:
            return timed_out("backup_repository_not_accessible", "list")
        if rc not in (0, _RC_DIR_NOT_FOUND):
            return failed("no_read_permission", "list", rc, err)
        plan = [
            ("mkdir", ["mkdir", probe_dir], "no_write_permission"),
            ("write", ["touch", f"{probe_dir}/probe"], "no_write_permission"),
            ("delete", ["deletefile", f"{probe_dir}/probe"], "no_delete_permission"),
            ("rmdir", ["rmdir", probe_dir], "no_delete_permission"),
        ]
        for name, args, reason in plan:
            try:
                rc, err = step(name, args)
            except subprocess.TimeoutExpired:
                return timed_out(reason, name)
            if rc != 0:
                return failed(reason, name, rc, err)
    return ProbeResult(True)


def excerpt(text: str, limit: int = DETAIL_LENGTH) -> str:
    """The start of a tool's error output as one line: timestamps dropped, rclone's notices
    left out when an error follows them, lines joined, whitespace squeezed, cut after
    ``limit`` characters (ending with ``…``). The first error lines say what failed; what
    follows (an HTML error page, a retry summary) matters less."""
    lines = _TIMESTAMP.sub("", text).splitlines()
    errors = [line for line in lines if not _NOTICE.match(line)]
    flat = " ".join(" ".join(errors or lines).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _scrub(text: str, hidden: list[Secret]) -> str:
    for value in hidden:
        text = text.replace(str.__str__(value), REDACTED)
    return text.strip()
