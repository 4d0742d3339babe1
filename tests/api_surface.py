"""The public API as data, read statically with griffe, and the rules for changing it.

``docs/api-snapshot.json`` records every public object (docs/api.md says what is public):
kinds, signatures, annotations, bases and TypedDict fields, without docstrings or line numbers
so that only real API changes show. ``tests/test_api_surface.py`` fails when the code and the
snapshot differ; ``scripts/api-snapshot`` rewrites the snapshot, and refuses a breaking change
until CHANGELOG.md's ``### API`` section of the unreleased version names each broken object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "docs" / "api-snapshot.json"

# Public beyond nsbackup.__all__: the services reached as Cluster attributes, the result
# shapes, and the plugin contract.
EXTRA_ROOTS = [
    "nsbackup.results",
    "nsbackup.destinations.DestinationService",
    "nsbackup.schedules.ScheduleService",
    "nsbackup.gateway.service.GatewayService",
    "nsbackup.runs.timers.TimerService",
    "nsbackup.runs.timers.SystemdUnavailable",
    "nsbackup.runs.scheduler.Scheduler",
    "nsbackup.dr.dump.DumpService",
    "nsbackup.dr.dump.read_passphrase",
    "nsbackup.runs.node.RunService",
    "nsbackup.runs.module.ModuleService",
    "nsbackup.runs.report",
    "nsbackup.runs.context.RunContext",
    "nsbackup.dr.restore.RestoreService",
    "nsbackup.hookspecs",
    "nsbackup.provider.Provider",
    "nsbackup.provider.BaseProvider",
    "nsbackup.plugins.Renderer",
    "nsbackup.plugins.MetricSink",
    "nsbackup.plugins.S3Vendor",
    "nsbackup.plugins.ModuleRunner",
    "nsbackup.plugins.RunnerSettings",
    "nsbackup.plugins.RunnerResult",
    "nsbackup.model.Parameter",
    "nsbackup.model.DestinationRequest",
    "nsbackup.model.StoredDestination",
    "nsbackup.model.ValidatedDestination",
    "nsbackup.model.PreparedDestination",
    "nsbackup.model.NodeValidation",
    "nsbackup.testing.check_provider",
]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _describe(obj: Any, depth: int = 0) -> dict[str, Any]:
    obj = obj.final_target if obj.is_alias else obj
    kind = obj.kind.value
    item: dict[str, Any] = {"kind": kind}
    if kind == "function":
        item["labels"] = sorted(obj.labels & {"classmethod", "staticmethod", "async"})
        item["parameters"] = [
            {
                "name": p.name,
                "kind": p.kind.value if p.kind else None,
                "annotation": _text(p.annotation),
                "default": _text(p.default),
            }
            for p in obj.parameters
            if p.name not in ("self", "cls")
        ]
        item["returns"] = _text(obj.returns)
    elif kind == "attribute":
        item["annotation"] = _text(obj.annotation)
        labels = obj.labels & {"property", "cached", "class-attribute", "instance-attribute"}
        item["labels"] = sorted(labels)
    elif kind == "class":
        item["bases"] = [str(b) for b in obj.bases]
        item["members"] = {
            name: _describe(member, depth + 1)
            for name, member in sorted(obj.members.items())
            if _public(name) and not member.is_alias
        }
    elif kind == "module":
        exported = obj.exports
        item["members"] = {
            name: _describe(member, depth + 1)
            for name, member in sorted(obj.members.items())
            if (name in exported if exported is not None else _public(name))
            and (not member.is_alias or exported is not None)
        }
    return item


def _public(name: str) -> bool:
    return name == "__init__" or not name.startswith("_")


def surface() -> dict[str, Any]:
    """Every public object by its public path."""
    import griffe

    package = griffe.load(
        "nsbackup", search_paths=[str(ROOT)], resolve_aliases=True, resolve_external=False
    )
    result: dict[str, Any] = {}
    for name in package.exports or ():
        result[f"nsbackup.{name}"] = _describe(package[name])
    for path in EXTRA_ROOTS:
        result[path] = _describe(package[path.removeprefix("nsbackup.")])
    return result


def breaking_changes(old: Any, new: Any, path: str = "") -> list[str]:
    """What in ``new`` breaks a caller written against ``old`` (path: reason)."""
    if not isinstance(old, dict) or "kind" not in old:  # the top level
        problems = []
        for name, before in old.items():
            if name not in new:
                problems.append(f"{name}: removed")
            else:
                problems += breaking_changes(before, new[name], name)
        return problems
    if new["kind"] != old["kind"]:
        return [f"{path}: was a {old['kind']}, is a {new['kind']}"]
    problems = []
    kind = old["kind"]
    if kind in ("class", "module"):
        for base in old.get("bases", []):
            if base not in new.get("bases", []):
                problems.append(f"{path}: no longer derives from {base}")
        for name, member in old.get("members", {}).items():
            if name not in new.get("members", {}):
                problems.append(f"{path}.{name}: removed")
            else:
                problems += breaking_changes(member, new["members"][name], f"{path}.{name}")
    elif kind == "attribute":
        if old.get("annotation") != new.get("annotation"):
            problems.append(
                f"{path}: type changed from {old.get('annotation')} to {new.get('annotation')}"
            )
    elif kind == "function":
        problems += _signature_changes(old, new, path)
    return problems


def _signature_changes(old: dict[str, Any], new: dict[str, Any], path: str) -> list[str]:
    problems = []
    before = {p["name"]: p for p in old["parameters"]}
    after = {p["name"]: p for p in new["parameters"]}
    positional = [p["name"] for p in old["parameters"] if "positional" in (p["kind"] or "")]
    new_positional = [p["name"] for p in new["parameters"] if "positional" in (p["kind"] or "")]
    if new_positional[: len(positional)] != positional:
        problems.append(f"{path}: positional parameters changed {positional} -> {new_positional}")
    for name, param in before.items():
        if name not in after:
            if not any(p["kind"] == "variadic keyword" for p in new["parameters"]):
                problems.append(f"{path}: parameter {name} removed")
            continue
        if param["kind"] != after[name]["kind"]:
            problems.append(f"{path}: parameter {name} is now {after[name]['kind']}")
        if param["default"] != after[name]["default"]:
            problems.append(
                f"{path}: default of {name} changed {param['default']} -> {after[name]['default']}"
            )
        if param["annotation"] != after[name]["annotation"]:
            was, now = param["annotation"], after[name]["annotation"]
            problems.append(f"{path}: type of {name} changed {was} -> {now}")
    for name, param in after.items():
        variadic = (param["kind"] or "").startswith("variadic")
        if name not in before and param["default"] is None and not variadic:
            problems.append(f"{path}: new required parameter {name}")
    if old["returns"] != new["returns"]:
        problems.append(f"{path}: returns {new['returns']} instead of {old['returns']}")
    if old.get("labels") != new.get("labels"):
        problems.append(f"{path}: was {old.get('labels')}, is {new.get('labels')}")
    return problems


def acknowledged(problems: list[str], changelog: str) -> list[str]:
    """The problems whose object the unreleased ``### API`` section does not name."""
    unreleased = changelog.split("## [Unreleased]", 1)[-1].split("\n## ", 1)[0]
    match = re.search(r"### API\n(.*?)(?=\n### |\Z)", unreleased, flags=re.S)
    section = match.group(1) if match else ""
    return [p for p in problems if f"`{p.split(':', 1)[0]}`" not in section]


def load_snapshot() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    return data


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check or update docs/api-snapshot.json")
    parser.add_argument("--update", action="store_true", help="rewrite the snapshot")
    args = parser.parse_args(argv)
    current = surface()
    old = load_snapshot() if SNAPSHOT.exists() else {}
    problems = breaking_changes(old, current)
    if not args.update:
        for problem in problems:
            print(f"breaking: {problem}")
        same = render(old) == render(current)
        print("snapshot up to date" if same else "snapshot differs (scripts/api-snapshot)")
        return 0 if same else 1
    missing = acknowledged(problems, (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
    if missing:
        print("breaking changes not acknowledged in CHANGELOG.md (### API, `path`):")
        for problem in missing:
            print(f"  {problem}")
        return 1
    SNAPSHOT.write_text(render(current), encoding="utf-8")
    print(f"wrote {SNAPSHOT.relative_to(ROOT)} ({len(current)} public objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
