"""The command line: output contracts, exit codes, secrets never echoed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nsbackup.cli import main
from nsbackup.obscure import reveal
from tests.builtin import BUILTIN_PROVIDERS

NSBACKUP = str(Path(sys.executable).parent / "nsbackup")
CANARY = "canary-Cl1-secret"
B2 = {
    "provider": "backblaze",
    "name": "",
    "url": "b2:mybucket",
    "parameters": {"b2_account_id": "id", "b2_account_key": CANARY},
}


def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(args), out, err)
    finally:
        sys.stdin = old
    return code, out.getvalue(), err.getvalue()


def test_console_script_providers_json() -> None:
    result = subprocess.run(
        [NSBACKUP, "--json", "providers"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {p["name"] for p in data} == BUILTIN_PROVIDERS
    smb = next(p for p in data if p["name"] == "smb")
    params = {p["name"]: p for p in smb["parameters"]}
    assert params["smb_pass"]["secret"] and params["smb_pass"]["required"]
    assert not params["smb_port"]["required"] and not params["smb_host"]["secret"]


def test_plugins_json() -> None:
    code, out, _ = run("--json", "plugins")
    data = json.loads(out)
    assert code == 0 and data["failures"] == []
    names = {p["name"]: p for p in data["plugins"]}
    assert names["s3"]["registered"] == {"provider": ["aws", "generic-s3"]}
    assert names["s3"]["distribution"] == "nsbackup"


def test_plugins_text() -> None:
    code, out, _ = run("plugins")
    assert code == 0 and "s3 (nsbackup " in out and "aws, generic-s3" in out


def test_render_text_hides_secrets() -> None:
    code, out, err = run("destination", "render", "--data", json.dumps(B2))
    assert code == 0, err
    assert out.splitlines()[2].startswith("[")
    assert "key = ***" in out and CANARY not in out + err


def test_render_json_shape_and_show_secrets(tmp_path: Path) -> None:
    path = tmp_path / "req.json"
    path.write_text(json.dumps(B2))
    code, out, _ = run("--json", "destination", "render", "--data", f"@{path}")
    data = json.loads(out)
    assert code == 0 and set(data) == {"id", "name", "provider", "url", "basepath", "rclone_conf"}
    assert data["name"] == "Backblaze mybucket" and CANARY not in out
    code, out, _ = run(
        "--json", "destination", "render", "--show-secrets", "--data", "-", stdin=json.dumps(B2)
    )
    assert code == 0 and f"key = {CANARY}" in json.loads(out)["rclone_conf"]


@pytest.mark.parametrize(
    ("payload", "field", "parameter", "error"),
    [
        (
            {**B2, "parameters": {"b2_account_id": "id", "b2_account_key": CANARY + "\n[x]"}},
            "parameters",
            "b2_account_key",
            "pattern",
        ),
        ({**B2, "url": "b2:x"}, "url", "url", "pattern"),
        ({**B2, "provider": "nope"}, "provider", "provider", "backup_provider_unknown"),
        ([1, 2], "", "", "type"),
    ],
)
def test_validation_failure_exit_2_with_error_list(
    payload: Any, field: str, parameter: str, error: str
) -> None:
    code, out, err = run("--json", "destination", "render", "--data", json.dumps(payload))
    assert code == 2
    errors = json.loads(out)
    assert isinstance(errors, list)
    assert {k: errors[0][k] for k in ("field", "parameter", "error")} == {
        "field": field,
        "parameter": parameter,
        "error": error,
    }
    assert CANARY not in out + err
    assert err.startswith("error: ")


def test_bad_json_and_usage_errors() -> None:
    code, out, err = run("destination", "render", "--data", "{nope")
    assert code == 2 and out == "" and err.count("error: ") == 1 and "not valid JSON" in err
    code, out, _ = run("--json", "destination", "render", "--data", "{nope")
    assert code == 2 and json.loads(out)[0]["error"] == "invalid_json"
    code, out, _ = run("--json", "destination", "render", "--data", "@/nonexistent/file.json")
    assert code == 2 and json.loads(out)[0]["error"] == "unreadable_file"
    code, out, err = run("no-such-group")
    assert code == 2 and out == ""
    assert err.startswith("usage: nsbackup ") and "nsbackup: error: argument GROUP: invalid" in err
    code, out, err = run("--json", "no-such-group")
    assert code == 2 and json.loads(out)[0]["error"] == "usage" and "invalid choice" in err


def test_rclone_obscure_reveal_commands() -> None:
    code, out, _ = run("rclone", "obscure", "secret")
    assert code == 0 and reveal(out.strip()) == "secret"
    code, out, _ = run("rclone", "reveal", "YCNNJ_5NenMsPtfHmfxt9yb08zGnuA")
    assert code == 0 and out == "secret\n"
    code, out, _ = run("--json", "rclone", "obscure", "-", stdin="from stdin\n")
    assert code == 0 and reveal(json.loads(out)["obscured"]) == "from stdin"
    code, out, _ = run("--json", "rclone", "reveal", "not-obscured")
    assert code == 2 and json.loads(out)[0]["error"] == "invalid_obscured"


def test_plugin_error_maps_to_exit_6(monkeypatch: pytest.MonkeyPatch) -> None:
    from nsbackup_plugins import backblaze

    def crash(self: Any, validated: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(backblaze.BackblazeProvider, "rclone_section", crash)
    code, out, err = run("--json", "destination", "render", "--data", json.dumps(B2))
    assert code == 6
    assert json.loads(out)["error"] == "plugin_error" and "backblaze" in err
