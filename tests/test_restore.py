"""Restores through the real gateway: a module back from its own repository, a new module from
another's under a grant that exists only while the restore runs, grant commands, relinking."""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import restic_versions
from tests.cluster_seed import module_uuid
from tests.redis_server import RedisServer
from tests.restic_versions import Restic
from tests.run_world import RunWorld, descendants, module_password
from tests.test_store import Events

REST = {"Accept": "application/vnd.x.restic.rest.v2"}
restic_bin = restic_versions.restic_bin


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunWorld]:
    redis_server.flush()
    world = RunWorld(redis_server, tmp_path_factory.mktemp("restore"), {}).start()
    try:
        yield world
    finally:
        world.stop()
        redis_server.flush()


def backed_up(world: RunWorld, *mids: str) -> int:
    world.add_modules(*mids)
    bid = world.add_schedule(list(mids))
    code, _report, err = world.run(bid)
    assert code == 0, err
    return bid


def restore(
    world: RunWorld, request: dict[str, Any], *args: str, extra: dict[str, str] | None = None
) -> tuple[int, Any, str]:
    return world.nsbackup(
        "--json",
        "restore",
        "run",
        "--data",
        json.dumps(request),
        *args,
        user="cluster",
        extra=extra,
    )


def can_read(world: RunWorld, reader: str, owner: str) -> int:
    """HTTP status of ``reader`` (a module) reading ``owner``'s repository config."""
    assert world.gateway is not None
    app = owner.rstrip("0123456789")
    url = f"{world.gateway.url}/{world.destination}/{app}/{module_uuid(owner)}/config"
    auth = (f"module/{reader}", module_password(reader))
    return requests.get(url, auth=auth, headers=REST, timeout=10).status_code


def same_tree(left: Path, right: Path, skip: set[str]) -> None:
    for path in left.rglob("*"):
        relative = path.relative_to(left)
        if path.is_file() and relative.as_posix() not in skip:
            twin = right / relative
            assert twin.is_file() and filecmp.cmp(path, twin, shallow=False), relative


def grants(world: RunWorld) -> dict[str, str]:
    client = world.server.client()
    try:
        return client.hgetall("private/nodes/restore_uuid")
    finally:
        client.close()


def test_a_module_comes_back_from_its_own_repository(
    world: RunWorld, tmp_path: Path, restic_bin: Restic
) -> None:
    mid = "mail1" + restic_bin.name.rsplit(".", 1)[1]  # mail114, mail118
    env = {"NSBACKUP_RESTIC": restic_bin.binary}
    world.add_modules(mid)
    bid = world.add_schedule([mid])
    code, _report, err = world.run(bid, extra=env)
    assert code == 0, err
    state = world.modules_dir / mid / "state"
    original = tmp_path / "original"
    shutil.copytree(state, original)
    for item in state.iterdir():  # the module's data is lost; its identity files stay
        if item.name not in ("agent.env", "environment"):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    code, result, err = restore(
        world,
        {
            "repository": world.destination,
            "path": f"mail/{module_uuid(mid)}",
            "snapshot": "",
            "module": mid,
        },
        extra=env,
    )
    assert code == 0, err
    assert result["granted"] is False
    if restic_bin.version >= (0, 16, 0):  # restore reports a summary from 0.16 on
        assert result["restored_files"] > 30
    else:  # unknown, not 0
        assert result["restored_files"] is None and result["restored_bytes"] is None
    same_tree(original, state, {".module-backup.lock", "ui_name.dump"})
    summary = json.loads((state / "restic_restore.json").read_text())
    assert isinstance(summary, dict)
    assert grants(world) == {}


def test_a_new_module_restores_another_under_a_grant_that_ends_with_it(world: RunWorld) -> None:
    backed_up(world, "mail2")
    world.add_modules("mail3")  # a new mail module, with its own uuid and credentials
    assert can_read(world, "mail3", "mail2") == 403
    seen_during: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            seen_during.append(can_read(world, "mail3", "mail2"))
            time.sleep(0.05)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        code, result, err = restore(
            world,
            {
                "repository": world.destination,
                "path": f"mail/{module_uuid('mail2')}",
                "snapshot": "latest",
                "module": "mail3",
            },
        )
    finally:
        stop.set()
        thread.join(30)
    ended = time.monotonic()
    assert code == 0, err
    assert result["granted"] is True and 200 in seen_during  # readable while it ran
    deadline = ended + 1.0
    while can_read(world, "mail3", "mail2") != 403:
        assert time.monotonic() < deadline, "the grant outlived the restore by more than 1 s"
        time.sleep(0.05)
    assert grants(world) == {}
    same_tree(
        world.modules_dir / "mail2" / "state",
        world.modules_dir / "mail3" / "state",
        {".module-backup.lock", "agent.env", "environment", "restic_restore.json", "ui_name.dump"},
    )
    # mail3 keeps its own identity: environment and credentials were not restored
    env = (world.modules_dir / "mail3" / "state" / "agent.env").read_text()
    assert "module/mail3" in env
    assert can_read(world, "mail3", "mail3") in (200, 404)


