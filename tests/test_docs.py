"""The docs stay true: included files match, every hook is documented with its signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from nsbackup import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def test_included_files_match_the_repository() -> None:
    for doc in (ROOT / "docs").glob("*.md"):
        text = doc.read_text()
        for path, block in re.findall(
            r"<!-- include: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S
        ):
            assert (ROOT / path).read_text() == block, f"{doc.name}: {path} differs"


def test_every_hook_is_documented_with_its_signature() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [f for n, f in vars(hookspecs).items() if n.startswith("nsbackup_")]
    assert len(hooks) >= 5
    for hook in hooks:
        args = ", ".join(inspect.signature(hook).parameters)
        assert f"`{hook.__name__}({args})`" in guide, f"{hook.__name__}({args}) not in the guide"
        assert hook.__doc__ and len(hook.__doc__) > 80, f"{hook.__name__} has no real docstring"
