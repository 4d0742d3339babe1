"""Listings with node credentials on a node that really backs up (tests/run_world.py):
``backup snapshots`` (ref §7.4) and ``destination repositories`` (ref §7.2).

One world for the module: two modules backed up twice by one schedule (retention 2), first
with restic 0.14 (no snapshot summary) then with restic 0.18, both under a +13:45 time zone
so that a time read without its UTC offset is hours off. The listings then run as the node,
through the gateway, under yet another time zone.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid as uuidlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from nsbackup import Cluster, Partial, Settings, Unreachable, ValidationFailed
from nsbackup.model import CONTROL_CHARS
from nsbackup.runs.listings import epoch, parse_metadata
from nsbackup.webdav import GatewayClient
from tests import restic_versions
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import add_destination, wait_for
from tests.redis_server import RedisServer
from tests.restic_versions import BINARIES, Restic, find_restic
from tests.run_world import RunWorld

restic_bin = restic_versions.restic_bin

MODULES = {"mail1": "mail", "nextcloud3": "nextcloud"}  # module id -> application
BACKUP_TZ = "Pacific/Chatham"  # UTC+13:45 (or +12:45): snapshot times carry this offset
READER_TZ = "America/Los_Angeles"
NODE = ("node/1", PASSWORDS["node/1"])
LOADED = 60.0
"""The listing timeout where no destination is meant to fail: a loaded test machine can stall
the gateway for seconds."""


@attrs.frozen
class World:
    world: RunWorld
    backup_id: int
    runs: tuple[tuple[float, float], ...]
    """(start, end) of each backup run, epoch seconds."""

    @property
    def destination(self) -> str:
        return self.world.destination

    @property
    def gateway_url(self) -> str:
        assert self.world.gateway is not None
        return self.world.gateway.url

    @property
    def repo_dir(self) -> Path:
        assert self.world.gateway is not None
        return self.world.gateway.repo_dir

    def cluster(self, **settings: Any) -> Cluster:
        """The API as the node sees it (node credentials, the world's gateway)."""
        server = self.world.server
        fields = {
            "gateway_url": self.gateway_url,
            "state_dir": str(self.world.state_dir),
            "node_id": "1",
            **settings,
        }
        return Cluster.from_url(
            f"redis://{server.host}:{server.port}/0",
            node_id="1",
            username=NODE[0],
            password=NODE[1],
            settings=Settings(**fields),
        )

    def dav(self) -> GatewayClient:
        return GatewayClient(self.gateway_url, *NODE)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    restics = [find_restic(name) for name in BINARIES]  # 0.14 first, then 0.18
    with RedisServer() as server:
        run_world = RunWorld(
            server, tmp_path_factory.mktemp("listings"), {mid: "1" for mid in MODULES}
        )
        try:
            run_world.start()
            bid = run_world.add_schedule(list(MODULES), retention=2)
            runs = []
            for restic in restics:
                start = time.time()
                code, report, err = run_world.run(
                    bid, extra={"NSBACKUP_RESTIC": restic.binary, "TZ": BACKUP_TZ}
                )
                runs.append((start, time.time()))
                assert code == 0, (report, err)
            yield World(run_world, bid, tuple(runs))
        finally:
            run_world.stop()


def snapshot_request(world: World, mid: str) -> str:
    return json.dumps(
        {"repository": world.destination, "path": f"{MODULES[mid]}/{module_uuid(mid)}"}
    )


# -- backup snapshots -----------------------------------------------------------------------


def test_snapshots_are_restics_own_with_utc_correct_times(world: World, restic_bin: Restic) -> None:
    summaries = restic_bin.version >= (0, 17, 0)
    listed: dict[str, list[dict[str, Any]]] = {}
    for mid in MODULES:
        code, items, err = world.world.nsbackup(
            "--json",
            "backup",
            "snapshots",
            "--data",
            snapshot_request(world, mid),
            extra={"NSBACKUP_RESTIC": restic_bin.binary, "TZ": READER_TZ},
        )
        assert code == 0, err
        listed[mid] = items
        direct = world.world.restic_as_node(mid, "snapshots", "--json", binary=restic_bin.binary)
        assert direct.returncode == 0, direct.stderr
        expected = json.loads(direct.stdout)
        assert [i["id"] for i in items] == [s["id"] for s in expected]
        assert len(items) == 2 and all(len(i["id"]) == 64 for i in items)
        for item, snapshot, (start, end) in zip(items, expected, world.runs, strict=True):
            assert snapshot["time"].endswith(("+13:45", "+12:45"))  # the offset is really there
            assert item["timestamp"] == int(datetime.fromisoformat(snapshot["time"]).timestamp())
            # Independent of restic's format: the snapshot was taken during its run.
            assert int(start) - 1 <= item["timestamp"] <= end + 1
        # The first snapshot was made by restic 0.14: never a summary.
        assert items[0]["total_bytes"] == -1
        assert items[0]["backup_start"] == items[0]["backup_end"] == ""
        if summaries:
            summary = expected[1]["summary"]
            assert items[1]["total_bytes"] == summary["total_bytes_processed"] > 1024 * 1024
            assert items[1]["backup_start"] == summary["backup_start"] != ""
            assert items[1]["backup_end"] == summary["backup_end"] != ""
        else:  # restic 0.14 does not show the summary restic 0.18 wrote
            assert "summary" not in expected[1]
            assert (items[1]["total_bytes"], items[1]["backup_start"]) == (-1, "")

    code, text, err = world.world.nsbackup(
        "backup", "snapshots", "--data", snapshot_request(world, "mail1")
    )
    assert code == 0, err
    header, *lines = str(text).splitlines()
    assert header.split() == ["SNAPSHOT", "TIME", "SIZE"]
    assert [line.split()[0] for line in lines] == [i["id"][:8] for i in listed["mail1"]]


def test_snapshots_of_a_path_without_repository_is_not_found(
    world: World, restic_bin: Restic
) -> None:
    path = f"mail/{uuidlib.uuid4()}"
    code, errors, err = world.world.nsbackup(
        "--json",
        "backup",
        "snapshots",
        "--data",
        json.dumps({"repository": world.destination, "path": path}),
        extra={"NSBACKUP_RESTIC": restic_bin.binary},
    )
    assert code == 2, err
    assert [(e["field"], e["error"], e["value"]) for e in errors] == [
        ("path", "restic_repository_not_found", path)
    ]


def test_credentials_the_gateway_refuses_are_exit_5_saying_so(
    world: World, restic_bin: Restic
) -> None:
    """The cluster user is no gateway user (NS8's rule): the listing and the check say the
    gateway refused it, exit 5, instead of a cut restic message and exit 1."""
    mid = next(iter(MODULES))
    extra = {"NSBACKUP_RESTIC": restic_bin.binary}
    for args in (
        ("backup", "snapshots", "--data", snapshot_request(world, mid)),
        ("backup", "check", str(world.backup_id)),
    ):
        code, out, err = world.world.nsbackup("--json", *args, user="cluster", extra=extra)
        assert code == 5, (args, err)
        assert out["error"] == "permission_denied"
        assert "the gateway refused cluster (HTTP 401)" in out["message"], out
        assert world.world.server.admin_password not in out["message"] + err


def test_bad_snapshot_requests_exit_2_naming_the_field(world: World) -> None:
    uid = module_uuid("mail1")
    dest = world.destination
    cases: list[tuple[Any, list[tuple[str, str]]]] = [
        ([dest], [("", "type")]),
        ({}, [("repository", "required"), ("path", "required")]),
        ({"repository": "", "path": f"mail/{uid}"}, [("repository", "minLength")]),
        ({"repository": 7, "path": f"mail/{uid}"}, [("repository", "type")]),
        ({"repository": dest, "path": ["mail", uid]}, [("path", "type")]),
        ({"repository": dest, "path": f"../mail/{uid}"}, [("path", "pattern")]),
        ({"repository": dest, "path": f"/mail/{uid}"}, [("path", "pattern")]),
        ({"repository": dest, "path": f"mail/{uid}/.."}, [("path", "pattern")]),
        ({"repository": dest, "path": f"mail/{uid}/../../nextcloud"}, [("path", "pattern")]),
        ({"repository": dest, "path": f"mail/{uid}/"}, [("path", "pattern")]),
        ({"repository": dest, "path": "mail"}, [("path", "pattern")]),
        (
            {"repository": dest, "path": f"mail/{uid}", "snapshot": ""},
            [("snapshot", "additionalProperties")],
        ),
        ({"repository": dest, "path": f"mail/{uid.upper()}"}, [("path", "pattern")]),
        ({"repository": dest, "path": f"mail/{uid}\n"}, [("path", "pattern")]),
        (
            {"repository": str(uuidlib.uuid4()), "path": f"mail/{uid}"},
            [("repository", "backup_repository_not_found")],
        ),
        (
            {"repository": f"{dest}/..", "path": f"mail/{uid}"},
            [("repository", "backup_repository_not_found")],
        ),
    ]
    for payload, expected in cases:
        code, errors, err = world.world.nsbackup(
            "--json", "backup", "snapshots", "--data", json.dumps(payload)
        )
        assert code == 2, (payload, errors, err)
        assert [(e["field"], e["error"]) for e in errors] == expected, payload
        for field, _ in expected:
            assert f"error: {field or 'request'}: " in err, err


# -- destination repositories ---------------------------------------------------------------


def module_items(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    uuids = {module_uuid(mid): mid for mid in MODULES}
    return {uuids[i["uuid"]]: i for i in items if i["uuid"] in uuids}


def test_repositories_of_every_module_with_their_metadata(world: World) -> None:
    code, items, err = world.world.nsbackup(
        "--json", "destination", "repositories", "--timeout", str(LOADED), extra={"TZ": BACKUP_TZ}
    )
    assert code == 0, err
    found = module_items(items)
    assert sorted(found) == sorted(MODULES)
    for mid, app in MODULES.items():
        uid = module_uuid(mid)
        repo = world.repo_dir / app
        # The latest change on disk: the metadata file written after the last run.
        mtime = max(
            int(os.stat(repo / uid / "config").st_mtime),
            int(os.stat(repo / f"{uid}.json").st_mtime),
        )
        assert found[mid] == {
            "module_id": mid,
            "module_ui_name": f"UI {mid}",
            "node_fqdn": socket.getfqdn(),
            "path": f"{app}/{uid}",
            "name": app,
            "uuid": uid,
            "timestamp": mtime,
            "repository_id": world.destination,
            "repository_name": items[0]["repository_name"],
            "repository_provider": "cluster",
            "repository_url": f"webdav:{world.gateway_url}",
            "installed_instance": mid,
            "installed_instance_ui_name": f"UI {mid}",
            "is_generated_locally": True,
        }
        assert world.runs[-1][0] - 1 <= mtime <= world.runs[-1][1] + 1
    assert items[0]["repository_name"].startswith("cluster ")

    code, text, err = world.world.nsbackup("destination", "repositories")
    assert code == 0, err
    assert re.search(rf"^cluster \S+ +mail/{module_uuid('mail1')} +mail1$", str(text), re.M)


@pytest.fixture()
def fakes(world: World) -> Iterator[GatewayClient]:
    """A WebDAV client of the node; what it writes under ``fake*/`` and the metadata files
    it changes are removed or restored afterwards."""
    saved: dict[str, bytes | None] = {}
    with world.dav() as dav:
        originals = {
            f"{world.destination}/{app}/{module_uuid(mid)}.json": dav.get(
                f"{world.destination}/{app}/{module_uuid(mid)}.json"
            )
            for mid, app in MODULES.items()
        }
        saved.update(originals)
        try:
            yield dav
        finally:
            for app in ("fake", "Fake", "fake2"):
                requests.request(
                    "DELETE",
                    f"{world.gateway_url}/{world.destination}/{app}/",
                    auth=NODE,
                    timeout=30,
                )
            for path, data in saved.items():
                assert data is not None
                dav.put(path, data, "application/json")


def test_hostile_metadata_changes_no_computed_field(world: World, fakes: GatewayClient) -> None:
    dest = world.destination
    cluster_uuid = world.world.server.client().get("cluster/uuid")
    hostile = {
        "module_id": "evil\x1b[31m1",
        "module_ui_name": "Invoice\u202egpj.exe",
        "node_fqdn": ["host"],
        "cluster_uuid": 7,
        "success": "yes",
        "id": "x",
        "path": "../../etc",
        "name": "etc",
        "uuid": "00000000-0000-0000-0000-000000000000",
        "timestamp": 1,
        "repository_id": "other",
        "repository_name": "other",
        "repository_provider": "other",
        "repository_url": "other",
        "installed_instance": "mail1",
        "installed_instance_ui_name": "UI mail1",
        "is_generated_locally": True,
    }
    plain = str(uuidlib.uuid4())
    big = str(uuidlib.uuid4())
    garbage = str(uuidlib.uuid4())
    listed = str(uuidlib.uuid4())
    gone = str(uuidlib.uuid4())
    for uid in (plain, big, garbage, listed, gone):
        fakes.put(f"{dest}/fake/{uid}/config", b"not really a restic config")
    fakes.put(f"{dest}/fake/{plain}.json", json.dumps(hostile).encode())
    padding = "x" * (10 * 1024 * 1024)
    fakes.put(
        f"{dest}/fake/{big}.json",
        json.dumps({"module_id": "big1", "cluster_uuid": cluster_uuid, "pad": padding}).encode(),
    )
    fakes.put(f"{dest}/fake/{garbage}.json", b"\xff\xfe{not json")
    fakes.put(f"{dest}/fake/{listed}.json", b"[1, 2, 3]")
    fakes.put(
        f"{dest}/fake/{gone}.json",
        json.dumps(
            {
                **hostile,
                "module_id": "gone1",
                "module_ui_name": "Gone",
                "node_fqdn": "old.example.org",
                "cluster_uuid": cluster_uuid,
            }
        ).encode(),
    )
    # Not repositories: no config, a name that is not a UUID, an application name the
    # gateway would refuse to modules.
    fakes.put(f"{dest}/fake/{uuidlib.uuid4()}/keys/{'0' * 64}", b"key")
    fakes.put(f"{dest}/fake/not-a-uuid/config", b"config")
    fakes.put(f"{dest}/Fake/{uuidlib.uuid4()}/config", b"config")
    # An installed module's own metadata, rewritten by a hostile destination.
    mail = module_uuid("mail1")
    fakes.put(
        f"{dest}/mail/{mail}.json", json.dumps({**hostile, "cluster_uuid": "another"}).encode()
    )

    items = world.cluster().runs.repositories(timeout=LOADED)

    by_uuid = {i["uuid"]: i for i in items}
    assert sorted(i["path"] for i in items if i["name"] != "nextcloud") == sorted(
        [f"fake/{u}" for u in (plain, big, garbage, listed, gone)] + [f"mail/{mail}"]
    )
    assert all(i["repository_id"] == dest and i["repository_provider"] == "cluster" for i in items)

    def computed(uid: str, app: str = "fake") -> dict[str, Any]:
        return {"path": f"{app}/{uid}", "name": app, "uuid": uid, "repository_id": dest}

    for uid in (plain, big, garbage, listed, gone):
        item = by_uuid[uid]
        assert {k: item[k] for k in ("path", "name", "uuid", "repository_id")} == computed(uid)
        assert item["installed_instance"] == item["installed_instance_ui_name"] == ""
        assert item["timestamp"] >= int(time.time()) - 120
    # Every field of the hostile file is unacceptable: nothing taken, and the metadata,
    # although a JSON object, names no cluster, so not made here.
    assert {k: by_uuid[plain][k] for k in ("module_id", "module_ui_name", "node_fqdn")} == {
        "module_id": "",
        "module_ui_name": "",
        "node_fqdn": "",
    }
    assert by_uuid[plain]["is_generated_locally"] is False
    # 10 MB: not read at all (its module_id would show).
    assert by_uuid[big]["module_id"] == "" and by_uuid[big]["is_generated_locally"] is None
    for uid in (garbage, listed):
        assert by_uuid[uid]["module_id"] == "" and by_uuid[uid]["is_generated_locally"] is None
    # The acceptable fields of a file are taken; only those.
    assert {k: by_uuid[gone][k] for k in ("module_id", "module_ui_name", "node_fqdn")} == {
        "module_id": "gone1",
        "module_ui_name": "Gone",
        "node_fqdn": "old.example.org",
    }
    assert by_uuid[gone]["is_generated_locally"] is True
    # The installed module keeps everything computed, its metadata notwithstanding.
    assert {k: v for k, v in by_uuid[mail].items() if k not in ("timestamp",)} == {
        "module_id": "mail1",
        "module_ui_name": "UI mail1",
        "node_fqdn": "",
        **computed(mail, "mail"),
        "repository_name": by_uuid[mail]["repository_name"],
        "repository_provider": "cluster",
        "repository_url": f"webdav:{world.gateway_url}",
        "installed_instance": "mail1",
        "installed_instance_ui_name": "UI mail1",
        "is_generated_locally": True,
    }


def test_repository_of_a_removed_module_has_no_installed_instance(world: World) -> None:
    client = world.world.server.client()
    uid = module_uuid("nextcloud3")
    client.hdel("cluster/module_uuid", "nextcloud3")
    try:
        items = world.cluster().runs.repositories(timeout=LOADED)
    finally:
        client.hset("cluster/module_uuid", "nextcloud3", uid)
        client.close()
    item = next(i for i in items if i["uuid"] == uid)
    assert item["installed_instance"] == item["installed_instance_ui_name"] == ""
    # What its metadata says is still shown: the module, and that this cluster made it.
    assert item["module_id"] == "nextcloud3" and item["module_ui_name"] == "UI nextcloud3"
    assert item["is_generated_locally"] is True
    assert item["path"] == f"nextcloud/{uid}"


# -- a destination that never answers -------------------------------------------------------


@pytest.fixture()
def dead_destination(world: World) -> Iterator[tuple[str, int]]:
    """A WebDAV destination on a loopback port that accepts connections (the kernel's
    backlog) and never answers, served by the gateway: requests for it hang there."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    client = world.world.server.client()
    uid = add_destination(
        client,
        world.world.host(),
        {
            "provider": "webdav",
            "name": "Dead end",
            "url": f"webdav:http://127.0.0.1:{port}",
            "parameters": {"webdav_user": "u", "webdav_pass": "p", "webdav_vendor": "other"},
        },
    ).id
    with world.dav() as dav:

        def served() -> bool:
            try:  # the combined remote's root lists it without asking the backend
                return any(e.path.strip("/") == uid for e in dav.propfind("", "1"))
            except Unreachable:
                return False

        wait_for(served, timeout=60, what=f"the gateway to serve {uid}")
    try:
        yield uid, port
    finally:
        Cluster(client).destinations.remove(uid)
        client.close()
        listener.close()


def test_a_dead_destination_costs_one_timeout(
    world: World, dead_destination: tuple[str, int]
) -> None:
    dead, port = dead_destination
    # Enough for the live destination on a loaded machine (it takes well under a second).
    timeout = api_timeout = 5.0
    # The API: Partial, with the other destination's repositories.
    start = time.monotonic()
    with pytest.raises(Partial) as info:
        world.cluster().runs.repositories(timeout=timeout)
    api_elapsed = time.monotonic() - start
    assert api_elapsed <= timeout + 1, api_elapsed
    assert sorted(module_items(info.value.result)) == sorted(MODULES)
    assert dead in str(info.value) and "Dead end" in str(info.value)
    assert world.destination not in str(info.value)

    # The CLI: the items on stdout, the dead destination on stderr, exit 3.
    start = time.monotonic()
    code, items, err = world.world.nsbackup(
        "--json", "destination", "repositories", "--timeout", str(timeout)
    )
    cli_elapsed = time.monotonic() - start
    assert code == 3, err
    assert cli_elapsed <= timeout + 3, cli_elapsed  # + the interpreter's start-up
    assert sorted(module_items(items)) == sorted(MODULES)
    assert dead in err and f"no answer within {timeout:g} s" in err

    # A gateway that accepts and never answers: every destination failed, exit 5.
    timeout = 2.0
    start = time.monotonic()
    code, out, err = world.world.nsbackup(
        "--json",
        "destination",
        "repositories",
        "--timeout",
        str(timeout),
        extra={"NSBACKUP_GATEWAY_URL": f"http://127.0.0.1:{port}"},
    )
    all_elapsed = time.monotonic() - start
    assert code == 5, err
    assert out["error"] == "unreachable"
    assert dead in err and world.destination in err
    assert all_elapsed <= timeout + 3, all_elapsed
    print(
        f"one dead destination, timeout {api_timeout:g} s: API {api_elapsed:.2f} s, "
        f"CLI {cli_elapsed:.2f} s; all dead, timeout {timeout:g} s: CLI {all_elapsed:.2f} s"
    )


def test_every_destination_failing_is_unreachable(world: World) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connections are refused at once
    with pytest.raises(Unreachable) as info:
        world.cluster(gateway_url=f"http://127.0.0.1:{port}").runs.repositories(timeout=5)
    assert world.destination in str(info.value)


def test_the_timeout_must_be_a_positive_number(world: World) -> None:
    for bad in (0, -1, True, "5", 3601):
        with pytest.raises(ValidationFailed) as info:
            world.cluster().runs.repositories(timeout=bad)  # type: ignore[arg-type]
        assert info.value.to_json()[0]["field"] == "timeout"
    code, errors, err = world.world.nsbackup(
        "--json", "destination", "repositories", "--timeout", "-1"
    )
    assert code == 2 and errors[0]["field"] == "timeout", err


# -- the parsers, for any input ---------------------------------------------------------------


OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(st.datetimes(timezones=OFFSETS))
def test_epoch_applies_the_offset_of_any_rfc3339_time(when: datetime) -> None:
    assert epoch(when.isoformat()) == int(when.timestamp())
    # restic writes nanoseconds, more digits than Python keeps.
    local = when.replace(tzinfo=None).isoformat(timespec="microseconds")
    offset = when.isoformat()[-6:]
    assert epoch(f"{local}789{offset}") == int(when.timestamp())


def test_epoch_never_guesses() -> None:
    assert epoch("2024-05-06T07:08:09") == -1  # no offset: local time would be a guess
    assert epoch("yesterday") == epoch(None) == epoch(12) == -1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["module_id", "module_ui_name", "node_fqdn", "cluster_uuid", "x"]),
        JSON,
    )
)
def test_metadata_fields_are_bounded_printable_strings_or_nothing(data: dict[str, Any]) -> None:
    meta = parse_metadata(json.dumps(data).encode())
    assert meta is not None
    for name in ("module_id", "module_ui_name", "node_fqdn", "cluster_uuid"):
        value = getattr(meta, name)
        assert value is None or value == data[name]
        if value is not None:
            assert isinstance(value, str) and len(value) <= 256
            assert not CONTROL_CHARS.search(value) and "\u202e" not in value
