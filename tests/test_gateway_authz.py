"""Gateway authorisation matrix: roles x methods x paths against ONE real gateway.

A real ``nsbackup gateway serve`` (HAProxy + rclone restic/WebDAV servers) runs for the whole
module on 127.0.0.2. Before the matrix, real content is made through it: ``restic init`` and
``restic backup`` as the modules mail1 and nextcloud3, a throwaway repository made by node/1,
metadata files uploaded by the node over WebDAV, locks, and a restore grant (mail2 may read
mail1's repository). Every row is one raw HTTP request (``http.client``, so dot segments and
percent-encodings reach the gateway exactly as written) asserted by its status code.

Source restrictions (``is_loopback``/``is_cluster``) cannot be tested here: every test client
is on 127.0.0.0/8, which is always allowed, and we never leave loopback.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nsbackup import acl
from nsbackup.restic import restic_env, run_restic
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    RESTIC_PASSWORD,
    GatewayProcess,
    add_destination,
    seed_loopback_cluster,
)
from tests.redis_server import RedisServer
from tests.servers import free_port

REST = (("Accept", "application/vnd.x.restic.rest.v2"),)
REALM = 'Basic realm="ns8-rclone-gateway"'
MAIL2_PASSWORD = "mail2-pw"
WEBTOP_PASSWORD = "webtop1-pw"
M1, N3, MAIL2 = module_uuid("mail1"), module_uuid("nextcloud3"), module_uuid("mail2")
WEBTOP = module_uuid("webtop1")
ZERO_UUID = "00000000-0000-4000-8000-000000000000"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# Role -> Authorization header value (None: no header).
AUTH: dict[str, str | None] = {
    "mail1": _basic("module/mail1", PASSWORDS["module/mail1"]),
    "nc3": _basic("module/nextcloud3", PASSWORDS["module/nextcloud3"]),
    "doku": _basic("module/dokuwiki1", PASSWORDS["module/dokuwiki1"]),
    "mail2": _basic("module/mail2", MAIL2_PASSWORD),
    "disabled": _basic("module/webtop1", WEBTOP_PASSWORD),  # its Redis ACL user is "off"
    "node1": _basic("node/1", PASSWORDS["node/1"]),
    "node2": _basic("node/2", PASSWORDS["node/2"]),
    "node12": _basic("node/12", PASSWORDS["node/12"]),
    "anon": None,
    "badpw": _basic("module/mail1", "not-the-password"),
    "nopw": _basic("module/mail1", ""),
    "node-badpw": _basic("node/1", "mail1-pw"),
    "ghost": _basic("module/ghost1", "ghost-pw"),
    "hashpw": _basic("module/mail1", hashlib.sha256(b"mail1-pw").hexdigest()),
    "bearer": "Bearer " + PASSWORDS["module/mail1"],
    "digest": 'Digest username="module/mail1", realm="ns8-rclone-gateway"',
    "badb64": "Basic !!!not-base64!!!",
}
MODULES = {"mail1", "nc3", "doku", "mail2"}
NODES = {"node1", "node2", "node12"}


@dataclass(frozen=True)
class Case:
    role: str
    method: str
    path: str  # str.format template over World.values (+ {fresh}, a new object name)
    headers: tuple[tuple[str, str], ...] = ()
    expected: int | tuple[int, ...] = 403
    hole: str = ""  # a documented hole: the row is xfail(strict=True)

    @property
    def id(self) -> str:
        tags = []
        for name, value in self.headers:
            if name == "Accept":
                tags.append("rest")
            elif name == "Depth":
                tags.append(f"depth={value}")
            elif name != "Destination":
                tags.append(name)
        return "-".join([self.role, self.method, self.path, *tags])

    def param(self) -> Any:
        marks = [pytest.mark.xfail(strict=True, reason=self.hole)] if self.hole else []
        return pytest.param(self, id=self.id, marks=marks)


def _body(case: Case) -> bytes:
    """Every object a row may create is named after the SHA-256 of its content, like restic's."""
    return f"nsbackup authz {case.id}".encode()


def _fresh(case: Case) -> str:
    return hashlib.sha256(_body(case)).hexdigest()


# -- the matrix ---------------------------------------------------------------------------------


