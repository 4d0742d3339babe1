"""The module side of a backup: ``nsbackup module backup BID`` (NS8's ``module-backup``,
ref §4.2), run in a module's context with the module's own credentials.

The module's directory holds ``state/`` (always backed up), ``etc/state-include.conf`` (more
paths, relative to the directory, one per line) and ``etc/state-exclude.conf`` (restic
exclude patterns). The repository is ``/<destination>/<app>/<module uuid>`` through the
gateway, where the module may only append: it initialises the repository when there is none,
backs up, and reports restic's summary. Retention and stats are the node's job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nsbackup.errors import Busy, NsbackupError, ValidationFailed
from nsbackup.files import write_atomic
from nsbackup.restic import classify_failure, explain, restic_binary, restic_env, restic_version
from nsbackup.results import ModuleBackupResult
from nsbackup.runs.command import check_seconds
from nsbackup.runs.locks import LockTimeout, file_lock
from nsbackup.store import Store

log = logging.getLogger(__name__)

LOCK_NAME = ".module-backup.lock"  # NS8's name, in the module's state directory
HOOK_TIMEOUT = 3600.0

Progress = Callable[[dict[str, Any]], None]


def app_of(module_id: str) -> str:
    """The application type of a module id (``mail1`` → ``mail``): the gateway's rule."""
    return module_id.rstrip("0123456789") or module_id


