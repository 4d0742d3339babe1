"""Packaging: every built-in plugin module has an entry point, and a wheel built from the tree,
installed in a clean virtualenv outside the repository, finds and loads all of them.

The wheel is built from a copy of the tree (so the repository gets no ``build/`` or
``*.egg-info``); the virtualenv is a plain ``python -m venv`` whose pip installs the wheel's
dependencies from the package index (its cache keeps later runs fast).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.builtin import BUILTIN_PLUGINS, BUILTIN_PROVIDERS, build_isolation_args

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "plugins"
ENTRY_POINT_GROUP = "nsbackup"
# Not part of a source tree: local environments, caches, build output.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".tools",
    "node_modules",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
)


def plugin_modules() -> set[str]:
    return {p.stem for p in PLUGIN_DIR.glob("*.py") if p.stem != "__init__"}


def entry_points() -> dict[str, str]:
    with open(REPO / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    declared: dict[str, str] = project["entry-points"][ENTRY_POINT_GROUP]
    return declared


# -- fast: the declaration ------------------------------------------------------------------


def test_every_builtin_plugin_module_has_an_entry_point_and_vice_versa() -> None:
    declared = entry_points()
    targets: dict[str, str] = {}
    for name, value in declared.items():
        m = re.fullmatch(r"nsbackup_plugins\.([A-Za-z_][A-Za-z0-9_]*)", value.strip())
        assert m, f"entry point {name} = {value!r} does not point at a nsbackup_plugins module"
        assert m.group(1) not in targets, (
            f"entry points {targets.get(m.group(1))} and {name} load the same module {value}"
        )
        targets[m.group(1)] = name
    modules = plugin_modules()
    assert not modules - set(targets), (
        f"plugins/ modules without an entry point in [project.entry-points.nsbackup]: "
        f"{sorted(modules - set(targets))}"
    )
    assert not set(targets) - modules, (
        f"entry points naming no module in plugins/: "
        f"{sorted(targets[m] for m in set(targets) - modules)}"
    )
    assert set(declared) == BUILTIN_PLUGINS


# -- slow: a wheel in a clean virtualenv ------------------------------------------------------


def run(cmd: list[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, (
        f"{' '.join(cmd[:4])} ... failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            *build_isolation_args(),
            "--wheel-dir",
            str(work / "dist"),
            str(source),
        ],
        timeout=300,
    )
    (built,) = (work / "dist").glob("nsbackup-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain virtualenv (no system site-packages) with the wheel and its dependencies."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", str(root)], timeout=120)
    run(
        [
            str(root / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(wheel),
        ],
        timeout=600,
    )
    return root


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory outside the repository."""
    path = tmp_path_factory.mktemp("outside")
    assert not path.is_relative_to(REPO)
    return path


def clean_env(venv: Path, home: Path) -> dict[str, str]:
    """No PYTHONPATH, no inherited settings: just the venv first on PATH."""
    return {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }


def venv_cli(venv: Path, cwd: Path, *args: str) -> Any:
    result = run(
        [str(venv / "bin" / "nsbackup"), *args], timeout=60, cwd=cwd, env=clean_env(venv, cwd)
    )
    return json.loads(result.stdout)


def test_wheel_holds_every_plugin_module_and_the_entry_points(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points_txt,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points_txt).decode()
    expected = {
        f"nsbackup_plugins/{p.relative_to(PLUGIN_DIR).as_posix()}"
        for p in PLUGIN_DIR.rglob("*")
        if p.suffix == ".py" or p.name == "py.typed"
    }
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    assert {"nsbackup/py.typed", "nsbackup/cli/__init__.py"} <= names
    assert not any(n.startswith(("tests/", "plugins/")) for n in names)
    assert f"[{ENTRY_POINT_GROUP}]" in text
    for name, value in entry_points().items():
        assert re.search(rf"^{re.escape(name)} = {re.escape(value)}$", text, re.MULTILINE), name


def test_installed_wheel_loads_every_builtin_plugin_outside_the_repository(
    venv: Path, outside: Path
) -> None:
    data = venv_cli(venv, outside, "--json", "plugins")
    assert data["failures"] == []
    plugins = {p["name"]: p for p in data["plugins"]}
    assert set(plugins) == BUILTIN_PLUGINS
    assert {p["distribution"] for p in plugins.values()} == {"nsbackup"}

    providers = venv_cli(venv, outside, "--json", "providers")
    assert {p["name"] for p in providers} == BUILTIN_PROVIDERS


def test_installed_packages_come_from_the_venv_not_the_repository(
    venv: Path, outside: Path
) -> None:
    probe = (
        "import json, sys, nsbackup, nsbackup_plugins; "
        "print(json.dumps([nsbackup.__file__, nsbackup_plugins.__file__, sys.prefix]))"
    )
    result = run(
        [str(venv / "bin" / "python"), "-c", probe],
        timeout=60,
        cwd=outside,
        env=clean_env(venv, outside),
    )
    core, plugins, prefix = (Path(p) for p in json.loads(result.stdout))
    site = venv.resolve() / "lib"
    for path in (core, plugins):
        assert path.resolve().is_relative_to(site), f"{path} is not inside {site}"
        assert not path.resolve().is_relative_to(REPO)
    assert prefix.resolve() == venv.resolve()