def _cross_repo() -> list[Case]:
    """A module against another module's repository: everything 403."""
    rows = []
    for role, target in [
        ("mail1", "nc3"),
        ("nc3", "mail1"),
        ("doku", "mail1"),
        ("mail2", "nc3"),
        ("mail1", "tmp"),
    ]:
        r = "{" + target + "}"
        for method, path, headers in [
            ("GET", f"{r}/config", REST),
            ("HEAD", f"{r}/config", REST),
            ("GET", f"{r}/snapshots/", REST),
            ("GET", f"{r}/keys/", REST),
            ("GET", f"{r}/snapshots/{{snap_{target}}}", REST),
            ("GET", f"{r}/data/{{data_{target}}}", REST),
            ("POST", f"{r}/data/{{fresh}}", REST),
            ("POST", f"{r}/snapshots/{{fresh}}", REST),
            ("POST", f"{r}/locks/{{fresh}}", REST),
            ("DELETE", f"{r}/locks/{{fresh}}", REST),
            ("DELETE", f"{r}/snapshots/{{snap_{target}}}", REST),
            ("POST", f"{r}/?create=true", ()),
            ("GET", f"{r}.json", ()),
            ("GET", f"{r}/config", ()),
            ("PROPFIND", f"{r}/", (("Depth", "1"),)),
        ]:
            rows.append(Case(role, method, path, headers, 403))
    rows += [
        Case("mail1", "GET", "{mail2}/config", REST, 403),
        Case("mail1", "GET", "{D}/mail/{MAIL2}.json", (), 403),
    ]
    return rows


def _own_rest() -> list[Case]:
    """restic REST on its own repository: read, create, add, own locks; never delete/overwrite."""
    rows = []
    for role, r in [("mail1", "mail1"), ("nc3", "nc3")]:
        p = "{" + r + "}"
        ok = [
            ("GET", f"{p}/config", 200),
            ("HEAD", f"{p}/config", 200),
            ("GET", f"{p}/snapshots/", 200),
            ("GET", f"{p}/keys/", 200),
            ("GET", f"{p}/index/", 200),
            ("GET", f"{p}/data/", 200),
            ("GET", f"{p}/locks/", 200),
            ("GET", f"{p}/snapshots/{{snap_{r}}}", 200),
            ("GET", f"{p}/data/{{data_{r}}}", 200),
            ("GET", f"{p}/index/{{index_{r}}}", 200),
            ("HEAD", f"{p}/keys/{{key_{r}}}", 200),
            ("GET", f"{p}/snapshots/{{fresh}}", 404),
            ("POST", f"{p}/data/{{fresh}}", 200),
            ("POST", f"{p}/locks/{{fresh}}", 200),
            ("DELETE", f"{p}/locks/{{lockdel_{r}}}", 200),
            ("DELETE", f"{p}/locks/{{fresh}}", 404),
        ]
        rows += [Case(role, m, path, REST, exp) for m, path, exp in ok]
        rows.append(Case(role, "POST", f"{p}/?create=true", (), 200))
        # ?create=true is accepted on the repository root only.
        rows.append(Case(role, "POST", f"{p}/data/{{fresh}}?create=true", REST, 403))
        rows.append(Case(role, "POST", f"{p}/data/{{data_{r}}}?create=true", REST, 403))
        rows.append(Case(role, "POST", f"{p}/config?create=true", REST, 403))
        refused = [
            # restic forget / prune: HAProxy refuses before the append-only server.
            ("DELETE", f"{p}/snapshots/{{snap_{r}}}"),
            ("DELETE", f"{p}/data/{{data_{r}}}"),
            ("DELETE", f"{p}/index/{{index_{r}}}"),
            ("DELETE", f"{p}/keys/{{key_{r}}}"),
            ("DELETE", f"{p}/config"),
            ("DELETE", f"{p}/"),
            ("DELETE", f"{p}/data/"),
            ("DELETE", f"{p}/locks/"),
            # Overwrites: the append-only server refuses an existing name.
            ("POST", f"{p}/snapshots/{{snap_{r}}}"),
            ("POST", f"{p}/data/{{data_{r}}}"),
            ("POST", f"{p}/index/{{index_{r}}}"),
            ("POST", f"{p}/keys/{{key_{r}}}"),
            ("POST", f"{p}/config"),
            # Queries and non-REST verbs with the REST header.
            ("GET", f"{p}/config?x=1"),
            ("GET", f"{p}/config?"),
            ("DELETE", f"{p}/locks/{{lockdel_{r}}}?x=1"),
            ("PUT", f"{p}/data/{{fresh}}"),
            ("OPTIONS", f"{p}/config"),
            ("PROPFIND", f"{p}/"),
        ]
        rows += [Case(role, m, path, REST, 403) for m, path in refused]
    rows.append(Case("mail1", "POST", "{mail1}/locks/{lockexists_mail1}", REST, 403))
    return rows