def test_the_grant_goes_even_when_the_restore_fails(world: RunWorld) -> None:
    backed_up(world, "mail4")
    world.add_modules("mail5")
    code, out, err = restore(
        world,
        {
            "repository": world.destination,
            "path": f"mail/{module_uuid('mail4')}",
            "snapshot": "deadbeef",
            "module": "mail5",
        },
    )
    assert code == 2, err
    assert out[0]["error"] == "backup_snapshot_not_found" and "deadbeef" in out[0]["message"]
    assert grants(world) == {}
    assert can_read(world, "mail5", "mail4") == 403


def test_restore_gives_the_module_back_to_its_schedules(world: RunWorld) -> None:
    backed_up(world, "webtop6")
    world.add_modules("webtop7")
    bid = world.add_schedule(["webtop6"], name="portable")
    client = world.server.client()
    try:  # as after a cluster restore: the schedule names the module by UUID
        client.hset(
            f"cluster/backup/{bid}", mapping={"instances": "", "uinstances": module_uuid("webtop7")}
        )
        events = Events(world.server.client())
        code, result, err = restore(
            world,
            {
                "repository": world.destination,
                "path": f"webtop/{module_uuid('webtop6')}",
                "snapshot": "",
                "module": "webtop7",
            },
        )
        assert code == 0, err
        assert result["relinked_backups"] == [bid]
        stored = client.hgetall(f"cluster/backup/{bid}")
        assert stored["instances"] == "webtop7" and "uinstances" not in stored
        changes = [m for m in events.collect(6) if m[0].endswith("backup-schedule-changed")]
        assert {"backup_ids": [str(bid)]} in [m[1] for m in changes]
    finally:
        client.close()


def test_grant_commands_take_effect_at_the_gateway_within_a_second(world: RunWorld) -> None:
    backed_up(world, "nethvoice8")
    world.add_modules("nethvoice9", "dokuwiki9")
    request = {"module_uuid": module_uuid("nethvoice9"), "source_uuid": module_uuid("nethvoice8")}
    code, out, err = world.nsbackup(
        "--json", "restore", "grant", "--data", json.dumps(request), user="cluster"
    )
    assert code == 0 and out == request, err
    started = time.monotonic()
    while can_read(world, "nethvoice9", "nethvoice8") != 200:
        assert time.monotonic() - started < 1.0, "the grant took more than a second"
        time.sleep(0.02)
    code, out, err = world.nsbackup("--json", "restore", "grants", user="cluster")
    assert {
        "module_uuid": request["module_uuid"],
        "source_uuid": request["source_uuid"],
        "module_id": "nethvoice9",
    } in out["grants"]
    code, out, err = world.nsbackup(
        "--json", "restore", "revoke", request["module_uuid"], user="cluster"
    )
    assert code == 0, err
    started = time.monotonic()
    while can_read(world, "nethvoice9", "nethvoice8") != 403:
        assert time.monotonic() - started < 1.0, "the revoke took more than a second"
        time.sleep(0.02)
    code, out, err = world.nsbackup(
        "--json", "restore", "revoke", request["module_uuid"], user="cluster"
    )
    assert code == 2 and out[0]["error"] == "grant_not_found"
    # bad requests name the field and write nothing
    for bad, expected in [
        ({}, [("module_uuid", "required"), ("source_uuid", "required")]),
        ({**request, "module_uuid": 7}, [("module_uuid", "type")]),
        ({**request, "source_uuid": "x"}, [("source_uuid", "pattern")]),
        ({**request, "extra": 1}, [("extra", "additionalProperties")]),
        # a grant works within the grantee's app only: across apps it would do nothing
        ({**request, "source_uuid": module_uuid("dokuwiki9")}, [("source_uuid", "app_mismatch")]),
    ]:
        code, out, err = world.nsbackup(
            "--json", "restore", "grant", "--data", json.dumps(bad), user="cluster"
        )
        assert code == 2 and [(e["field"], e["error"]) for e in out] == expected, (bad, out)
    assert grants(world) == {}
    # only the cluster may grant: a node may not
    code, out, err = world.nsbackup("--json", "restore", "grant", "--data", json.dumps(request))
    assert code == 5 and out["error"] == "permission_denied", err
    assert grants(world) == {}


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"repository": "x", "path": "mail/x", "snapshot": "", "module": "mail1"},
        {
            "repository": "00000000-0000-4000-8000-000000000000",
            "path": "../etc",
            "snapshot": "",
            "module": "mail1",
        },
        {
            "repository": "00000000-0000-4000-8000-000000000000",
            "path": "mail/00000000-0000-4000-8000-000000000000",
            "snapshot": "zz",
            "module": "mail1",
        },
        {
            "repository": "00000000-0000-4000-8000-000000000000",
            "path": "mail/00000000-0000-4000-8000-000000000000",
            "snapshot": "",
            "module": "mail1",
            "extra": 1,
        },
        {"repository": 7, "path": None, "snapshot": [], "module": {}},
    ],
)
def test_bad_restore_requests_exit_2(world: RunWorld, request_: dict[str, Any]) -> None:
    code, out, err = restore(world, request_)
    assert code == 2 and isinstance(out, list) and out, err
    assert "Traceback" not in err


