"""The two restic generations the suite runs against: Debian 12's 0.14 and NS8's 0.18.

``scripts/setup`` installs both: ``/usr/bin/restic`` (Debian 12's package) and Debian 13's
restic extracted into ``.tools/restic-0.18``. A missing or wrong binary fails the tests that ask
for it, naming ``scripts/setup``; it never skips them. The ``restic_bin`` fixture runs a test
once per generation (ids ``restic-0.14`` and ``restic-0.18``); a test module takes it with::

    from tests import restic_versions

    restic_bin = restic_versions.restic_bin

    def test_something(restic_bin: Restic) -> None:
        env = restic_env(..., binary=restic_bin.binary)
        run_restic(["snapshots"], env, binary=restic_bin.binary)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from nsbackup.restic import restic_version
from tests.servers import REPO_ROOT, MissingComponent

BINARIES = {
    "restic-0.14": Path("/usr/bin/restic"),
    "restic-0.18": REPO_ROOT / ".tools" / "restic-0.18" / "usr" / "bin" / "restic",
}


@attrs.frozen
class Restic:
    """One restic binary, its generation (``restic-0.14``) and its exact version."""

    name: str
    binary: str
    version: tuple[int, int, int]


def find_restic(name: str) -> Restic:
    """The ``name`` generation (a key of :data:`BINARIES`), checked to be that version."""
    path = BINARIES[name]
    hint = "run `scripts/setup` (as root) to install it"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise MissingComponent(f"{name} is missing: no executable {path}; {hint}")
    version = restic_version(str(path))
    generation = "restic-{}.{}".format(*version[:2])
    if generation != name:
        raise MissingComponent(f"{path} is restic {version}, not {name}; {hint}")
    return Restic(name=name, binary=str(path), version=version)


def all_restics() -> Iterator[Restic]:
    """Every generation, failing on the first one missing."""
    for name in BINARIES:
        yield find_restic(name)


@pytest.fixture(params=list(BINARIES))
def restic_bin(request: pytest.FixtureRequest) -> Restic:
    """Each restic generation in turn (test ids ``restic-0.14``, ``restic-0.18``)."""
    name: str = request.param
    return find_restic(name)