def _own_webdav() -> list[Case]:
    """WebDAV on its own paths: reads only."""
    rows = []
    dest = (("Destination", "{mail1}/copy-target"),)
    writes = ["PUT", "MKCOL", "DELETE", "MOVE", "COPY", "PROPPATCH", "LOCK", "UNLOCK", "POST"]
    for path in ["{mail1}/config", "{mail1}/snapshots/{snap_mail1}", "{mail1}.json", "{mail1}/"]:
        for method in writes:
            rows.append(Case("mail1", method, path, dest if method in ("MOVE", "COPY") else ()))
    for path in ["{nc3}.json", "{nc3}/keys/{key_nc3}"]:
        rows += [Case("nc3", m, path) for m in writes]
    for role, r in [("mail1", "mail1"), ("nc3", "nc3")]:
        p = "{" + r + "}"
        rows += [
            Case(role, "GET", f"{p}.json", (), 200),
            Case(role, "HEAD", f"{p}.json", (), 200),
            Case(role, "GET", f"{p}/config", (), 200),
            Case(role, "GET", f"{p}/snapshots/", (), 200),
            Case(role, "OPTIONS", f"{p}/", (), 200),
            Case(role, "GET", f"{p}.json?x=1", (), 403),
            Case(role, "GET", f"{p}.json", REST, 403),  # REST has no metadata files
        ]
    return rows


def _propfind() -> list[Case]:
    """Listings: Depth 0/1 inside its own repository only; never infinity, never above it."""
    rows = []
    own = ["{mail1}", "{mail1}/", "{mail1}/snapshots/", "{mail1}.json"]
    for path in ["/", "{D}/", "{D}/mail/", "{D}/nextcloud/", *own]:
        for depth in [None, "infinity", "0", "1"]:
            headers = (("Depth", depth),) if depth else ()
            ok = path in own and depth in ("0", "1")
            rows.append(Case("mail1", "PROPFIND", path, headers, 207 if ok else 403))
    for headers in [
        (("Depth", "1, infinity"),),
        (("Depth", "0"), ("Depth", "infinity")),
        (("Depth", "Infinity"),),
        (("Depth", "2"),),
        (("Depth", ""),),
    ]:
        rows.append(Case("mail1", "PROPFIND", "{mail1}/", headers, 403))
    rows += [
        Case("nc3", "PROPFIND", "{nc3}/", (("Depth", "infinity"),), 403),
        Case("nc3", "PROPFIND", "{nc3}/", (("Depth", "1"),), 207),
        Case("mail1", "GET", "/", (), 403),
        Case("mail1", "GET", "{D}/", (), 403),
        Case("mail1", "GET", "{D}/mail/", (), 403),
        Case("mail1", "GET", "{D}/", REST, 403),
    ]
    return rows


# Path tricks as mail1 (REST GET unless noted): all refused by HAProxy before any backend sees
# them (the backends would decode %2F: as node/1, GET {D}/mail%2F{M1}/config answers 200).
TRICKS = [
    "{mail1}/../../nextcloud/{N3}/config",
    "{mail1}/%2e%2e/%2e%2e/nextcloud/{N3}/config",
    "{mail1}/%2E%2e/%2E%2e/nextcloud/{N3}/config",
    "{mail1}/.%2e/.%2e/nextcloud/{N3}/config",
    "{mail1}%2f..%2f..%2fnextcloud%2f{N3}/config",
    "{mail1}%2F..%2F..%2Fnextcloud%2F{N3}/config",
    "{D}/mail%2F{M1}/config",
    "{D}/nextcloud%2f{N3}/config",
    "{D}//mail/{M1}/config",
    "{mail1}//config",
    "/{D}/mail/{M1}/config",
    "{mail1}/./config",
    "{D}/./mail/{M1}/config",
    "{mail1}/config/.",
    "{mail1}/config/..",
    "{mail1}/snapshots/.",
    "{mail1}/snapshots/..",
    "{mail1}/config;x=1",
    "{mail1};/config",
    "{mail1}/snapshots;/{snap_mail1}",
    "{mail1}\\config",
    "{mail1}/snapshots\\..\\..\\..\\nextcloud\\{N3}\\config",
    "{mail1}/config%00",
    "{mail1}/config%00.json",
    "{mail1}/data/{data_mail1}0",
    "{mail1}/data/gggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg",
    "{mail1}/data/{data_mail1_upper}",
    "{D}/MAIL/{M1}/config",
    "{D}/Mail/{M1}/config",
    "{mail1}/config/extra",
    "{mail1}/data/{data_mail1}/extra",
    "{mail1}/data/ab/{data_mail1}",
    "{mail1}/snapshots",
    "{D}/mail/{M1_dashes_encoded}/config",
    "{D}/mail/{M1_upper}/config",
    "/{D_upper}/mail/{M1}/config",
    "{D}/mail/%64{M1_tail}/config",
    "{D}/mail/{M1}/../{N3}/config",
    "{D}/nextcloud/{N3}/../../mail/{M1}/config",
    "{D}/mail/{M1}.json/../{N3}/config",
    "{D}/mail/{M1}/%2e%2e/%2e%2e/nextcloud/{N3}.json",
    "{D}/mail/{M1}x/config",
    "{D}/mail/x{M1}/config",
    "{D}/mail/{M1}.JSON",
    "{D}/mail/{M1}.json.gz",
    "{D}/mail",
    "{D}/mail/{M1}/locks/%2e%2e/%2e%2e/%2e%2e/nextcloud/{N3}/config",
]