class ModuleService:
    """``cluster.module``: what a module does with its own credentials."""

    def __init__(self, store: Store, settings: Any) -> None:
        self.store = store
        self.settings = settings

    def _module_id(self) -> str:
        module_id = self.settings.module_id
        if not module_id and self.store.user.startswith("module/"):
            module_id = self.store.user.split("/", 1)[1]
        if not module_id:
            raise ValidationFailed.one(
                "module",
                None,
                "required",
                "the module is unknown: set MODULE_ID (or --module), or connect as module/<id>",
            )
        return str(module_id)

    def backup(
        self,
        backup_id: int,
        *,
        wait: float = 3600.0,
        progress: Progress | None = None,
        timeout: float = 24 * 3600.0,
    ) -> ModuleBackupResult:
        """Back this module up for schedule ``backup_id`` (NS8's module-backup).

        Waits at most ``wait`` seconds for another backup of the same module (:class:`Busy`
        after that). Returns restic's summary with ``exit_code`` 0 (done), 3 (done, some files
        could not be read) or another code with ``failure`` and ``message`` saying why.
        """
        check_seconds("wait", wait)
        module_id = self._module_id()
        module_dir = Path(self.settings.module_dir or os.getcwd()).resolve()
        state_dir = module_dir / "state"
        if not state_dir.is_dir():
            raise ValidationFailed.one(
                "module_dir",
                str(module_dir),
                "not_found",
                f"{module_dir} has no state/ directory: is this module {module_id}'s directory?",
            )
        inputs = self.store.module_backup_inputs(backup_id, module_id)
        schedule = inputs.schedule
        if module_id not in schedule.instances:
            raise ValidationFailed.one(
                "module",
                module_id,
                "module_not_in_backup",
                f"module {module_id} is not an instance of backup {backup_id}",
            )
        if not inputs.module_uuid:
            raise ValidationFailed.one(
                "module", module_id, "module_not_found", f"module {module_id} has no UUID"
            )
        if inputs.restic_password is None:
            raise NsbackupError(
                f"destination {schedule.repository} has no Restic password (or {self.store.user} "
                "may not read it)"
            )
        repository_path = f"{schedule.repository}/{app_of(module_id)}/{inputs.module_uuid}"
        try:
            with file_lock(state_dir / LOCK_NAME, wait=wait):
                return self._backup_locked(
                    module_id,
                    module_dir,
                    backup_id,
                    inputs,
                    repository_path,
                    progress,
                    timeout,
                )
        except LockTimeout as exc:
            holder = f" (pid {exc.holder})" if exc.holder else ""
            raise Busy(
                f"another backup of module {module_id} is running{holder}; still locked after "
                f"{wait:g} s"
            ) from None

    def restore(
        self,
        payload: Any,
        *,
        target: str | None = None,
        wait: float = 3600.0,
        progress: Progress | None = None,
        timeout: float = 24 * 3600.0,
    ) -> dict[str, Any]:
        """Restore ``{"repository","path","snapshot"}`` into this module's directory (or
        ``target``) with the module's own credentials: its own repository, or one a grant lets
        it read. ``state/environment`` and ``state/agent.env`` (the module's identity and
        credentials) are never overwritten. The last restic message is kept in
        ``state/restic_restore.json``."""
        from nsbackup.dr.restore import RestoreRequest

        check_seconds("wait", wait)
        request = RestoreRequest.parse(payload, with_module=False)
        module_id = self._module_id()
        module_dir = Path(self.settings.module_dir or os.getcwd()).resolve()
        state_dir = module_dir / "state"
        if not state_dir.is_dir():
            raise ValidationFailed.one(
                "module_dir", str(module_dir), "not_found", f"{module_dir} has no state/ directory"
            )
        destination = Path(target).resolve() if target else module_dir
        password = self.store.restic_password(request.repository)
        if password is None:
            raise NsbackupError(
                f"destination {request.repository} has no Restic password (or {self.store.user} "
                "may not read it)"
            )
        repository_path = f"{request.repository}/{request.path}"
        kwargs = self.store.writer.connection_pool.connection_kwargs
        gateway_password = str(kwargs.get("password") or "")
        try:
            with file_lock(state_dir / LOCK_NAME, wait=wait):
                self._wait_for_access(repository_path, gateway_password)
                return self._restore_locked(
                    module_id,
                    state_dir,
                    destination,
                    request,
                    repository_path,
                    gateway_password,
                    password.reveal(),
                    progress,
                    timeout,
                )
        except LockTimeout as exc:
            holder = f" (pid {exc.holder})" if exc.holder else ""
            raise Busy(
                f"module {module_id} is being backed up{holder}; still locked after {wait:g} s"
            ) from None

    def _wait_for_access(self, repository_path: str, password: str, timeout: float = 10.0) -> None:
        """A grant reaches the gateway within moments of its event: wait for it, bounded.
        Raise :class:`PermissionDenied` when the module still may not read the repository,
        :class:`NotFound` when there is none."""
        import requests

        from nsbackup.errors import NotFound, PermissionDenied
        from nsbackup.model import FieldError

        url = f"{self.settings.gateway_url.rstrip('/')}/{repository_path}/config"
        headers = {"Accept": "application/vnd.x.restic.rest.v2"}
        deadline = time.monotonic() + timeout
        status = 0
        while True:
            try:
                status = requests.head(
                    url, auth=(self.store.user, password), headers=headers, timeout=(3, 10)
                ).status_code
            except requests.RequestException as exc:
                raise NsbackupError(
                    f"the gateway {self.settings.gateway_url} does not answer: {type(exc).__name__}"
                ) from None
            if status == 200:
                return
            if status == 404:
                raise NotFound(
                    [
                        FieldError(
                            "path",
                            "path",
                            repository_path,
                            "backup_repository_not_found",
                            f"there is no repository at {repository_path}",
                        )
                    ]
                )
            if time.monotonic() >= deadline:
                raise PermissionDenied(
                    f"permission denied: {self.store.user} may not read {repository_path} "
                    f"(gateway status {status}); a restore from another module needs a grant"
                )
            time.sleep(0.1)

    def _restore_locked(
        self,
        module_id: str,
        state_dir: Path,
        destination: Path,
        request: Any,
        repository_path: str,
        gateway_password: str,
        restic_password: str,
        progress: Progress | None,
        timeout: float,
    ) -> dict[str, Any]:
        from nsbackup.errors import NotFound
        from nsbackup.model import FieldError
        from nsbackup.restic import run_restic

        binary = restic_binary()
        version = restic_version(binary)
        env = restic_env(
            repository_path=repository_path,
            user=self.store.user,
            password=gateway_password,
            restic_password=restic_password,
            gateway_url=self.settings.gateway_url,
            cache_dir=str(state_dir.parent / ".cache" / "restic"),
            binary=binary,
        )
        args = ["restore", request.snapshot, "--target", str(destination)]
        for kept in ("state/environment", "state/agent.env", f"state/{LOCK_NAME}"):
            args += ["--exclude", kept]
        if version >= (0, 17, 0):
            args += ["--exclude-xattr", "security.*"]
        json_progress = version >= (0, 16, 0)
        if json_progress:
            args.append("--json")
        last: dict[str, Any] = {}

        def on_message(message: dict[str, Any]) -> None:
            last.clear()
            last.update(message)
            if message.get("message_type") == "status" and progress is not None:
                progress(message)

        started = time.time()
        completed = run_restic(
            args,
            env,
            binary=binary,
            timeout=timeout,
            progress=on_message if json_progress else None,
        )
        if completed.returncode != 0:
            reason = restic_reason(completed.stderr)
            if (
                "no matching ID found" in completed.stderr
                or "no snapshot found" in completed.stderr
            ):
                raise NotFound(
                    [
                        FieldError(
                            "snapshot",
                            "snapshot",
                            request.snapshot,
                            "backup_snapshot_not_found",
                            f"snapshot {request.snapshot} not found in {repository_path}",
                        )
                    ]
                )
            kind = classify_failure(completed.returncode, completed.stderr, version)
            raise NsbackupError(
                f"restic restore failed: {explain_failure(kind, completed.returncode)}: {reason}"
            )
        summary = last if last.get("message_type") == "summary" else {}
        _write_private(
            state_dir / "restic_restore.json", json.dumps(summary or {"exit_code": 0}).encode()
        )
        return {
            "module_id": module_id,
            "repository": request.repository,
            "path": request.path,
            "snapshot": request.snapshot,
            "target": str(destination),
            "exit_code": 0,
            # restic < 0.16 prints no restore summary: unknown, not 0
            "restored_files": _int(summary.get("files_restored")) if summary else None,
            "restored_bytes": _int(summary.get("bytes_restored")) if summary else None,
            "start": int(started),
            "end": int(time.time()),
        }

    def _backup_locked(
        self,
        module_id: str,
        module_dir: Path,
        backup_id: int,
        inputs: Any,
        repository_path: str,
        progress: Progress | None,
        timeout: float,
    ) -> ModuleBackupResult:
        state_dir = module_dir / "state"
        started = time.time()
        for name, payload in inputs.dumps.items():
            _write_private(state_dir / f"{name}.dump", payload)
        self._hook("module-dump-state", module_dir, backup_id, required=True)
        binary = restic_binary()
        version = restic_version(binary)
        kwargs = self.store.writer.connection_pool.connection_kwargs
        env = restic_env(
            repository_path=repository_path,
            user=self.store.user,
            password=str(kwargs.get("password") or ""),
            restic_password=inputs.restic_password.reveal(),
            gateway_url=self.settings.gateway_url,
            cache_dir=str(module_dir / ".cache" / "restic"),
            binary=binary,
        )
        result: ModuleBackupResult = {
            "module_id": module_id,
            "module_uuid": inputs.module_uuid,
            "backup_id": backup_id,
            "repository": repository_path,
            "initialized": False,
            "exit_code": 0,
            "failure": None,
            "message": "",
            "snapshot_id": "",
            "added_bytes": 0,
            "files_new": 0,
            "files_changed": 0,
            "total_bytes": 0,
            "start": int(started),
            "end": int(started),
        }
        try:
            # The repository usually exists: back up at once; restic refuses quickly when
            # it does not (no key derivation), then it is created and the backup retried.
            self._run_backup(module_dir, env, binary, version, progress, timeout, result)
            if result["failure"] == "no_repository":
                self._init_repository(env, binary, result)
                if result["initialized"]:
                    self._run_backup(module_dir, env, binary, version, progress, timeout, result)
        finally:
            cleanup = self._hook("module-cleanup-state", module_dir, backup_id, required=False)
            if cleanup and result["failure"] is None:
                result["message"] = cleanup
            result["end"] = int(time.time())
        return result

    def _init_repository(
        self, env: dict[str, str], binary: str, result: ModuleBackupResult
    ) -> None:
        from nsbackup.restic import run_restic

        init = run_restic(["init"], env, binary=binary, timeout=300)
        if init.returncode != 0:
            _fail(result, init.returncode, "fatal", init.stderr, "restic init failed: ")
            return
        result["initialized"] = True
        result["exit_code"], result["failure"], result["message"] = 0, None, ""

    def _run_backup(
        self,
        module_dir: Path,
        env: dict[str, str],
        binary: str,
        version: Any,
        progress: Progress | None,
        timeout: float,
        result: ModuleBackupResult,
    ) -> None:
        from nsbackup.restic import run_restic

        args = ["backup", "--json"]
        exclude = module_dir / "etc" / "state-exclude.conf"
        include = module_dir / "etc" / "state-include.conf"
        if exclude.is_file():
            args += ["--exclude-file", str(exclude)]
        if include.is_file():
            args += ["--files-from", str(include)]
        args.append("state")
        summary: dict[str, Any] = {}

        def on_message(message: dict[str, Any]) -> None:
            if message.get("message_type") == "summary":
                summary.update(message)
            elif message.get("message_type") == "status" and progress is not None:
                progress(message)

        completed = run_restic(
            args,
            env,
            binary=binary,
            cwd=str(module_dir),
            timeout=timeout,
            progress=on_message,
        )
        result["exit_code"] = completed.returncode
        if summary:
            result["snapshot_id"] = str(summary.get("snapshot_id") or "")
            result["added_bytes"] = _int(summary.get("data_added"))
            result["files_new"] = _int(summary.get("files_new"))
            result["files_changed"] = _int(summary.get("files_changed"))
            result["total_bytes"] = _int(summary.get("total_bytes_processed"))
        if completed.returncode != 0:
            kind = classify_failure(completed.returncode, completed.stderr, version)
            _fail(result, completed.returncode, kind, completed.stderr)

    def _hook(self, name: str, module_dir: Path, backup_id: int, *, required: bool) -> str:
        """Run the module's ``module-dump-state``/``module-cleanup-state`` if it has one
        (``<module>/bin`` first, then ``PATH``, as NS8's runagent arranges). A failing dump
        fails the backup; a failing cleanup is reported and does not."""
        search = os.pathsep.join([str(module_dir / "bin"), os.environ.get("PATH", "")])
        found = shutil.which(name, path=search)
        if found is None:
            return ""
        try:
            completed = subprocess.run(
                [found, str(backup_id)],
                cwd=module_dir / "state",
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=HOOK_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            message = f"{name} failed: {type(exc).__name__}"
        else:
            if completed.returncode == 0:
                return ""
            message = f"{name} exited {completed.returncode}: {completed.stderr.strip()[-300:]}"
        if required:
            raise NsbackupError(message)
        log.warning("%s", message)
        return message


def _fail(result: ModuleBackupResult, code: int, kind: str, stderr: str, prefix: str = "") -> None:
    result["exit_code"] = code
    result["failure"] = kind
    detail = restic_reason(stderr)
    result["message"] = f"{prefix}{explain_failure(kind, code)}" + (f": {detail}" if detail else "")


def explain_failure(kind: str, code: int) -> str:
    texts = {
        "partial": "some source data could not be read (restic exit 3); the snapshot lacks it",
        "no_repository": "the repository does not exist (restic exit 10)",
        "locked": "the repository is locked by another restic (restic exit 11)",
        "wrong_password": "the Restic password opens no key of the repository (restic exit 12)",
    }
    return texts.get(kind, explain(code))


def restic_reason(stderr: str) -> str:
    """restic's reason: its ``Fatal:`` line when there is one (restic 0.14 follows it with
    hints and the repository URL), else its last line; JSON error lines are read too."""
    import json

    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and data.get("message_type") in ("exit_error", "error"):
                text = data.get("message") or (data.get("error") or {}).get("message")
                if text:
                    return str(text)[:300]
    fatal = [line for line in lines if line.startswith("Fatal:")]
    chosen = fatal[-1] if fatal else (lines[-1] if lines else "")
    return chosen.removeprefix("Fatal: ")[:300]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path``, never write through it: a restored snapshot may have left a symlink
    there (``restic_restore.json -> agent.env`` overwrote the module's credentials)."""
    write_atomic(path, data, 0o600)
