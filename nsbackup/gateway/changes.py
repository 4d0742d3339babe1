"""What a reload changes, in words for the log: users and module repositories of the maps,
destinations of the combined remote. Pure functions of the files and contexts; no secret (a
password change names the user, never the hash)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

from nsbackup.gateway.context import RenderContext
from nsbackup.gateway.logs import describe


def _lines(text: str | None) -> Iterable[tuple[str, str]]:
    for line in (text or "").splitlines():
        words = line.split()
        if len(words) == 2:
            yield words[0], words[1]


def auth_users(text: str | None) -> dict[str, frozenset[str]]:
    """``auth.map``: user -> the password hashes it may log in with."""
    users: dict[str, set[str]] = {}
    for key, _group in _lines(text):
        user, _, digest = key.rpartition(":")
        users.setdefault(user, set()).add(digest)
    return {user: frozenset(digests) for user, digests in users.items()}


def _phrase(label: str, names: Iterable[str]) -> list[str]:
    items = sorted(names)
    return [f"{label} {describe(items)}"] if items else []


def map_changes(old: Mapping[str, str | None], new: Mapping[str, str]) -> list[str]:
    """Phrases for what changed between two versions of ``auth.map`` and ``modrepo.map``."""
    parts: list[str] = []
    before, after = auth_users(old.get("auth.map")), auth_users(new.get("auth.map"))
    parts += _phrase("users added:", after.keys() - before.keys())
    parts += _phrase("users removed:", before.keys() - after.keys())
    parts += _phrase(
        "password changed:", (u for u in before.keys() & after.keys() if before[u] != after[u])
    )
    old_repo, new_repo = dict(_lines(old.get("modrepo.map"))), dict(_lines(new.get("modrepo.map")))
    modules = {k for k in old_repo.keys() | new_repo.keys() if k.startswith("module/")}
    parts += _phrase("modules added:", (m for m in modules if m not in old_repo))
    parts += _phrase("modules removed:", (m for m in modules if m not in new_repo))
    parts += _phrase(
        "module repositories changed:",
        (m for m in modules if m in old_repo and m in new_repo and old_repo[m] != new_repo[m]),
    )
    grants_before = {(k, v) for k, v in old_repo.items() if not k.startswith("module/")}
    grants_after = {(k, v) for k, v in new_repo.items() if not k.startswith("module/")}
    parts += _phrase(
        "restore grants added:", (f"{k}->{v}" for k, v in grants_after - grants_before)
    )
    parts += _phrase(
        "restore grants removed:", (f"{k}->{v}" for k, v in grants_before - grants_after)
    )
    return parts


def fingerprints(context: RenderContext | None) -> dict[str, str]:
    """Destination id -> a digest of how this node serves it (backend settings, base path,
    hosting node): equal digests, nothing to restart for it."""
    if context is None:
        return {}
    result = {}
    for dest in context.destinations:
        data = [
            dest.provider,
            dest.kind,
            dest.local,
            dest.host_node,
            dest.basepath,
            sorted(dest.section.items()),
        ]
        result[dest.id] = hashlib.sha256(json.dumps(data).encode()).hexdigest()
    return result


def destination_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """Phrases for destinations added, changed and removed between two fingerprint maps."""
    return (
        _phrase("destinations added:", new.keys() - old.keys())
        + _phrase("destinations changed:", (d for d in old.keys() & new.keys() if old[d] != new[d]))
        + _phrase("destinations removed:", old.keys() - new.keys())
    )


def cluster_changes(old: RenderContext | None, new: RenderContext) -> list[str]:
    """Phrases for a changed cluster network, peer addresses or leader."""
    if old is None:
        return []
    parts = []
    if old.cluster_network != new.cluster_network:
        parts.append(f"cluster network {old.cluster_network} -> {new.cluster_network}")
    before = {p.id: p.address for p in old.peers}
    after = {p.id: p.address for p in new.peers}
    parts += _phrase("peers added:", (f"node {n} {a}" for n, a in after.items() if n not in before))
    parts += _phrase("peers removed:", (f"node {n}" for n in before.keys() - after.keys()))
    parts += _phrase(
        "peers moved:",
        (f"node {n} {before[n]} -> {a}" for n, a in after.items() if before.get(n, a) != a),
    )
    if old.state.leader != new.state.leader:
        parts.append(f"leader node {old.state.leader} -> node {new.state.leader}")
    return parts