def _tricks() -> list[Case]:
    rows = [Case("mail1", "GET", p, REST, 403) for p in TRICKS]
    # HAProxy itself rejects a fragment in the request line; the gateway refuses every target
    # not in origin form (tests/test_gateway_targets.py has every form).
    rows.append(Case("mail1", "GET", "{mail1}/config#/../../../nextcloud/{N3}/config", REST, 400))
    rows.append(Case("mail1", "GET", "http://127.0.0.2{D}/nextcloud/{N3}/config", REST, 400))
    rows += [
        Case("mail1", "GET", "{mail1}/../{N3}.json", (), 403),
        Case("mail1", "GET", "{mail1}/%2e%2e/%2e%2e/nextcloud/{N3}.json", (), 403),
        Case("mail1", "PROPFIND", "{mail1}/../../", (("Depth", "1"),), 403),
        Case("mail1", "PROPFIND", "{mail1}/%2e%2e/%2e%2e/", (("Depth", "1"),), 403),
    ]
    # DELETE "through" its own lock prefix: ref §14.2's `.../locks/../../..` attack.
    for path in [
        "{mail1}/locks/../../../nextcloud/{N3}/config",
        "{mail1}/locks/%2e%2e/%2e%2e/%2e%2e/nextcloud/{N3}/config",
        "{mail1}/locks/..%2f..%2f..%2fnextcloud%2f{N3}%2fconfig",
        "{mail1}/locks/../snapshots/{snap_mail1}",
        "{mail1}/locks/%2e%2e/snapshots/{snap_mail1}",
        "{mail1}/locks/{lockdel_mail1}/../../config",
        "{mail1}/locks/{lockexists_mail1}%2f..%2f..%2fconfig",
    ]:
        rows.append(Case("mail1", "DELETE", path, REST, 403))
    # POST (append) "through" its own prefix into another repository.
    for path in [
        "{mail1}/data/../../../nextcloud/{N3}/data/{fresh}",
        "{mail1}/%2e%2e/%2e%2e/nextcloud/{N3}/snapshots/{fresh}",
        "{mail1}%2f..%2f{N3}/locks/{fresh}",
    ]:
        rows.append(Case("mail1", "POST", path, REST, 403))
    return rows


def _verbs() -> list[Case]:
    """Method tricks: lower-case verbs and override headers change nothing."""
    override = (("X-HTTP-Method-Override", "DELETE"), ("X-Method-Override", "DELETE"))
    return [
        Case("mail1", "delete", "{mail1}/snapshots/{snap_mail1}", REST, 403),
        Case("mail1", "Delete", "{mail1}/locks/{lockexists_mail1}", REST, 403),
        Case("mail1", "get", "{nc3}/config", REST, 403),
        Case("mail1", "post", "{mail1}/data/{fresh}", REST, 403),
        Case("mail1", "GET", "{mail1}/snapshots/{snap_mail1}", REST + override, 200),
        Case("mail1", "POST", "{mail1}/snapshots/{snap_mail1}", REST + override, 403),
        Case("mail1", "HEAD", "{mail1}/keys/{key_mail1}", REST + override, 200),
        Case("mail1", "GET", "{mail1}.json", override, 200),
        Case("mail1", "TRACE", "{mail1}/config", REST, 403),
        Case("mail1", "CONNECT", "{mail1}/config", REST, 400),
        Case("mail1", "PATCH", "{mail1}/config", REST, 403),
        Case("mail1", "SEARCH", "{mail1}/", (), 403),
    ]


def _authentication() -> list[Case]:
    rows = []
    for role in ["anon", "badpw", "nopw", "node-badpw", "ghost", "hashpw", "bearer", "digest"]:
        for method, path, headers in [
            ("GET", "{mail1}/config", REST),
            ("GET", "/", ()),
            ("PROPFIND", "{D}/", (("Depth", "1"),)),
            ("DELETE", "{tmp}/snapshots/{snap_tmp}", REST),
        ]:
            rows.append(Case(role, method, path, headers, 401))
    rows.append(Case("badb64", "GET", "{mail1}/config", REST, 401))
    # A Redis user switched off does not authenticate at the gateway either (NS8 ignored it).
    rows += [
        Case("disabled", "POST", "{webtop}/?create=true", (), 401),
        Case("disabled", "GET", "{webtop}/config", REST, 401),
        Case("disabled", "GET", "/", (), 401),
    ]
    return rows


