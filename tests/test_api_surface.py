"""The public API stays put: the code must match docs/api-snapshot.json (scripts/api-snapshot).

A breaking change fails here until the snapshot is rewritten, which scripts/api-snapshot only
does once CHANGELOG.md's unreleased ``### API`` section names each broken object.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.api_surface import acknowledged, breaking_changes, load_snapshot, render, surface


def test_public_api_matches_the_snapshot() -> None:
    old, current = load_snapshot(), surface()
    problems = breaking_changes(old, current)
    assert not problems, (
        "breaking API changes:\n  "
        + "\n  ".join(problems)
        + "\nname each object in CHANGELOG.md (### API, in backquotes), then run "
        "scripts/api-snapshot --update"
    )
    added = sorted(set(current) - set(old))
    assert render(old) == render(current), (
        f"the public API changed without breaking it (new: {added or 'members'}): "
        "run scripts/api-snapshot --update and commit docs/api-snapshot.json"
    )


def test_the_snapshot_covers_the_facade() -> None:
    snapshot = load_snapshot()
    cluster = snapshot["nsbackup.Cluster"]["members"]
    assert {"destinations", "schedules", "gateway", "providers", "plugins", "from_env"} <= set(
        cluster
    )
    assert {"add", "alter", "remove", "list", "validate", "render"} <= set(
        snapshot["nsbackup.destinations.DestinationService"]["members"]
    )
    assert "DestinationAdded" in snapshot["nsbackup.results"]["members"]


def _function(*params: tuple[str, str, str | None], returns: str = "None") -> dict[str, Any]:
    return {
        "kind": "function",
        "labels": [],
        "parameters": [
            {"name": n, "kind": k, "annotation": "str", "default": d} for n, k, d in params
        ],
        "returns": returns,
    }


def _api(function: dict[str, Any], field_type: str = "str") -> dict[str, Any]:
    return {
        "pkg.Thing": {"kind": "class", "bases": ["Base"], "members": {"go": function}},
        "pkg.Shape": {
            "kind": "class",
            "bases": ["TypedDict"],
            "members": {"id": {"kind": "attribute", "annotation": field_type, "labels": []}},
        },
    }


def test_breaking_changes_are_recognised() -> None:
    base = _api(_function(("a", "positional or keyword", None), ("b", "keyword-only", "None")))
    assert breaking_changes(base, copy.deepcopy(base)) == []
    cases = {
        "removed": _api(_function(("a", "positional or keyword", None))),
        "required": _api(
            _function(
                ("a", "positional or keyword", None),
                ("b", "keyword-only", "None"),
                ("c", "keyword-only", None),
            )
        ),
        "kind": _api(_function(("a", "keyword-only", None), ("b", "keyword-only", "None"))),
        "default": _api(
            _function(("a", "positional or keyword", None), ("b", "keyword-only", "1"))
        ),
        "returns": _api(
            _function(
                ("a", "positional or keyword", None), ("b", "keyword-only", "None"), returns="int"
            )
        ),
        "field": _api(
            _function(("a", "positional or keyword", None), ("b", "keyword-only", "None")), "int"
        ),
    }
    for name, changed in cases.items():
        assert breaking_changes(base, changed), name
    gone = copy.deepcopy(base)
    del gone["pkg.Shape"]
    assert breaking_changes(base, gone) == ["pkg.Shape: removed"]
    rebased = copy.deepcopy(base)
    rebased["pkg.Thing"]["bases"] = []
    assert breaking_changes(base, rebased) == ["pkg.Thing: no longer derives from Base"]
    grown = copy.deepcopy(base)
    grown["pkg.Thing"]["members"]["go"]["parameters"].append(
        {"name": "c", "kind": "keyword-only", "annotation": "str", "default": "''"}
    )
    grown["pkg.New"] = {"kind": "function", "labels": [], "parameters": [], "returns": "None"}
    assert breaking_changes(base, grown) == []  # additions break nobody


def test_a_breaking_change_must_be_named_in_the_changelog() -> None:
    problems = ["nsbackup.Cluster.from_url: parameter url removed"]
    changelog = "# Changelog\n\n## [Unreleased]\n\n### API\n- something else\n\n## [0.1.0]\n"
    assert acknowledged(problems, changelog) == problems
    named = changelog.replace("something else", "`nsbackup.Cluster.from_url` takes no url")
    assert acknowledged(problems, named) == []
    released = named.replace(
        "## [Unreleased]\n\n### API\n- `", "## [Unreleased]\n\n### API\n- x\n\n## [0.0.9]\n- `"
    )
    assert acknowledged(problems, released) == problems