def slow_restic(tmp_path: Path, seconds: int) -> dict[str, str]:
    """restic whose ``restore`` starts ``seconds`` late: a restore long enough to overlap."""
    script = tmp_path / "slow-restic"
    script.write_text(
        "#!/bin/sh\n"
        f'for a; do [ "$a" = restore ] && sleep {seconds} && break; done\n'
        f'exec {shutil.which("restic")} "$@"\n'
    )
    script.chmod(0o755)
    return {"NSBACKUP_RESTIC": str(script)}


def eventually(condition: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def restore_request(world: RunWorld, source: str, target: str) -> str:
    return json.dumps(
        {
            "repository": world.destination,
            "path": f"mail/{module_uuid(source)}",
            "snapshot": "",
            "module": target,
        }
    )


def test_two_restores_into_one_module_leave_no_grant(world: RunWorld, tmp_path: Path) -> None:
    """The second restore waits for the first (the module's lock) and reads the grant to put
    back only then: it read it before the lock and put the first restore's grant back."""
    backed_up(world, "mail31", "mail32")
    world.add_modules("mail30")
    slow = slow_restic(tmp_path, 3)
    first = world.popen(
        "--json", "restore", "run", "--data", restore_request(world, "mail31", "mail30"),
        user="cluster", extra=slow,
    )  # fmt: skip
    eventually(lambda: module_uuid("mail30") in grants(world), "the first grant")
    second = world.popen(
        "--json", "restore", "run", "--data", restore_request(world, "mail32", "mail30"),
        user="cluster", extra=slow,
    )  # fmt: skip
    for proc in (first, second):
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert grants(world) == {}
    eventually(
        lambda: can_read(world, "mail30", "mail31") == can_read(world, "mail30", "mail32") == 403,
        "the gateway forgetting both grants",
        timeout=5,
    )


def test_the_grant_of_a_killed_restore_goes_with_the_next_restore(
    world: RunWorld, tmp_path: Path
) -> None:
    """kill -9 (or a crash) leaves the grant in Redis; the restore journaled it beside the
    module's lock, and the next ``restore run`` on the node revokes it."""
    backed_up(world, "mail34")
    world.add_modules("mail33")
    proc = world.popen(
        "--json", "restore", "run", "--data", restore_request(world, "mail34", "mail33"),
        user="cluster", extra=slow_restic(tmp_path, 30),
    )  # fmt: skip
    eventually(lambda: module_uuid("mail33") in grants(world), "the grant")
    children = descendants(proc.pid)
    proc.kill()
    proc.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    journal = world.state_dir / "locks" / "restore-mail33.grant"
    assert journal.is_file()
    assert grants(world)[module_uuid("mail33")] == module_uuid("mail34")
    # any restore on the node heals it first: here mail34 from its own repository (no grant)
    code, _out, err = world.nsbackup(
        "--json", "restore", "run", "--data", restore_request(world, "mail34", "mail34"),
        user="cluster",
    )  # fmt: skip
    assert code == 0, err
    assert grants(world) == {}
    assert not journal.exists()
    eventually(lambda: can_read(world, "mail33", "mail34") == 403, "the gateway", timeout=5)


def test_a_symlink_in_a_snapshot_cannot_redirect_the_module_sides_writes(
    world: RunWorld, tmp_path: Path
) -> None:
    """The module side replaces the files it writes in ``state/`` (restore summary, DUMP
    payloads) instead of writing through them: a snapshot holding ``restic_restore.json ->
    agent.env`` overwrote the restored module's credentials."""
    world.add_modules("mail35")
    state = world.modules_dir / "mail35" / "state"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / "restic_restore.json").symlink_to("agent.env")
    (state / "ui_name.dump").symlink_to(victim)
    bid = world.add_schedule(["mail35"])
    code, _report, err = world.run(bid)
    assert code == 0, err
    assert victim.read_text() == "precious\n"
    assert not (state / "ui_name.dump").is_symlink()
    world.add_modules("mail36")
    target = world.modules_dir / "mail36" / "state"
    credentials = (target / "agent.env").read_text()
    code, _out, err = world.nsbackup(
        "--json", "restore", "run", "--data", restore_request(world, "mail35", "mail36"),
        user="cluster",
    )  # fmt: skip
    assert code == 0, err
    assert (target / "agent.env").read_text() == credentials
    assert not (target / "restic_restore.json").is_symlink()
    assert json.loads((target / "restic_restore.json").read_text())