def _spoofing() -> list[Case]:
    """Identity headers are removed: only authentication says who you are."""
    rows = []
    for header, value in [
        ("X-Nsbackup-User", "node/1"),
        ("X-Nsbackup-Group", "nodes"),
        ("X-Remote-User", "node/1"),
        ("Remote-User", "node/1"),
        ("X-Forwarded-User", "node/1"),
    ]:
        spoof = ((header, value),)
        rows += [
            Case("mail1", "GET", "{nc3}/config", REST + spoof, 403),
            Case("mail1", "DELETE", "{mail1}/snapshots/{snap_mail1}", REST + spoof, 403),
            Case("anon", "GET", "{nc3}/config", REST + spoof, 401),
        ]
    return rows


def _probe() -> list[Case]:
    """Only GET/HEAD of exactly /<uuid>/_probe_rest_404 go without credentials."""
    probe = "{D}/_probe_rest_404"
    rows = [
        Case("anon", "GET", probe, (), 404),
        Case("anon", "HEAD", probe, (), 404),
        Case("anon", "GET", probe, REST, 404),
        Case("anon", "HEAD", probe, REST, 404),
        Case("anon", "GET", probe + "?create=true", REST, 401),  # the whole target is matched
        # A destination this gateway does not serve: rclone's combined remote answers 500.
        Case("anon", "GET", f"/{ZERO_UUID}/_probe_rest_404", REST, 500),
        Case("node1", "GET", probe, REST, 404),
        Case("mail1", "GET", probe, REST, 403),  # authenticated modules: module rules
    ]
    for method in ["PUT", "DELETE", "POST", "MKCOL", "MOVE", "COPY", "PROPFIND", "OPTIONS"]:
        headers = (("Destination", "{mail1}/config"),) if method in ("MOVE", "COPY") else ()
        rows.append(Case("anon", method, probe, headers, 401))
    rows.append(Case("anon", "POST", probe, REST, 401))
    for path in [
        "{D}/x/_probe_rest_404",
        "/_probe_rest_404",
        "{D}/_probe_rest_404/",
        "{D}/mail/_probe_rest_404",
        "{mail1}/_probe_rest_404",
        "{mail1}/locks/_probe_rest_404",
        "{D}/_probe_rest_404.json",
        "{D}/%5fprobe_rest_404",
        "{D}/_PROBE_REST_404",
        "/{D_upper}/_probe_rest_404",
        "{D}//_probe_rest_404",
        "{D}/./_probe_rest_404",
        "{D}/../{D}/_probe_rest_404",
        "{mail1}/../../_probe_rest_404",
        "/x{D}/_probe_rest_404",
    ]:
        rows.append(Case("anon", "GET", path, REST, 401))
    return rows


def _nodes() -> list[Case]:
    """Nodes have full access: restic full server and WebDAV, every method, every path."""
    depth_inf = (("Depth", "infinity"),)
    return [
        Case("node1", "GET", "{mail1}/config", REST, 200),
        Case("node1", "GET", "{nc3}/snapshots/", REST, 200),
        Case("node1", "GET", "{nc3}/data/{data_nc3}", REST, 200),
        Case("node1", "HEAD", "{mail1}/keys/{key_mail1}", REST, 200),
        Case("node1", "GET", "{tmp}/index/", REST, 200),
        Case("node1", "GET", "{mail1}.json", (), 200),
        Case("node1", "GET", "/", (), 200),
        Case("node1", "PROPFIND", "/", depth_inf, 207),
        Case("node1", "PROPFIND", "/", (), 207),
        Case("node1", "PROPFIND", "{D}/", (("Depth", "1"),), 207),
        Case("node1", "PROPFIND", "{mail1}/", depth_inf, 207),
        Case("node1", "DELETE", "{tmp}/snapshots/{snap_tmp}", REST, 200),
        Case("node1", "POST", "{tmp}/locks/{fresh}", REST, 200),
        Case("node1", "MKCOL", "{D}/scratch/{fresh}", (), 201),
        Case("node1", "PUT", "{D}/scratch/{fresh}.txt", (), 201),
        Case("node1", "PUT", "{D}/scratch/put.txt", (), 201),
        Case("node1", "DELETE", "{D}/scratch/del.txt", (), 204),
        Case(
            "node1",
            "MOVE",
            "{D}/scratch/move.txt",
            (("Destination", "{D}/scratch/moved.txt"),),
            201,
        ),
        Case(
            "node1",
            "COPY",
            "{D}/scratch/copy.txt",
            (("Destination", "{D}/scratch/copied.txt"),),
            201,
        ),
        Case("node2", "GET", "{mail1}/config", REST, 200),
        Case("node2", "GET", "{nc3}/snapshots/{snap_nc3}", REST, 200),
        Case("node12", "PROPFIND", "{D}/", depth_inf, 207),
        Case("node12", "GET", "{nc3}.json", (), 200),
        # Behind HAProxy the servers decode %2F and refuse dot segments themselves (400).
        Case("node1", "GET", "{D}/mail%2F{M1}/config", REST, 200),
        Case("node1", "GET", "{mail1}/../../nextcloud/{N3}/config", REST, 400),
        Case("node1", "GET", "{mail1}/%2e%2e/%2e%2e/nextcloud/{N3}/config", (), 400),
    ]


