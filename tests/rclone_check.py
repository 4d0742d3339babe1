"""Ask the real rclone binary how it reads a config file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nsbackup import rclone


def dump(config_text: str, tmp_path: Path) -> dict[str, dict[str, str]]:
    """``rclone config dump`` of ``config_text`` (written 0600 to a temp file)."""
    path = tmp_path / f"check-{os.urandom(4).hex()}.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(config_text)
    try:
        result = rclone.run(["config", "dump"], config=path, timeout=60)
        assert result.returncode == 0, result.stderr
        data: dict[str, dict[str, str]] = json.loads(result.stdout)
        return data
    finally:
        path.unlink()