def _grants() -> list[Case]:
    """mail2 was granted mail1's repository for a restore: read it, manage locks there."""
    r = "{mail1}"
    ok = [
        ("GET", f"{r}/config", 200),
        ("HEAD", f"{r}/config", 200),
        ("GET", f"{r}/snapshots/", 200),
        ("GET", f"{r}/snapshots/{{snap_mail1}}", 200),
        ("GET", f"{r}/data/{{data_mail1}}", 200),
        ("GET", f"{r}/index/", 200),
        ("GET", f"{r}/keys/{{key_mail1}}", 200),
        ("GET", f"{r}/locks/", 200),
        ("POST", f"{r}/locks/{{fresh}}", 200),
        ("DELETE", f"{r}/locks/{{lockgrant}}", 200),
    ]
    rows = [Case("mail2", m, p, REST, exp) for m, p, exp in ok]
    for method, path in [
        ("POST", f"{r}/data/{{fresh}}"),
        ("POST", f"{r}/snapshots/{{fresh}}"),
        ("POST", f"{r}/index/{{fresh}}"),
        ("POST", f"{r}/keys/{{fresh}}"),
        ("POST", f"{r}/config"),
        ("DELETE", f"{r}/snapshots/{{snap_mail1}}"),
        ("DELETE", f"{r}/data/{{data_mail1}}"),
        ("DELETE", f"{r}/keys/{{key_mail1}}"),
        ("GET", "{D}/nextcloud/{M1}/config"),  # the grant is bound to the grantee's app
        ("GET", "{D}/dokuwiki/{M1}/config"),
    ]:
        rows.append(Case("mail2", method, path, REST, 403))
    rows += [
        Case("mail2", "POST", f"{r}/?create=true", (), 403),
        Case("mail2", "GET", f"{r}.json", (), 200),
        Case("mail2", "HEAD", f"{r}.json", (), 200),
        Case("mail2", "GET", f"{r}/config", (), 403),  # WebDAV: only the metadata file
        Case("mail2", "PROPFIND", f"{r}/", (("Depth", "1"),), 403),
        Case("mail2", "PROPFIND", f"{r}.json", (("Depth", "0"),), 403),
        Case("mail2", "PUT", f"{r}.json", (), 403),
        Case("mail2", "DELETE", f"{r}.json", (), 403),
        Case("mail2", "GET", "{mail2}/config", REST, 404),  # its own, still empty, repository
    ]
    return rows


CASES = [
    *_cross_repo(),
    *_own_rest(),
    *_own_webdav(),
    *_propfind(),
    *_tricks(),
    *_verbs(),
    *_authentication(),
    *_spoofing(),
    *_probe(),
    *_nodes(),
    *_grants(),
]


# -- the gateway --------------------------------------------------------------------------------


@dataclass
class World:
    gw: GatewayProcess
    dest: str
    tmp: Path
    values: dict[str, str]

    def request(
        self,
        method: str,
        path: str,
        auth: str | None,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.gw.ip, self.gw.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers + ((("Authorization", auth),) if auth else ()):
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def restic(self, repo: str, role: str, *args: str, timeout: float = 120) -> Any:
        user, password = _credentials(role)
        env = restic_env(
            repository_path=repo,
            user=user,
            password=password,
            restic_password=RESTIC_PASSWORD,
            gateway_url=self.gw.url,
        )
        return run_restic(["--no-cache", *args], env, timeout=timeout)


def _credentials(role: str) -> tuple[str, str]:
    user, password = base64.b64decode(str(AUTH[role]).split()[1]).decode().split(":", 1)
    return user, password


def _setup_repo(world: World, repo: str, role: str, backups: int) -> None:
    assert world.restic(repo, role, "init").returncode == 0
    for n in range(backups):
        source = world.tmp / f"src-{role}-{n}"
        source.mkdir()
        (source / "file.txt").write_text(f"{role} backup {n}\n" * 50)
        result = world.restic(repo, role, "backup", str(source))
        assert result.returncode == 0, result.stderr


def _names(world: World, repo: str, kind: str) -> list[str]:
    status, _, data = world.request("GET", f"{repo}/{kind}/", AUTH["node1"], REST)
    assert status == 200, (repo, kind, status)
    return sorted(item["name"] for item in json.loads(data))


def _ok(status: int, expected: tuple[int, ...] = (200, 201, 204)) -> None:
    assert status in expected, status


def _grant_restore(redis_server: RedisServer, world: World) -> None:
    """Module mail2 (node 1) may read mail1's repository for a restore (ref §8.3); module
    webtop1's Redis user is switched off."""
    client = redis_server.client()
    digest = hashlib.sha256(MAIL2_PASSWORD.encode()).hexdigest()
    rules = acl.module_rules("mail2")
    off = acl.acl_line(
        "module/webtop1",
        hashlib.sha256(WEBTOP_PASSWORD.encode()).hexdigest(),
        acl.module_rules("webtop1"),
    ).replace(" on ", " off ", 1)
    pipe = client.pipeline(transaction=True)
    for mid, uid in [("mail2", MAIL2), ("webtop1", WEBTOP)]:
        pipe.hset("cluster/module_node", mid, "1")
        pipe.hset("cluster/module_uuid", mid, uid)
        image = mid.rstrip("0123456789")
        pipe.hset(f"module/{mid}/environment", "IMAGE_URL", f"ghcr.io/nethserver/{image}:1.0.0")
    pipe.sadd("cluster/acls", acl.acl_line("module/mail2", digest, rules), off)
    pipe.hset("private/nodes/restore_uuid", MAIL2, M1)
    pipe.execute()
    client.acl_setuser("module/mail2", enabled=True, reset=True, passwords=[f"+{MAIL2_PASSWORD}"])
    client.execute_command("ACL", "SETUSER", "module/mail2", *rules)
    client.publish("cluster/event/acl-changed", json.dumps({}))
    client.close()
    config = world.values["mail1"] + "/config"
    deadline = time.monotonic() + 20
    while world.request("GET", config, AUTH["mail2"], REST)[0] != 200:
        assert time.monotonic() < deadline, "mail2 never got the restore grant"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, host: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    redis_server.flush()
    client = redis_server.client()
    seed_loopback_cluster(client)
    port = free_port("127.0.0.2")
    dest = add_destination(
        client, host, {"provider": "cluster", "url": f"webdav:http://127.0.0.2:{port}"}
    ).id
    client.close()
    tmp = tmp_path_factory.mktemp("authz")
    D = f"/{dest}"
    values = {
        "D": D,
        "D_upper": dest.upper(),
        "M1": M1,
        "N3": N3,
        "MAIL2": MAIL2,
        "M1_upper": M1.upper(),
        "M1_dashes_encoded": M1.replace("-", "%2d"),
        "M1_tail": M1[1:],
        "mail1": f"{D}/mail/{M1}",
        "nc3": f"{D}/nextcloud/{N3}",
        "doku": f"{D}/dokuwiki/{module_uuid('dokuwiki1')}",
        "mail2": f"{D}/mail/{MAIL2}",
        "tmp": f"{D}/traefik/{module_uuid('traefik1')}",
        "webtop": f"{D}/webtop/{WEBTOP}",
    }
    gw = GatewayProcess(redis_server, "1", port, tmp).start()
    world = World(gw, dest, tmp, values)
    try:
        repos = [("mail1", "mail1", 1), ("nc3", "nc3", 1), ("tmp", "node1", 2)]
        with ThreadPoolExecutor(3) as pool:
            jobs = [pool.submit(_setup_repo, world, values[r], role, n) for r, role, n in repos]
            for job in jobs:
                job.result()
        node = AUTH["node1"]
        for app, repo in [("mail", "mail1"), ("nextcloud", "nc3")]:
            _ok(world.request("MKCOL", f"{D}/{app}/", node)[0], (201, 405))
            meta = json.dumps({"name": repo, "uuid": values[repo].rsplit("/", 1)[1]}).encode()
            _ok(world.request("PUT", values[repo] + ".json", node, (), meta)[0])
        for repo, _, _ in repos:
            for kind, key in [("snapshots", "snap"), ("data", "data"), ("index", "index")]:
                values[f"{key}_{repo}"] = _names(world, values[repo], kind)[0]
            values[f"key_{repo}"] = _names(world, values[repo], "keys")[0]
        values["data_mail1_upper"] = values["data_mail1"].upper()
        for name, repo, role in [
            ("lockdel_mail1", "mail1", "mail1"),
            ("lockdel_nc3", "nc3", "nc3"),
            ("lockexists_mail1", "mail1", "mail1"),
            ("lockgrant", "mail1", "mail1"),
        ]:
            body = f"{name} {secrets.token_hex(8)}".encode()
            values[name] = hashlib.sha256(body).hexdigest()
            path = f"{values[repo]}/locks/{values[name]}"
            _ok(world.request("POST", path, AUTH[role], REST, body)[0])
        _ok(world.request("MKCOL", f"{D}/scratch", node)[0])
        for name in ["del.txt", "move.txt", "copy.txt"]:
            _ok(world.request("PUT", f"{D}/scratch/{name}", node, (), b"scratch")[0])
        _grant_restore(redis_server, world)
        yield world
    finally:
        gw.stop()


# -- tests --------------------------------------------------------------------------------------


def test_matrix_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 200
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_authorisation_matrix(world: World, case: Case) -> None:
    values = {**world.values, "fresh": _fresh(case)}
    path = case.path.format(**values)
    headers = tuple((k, v.format(**values)) for k, v in case.headers)
    body = _body(case) if case.method in ("POST", "PUT") else None
    status, response_headers, _ = world.request(case.method, path, AUTH[case.role], headers, body)
    expected = case.expected if isinstance(case.expected, tuple) else (case.expected,)
    assert status in expected, f"{case.method} {path} as {case.role}: {status}"
    if status == 401:
        assert response_headers.get("www-authenticate") == REALM
    backend = response_headers.get("x-nsbackup-backend", "")
    if status < 400 and case.role in MODULES and ("create=true" in path or REST[0] in headers):
        assert backend == "restic_append@node1"  # modules only ever reach the append-only server
    if status < 400 and case.role in NODES and REST[0] in headers:
        assert backend == "restic_full@node1"


def test_module_restic_forget_is_refused_and_snapshot_kept(world: World) -> None:
    repo, snap = world.values["mail1"], world.values["snap_mail1"]
    locks = set(_names(world, repo, "locks"))
    try:
        result = world.restic(repo, "mail1", "forget", snap, timeout=8)
        assert result.returncode != 0
        stderr = result.stderr
    except subprocess.TimeoutExpired as exc:  # restic 0.14 retries the refused DELETE ~45 s
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else str(exc.stderr)
    assert "403 Forbidden" in stderr
    for lock in set(_names(world, repo, "locks")) - locks:  # the killed restic's own lock
        assert world.request("DELETE", f"{repo}/locks/{lock}", AUTH["mail1"], REST)[0] == 200
    assert snap in _names(world, repo, "snapshots")
    listed = world.restic(repo, "node1", "snapshots", "--no-lock", "--json")
    assert listed.returncode == 0, listed.stderr
    assert snap in {s["id"] for s in json.loads(listed.stdout)}


def test_reposting_an_existing_object_leaves_it_unchanged(world: World) -> None:
    for repo, role in [("mail1", "mail1"), ("nc3", "nc3")]:
        for kind, key in [
            ("data", "data"),
            ("index", "index"),
            ("snapshots", "snap"),
            ("keys", "key"),
        ]:
            name = world.values[f"{key}_{repo}"]
            path = f"{world.values[repo]}/{kind}/{name}"
            status, _, _ = world.request("POST", path, AUTH[role], REST, b"overwritten")
            assert status == 403, (path, status)
            status, _, data = world.request("GET", path, AUTH["node1"], REST)
            assert status == 200
            assert hashlib.sha256(data).hexdigest() == name  # restic names files by content


def test_original_objects_intact_after_matrix(world: World) -> None:
    for repo in ["mail1", "nc3"]:
        for kind in ["snapshots", "data", "index", "keys"]:
            for name in _names(world, world.values[repo], kind):
                path = f"{world.values[repo]}/{kind}/{name}"
                status, _, data = world.request("GET", path, AUTH["node1"], REST)
                assert status == 200 and hashlib.sha256(data).hexdigest() == name, path
        status, _, _ = world.request("GET", world.values[repo] + "/config", AUTH["node1"], REST)
        assert status == 200


def test_node_restic_forget_works(world: World) -> None:
    repo = world.values["tmp"]
    victim = _names(world, repo, "snapshots")[-1]
    result = world.restic(repo, "node1", "forget", victim)
    assert result.returncode == 0, result.stderr
    assert victim not in _names(world, repo, "snapshots")


def test_refused_overwrites_always_get_their_403(world: World) -> None:
    """The append-only server refuses before reading the body; HAProxy buffers bodies up to a
    buffer (32 KiB) so the refusal reaches the client every time (without buffering, 32 KiB
    bodies came back as an empty reply about 5 times in 300)."""
    name = world.values["data_mail1"]
    path = f"{world.values['mail1']}/data/{name}"
    statuses = {
        world.request("POST", path, AUTH["mail1"], REST, b"x" * 4096)[0] for _ in range(200)
    }
    assert statuses == {403}
