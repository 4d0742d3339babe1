"""Request targets, protocols and the health-check path against real gateways (issue 8 item 1).

The hole: ``GET http://x?/<dest-uuid>/_probe_rest_404 HTTP/1.0`` with the restic v2 ``Accept``
header and no credentials got 200 from the full restic server and a JSON list of every object
in every repository of the destination, on the gateway and through a peer. HAProxy read the
absolute URI's path as ``/<uuid>/_probe_rest_404`` (the health-check rule, which had no query
check either); rclone read an empty path and a query.

Now nothing but an origin-form target (``/...``) of HTTP/1.0 or 1.1 gets past the first rule
that follows the source check; HTTP/2 is not spoken (``proto h1``) and ``Upgrade`` is refused;
the health-check rule matches the whole request target.

Every row is one raw request on its own socket (``http.client`` cannot send most of these),
asserted by its status, by the absence of any repository object name in the response, and by
HAProxy's own counters: the backends' session totals (``show stat``) grow by exactly one for a
row that should reach a backend and stay put for every other row.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nsbackup.gateway.context import GatewaySettings
from nsbackup.gateway.rc import haproxy_command
from nsbackup.plugins import PluginHost
from nsbackup.restic import restic_env, run_restic
from tests.cluster_seed import PASSWORDS, module_uuid
from tests.gateway_fixture import (
    NODE_IPS,
    RESTIC_PASSWORD,
    GatewayProcess,
    add_local_destination,
    seed_loopback_cluster,
    wait_for,
)
from tests.redis_server import RedisServer
from tests.servers import free_port

pytestmark = pytest.mark.live

REST_ACCEPT = "application/vnd.x.restic.rest.v2"
M1, N3 = module_uuid("mail1"), module_uuid("nextcloud3")
ROLES: dict[str, tuple[str, str] | None] = {
    "anon": None,
    "mail1": ("module/mail1", PASSWORDS["module/mail1"]),
    "node1": ("node/1", PASSWORDS["node/1"]),
    "badpw": ("module/mail1", "not-the-password"),
}
TARGETS = {
    "probe": "/{D}/_probe_rest_404",
    "repo": "/{D}/mail/{M1}/keys/",  # mail1's own repository: a listing of its keys
}
# What an origin-form HTTP/1.x GET with the REST header answers, per target and role.
ORIGIN_STATUS = {
    ("probe", "anon"): 404,
    ("probe", "badpw"): 404,  # the health check needs no credentials, wrong ones included
    ("probe", "node1"): 404,
    ("probe", "mail1"): 403,  # an authenticated module: module rules, and this is no repository
    ("repo", "anon"): 401,
    ("repo", "badpw"): 401,
    ("repo", "node1"): 200,
    ("repo", "mail1"): 200,
}
# Request-target forms over an origin-form target t: (name, method, template).
FORMS = [
    ("origin", "GET", "{t}"),
    ("absolute", "GET", "http://{host}{t}"),
    ("absolute-query-authority", "GET", "http://x?{t}"),
    ("absolute-fragment-authority", "GET", "http://x#{t}"),
    ("absolute-userinfo", "GET", "http://user@x{t}"),
    ("absolute-userinfo-password", "GET", "http://user:pw@x{t}"),
    ("absolute-port", "GET", "http://x:4694{t}"),
    ("absolute-empty-authority", "GET", "http://{t}"),
    ("absolute-upper-scheme", "GET", "HTTP://x{t}"),
    ("absolute-https", "GET", "https://x{t}"),
    ("absolute-other-scheme", "GET", "ftp://x{t}"),
    ("scheme-slash-path", "GET", "http:{t}"),
    ("scheme-path", "GET", "http:{t_rel}"),
    ("relative", "GET", "{t_rel}"),
    ("asterisk-options", "OPTIONS", "*"),
    ("asterisk-get", "GET", "*"),
    ("asterisk-path", "GET", "*{t}"),
    ("authority-connect", "CONNECT", "x:1"),
    ("authority-connect-self", "CONNECT", "{host}"),
    ("authority-get", "GET", "{host}"),
]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "0.9", "HTTP/2.0", "HTTP/1.2"]


@dataclass(frozen=True)
class Row:
    form: str
    method: str
    template: str
    version: str
    role: str
    target: str
    expected: int | None
    """status, or None: no HTTP answer at all is fine too (never a backend's)"""
    reaches: bool
    """the request reaches a backend (HAProxy's counters grow by one)"""

    @property
    def id(self) -> str:
        return f"{self.form}-{self.version}-{self.role}-{self.target}"


def _rows() -> list[Row]:
    rows = []
    for form, method, template in FORMS:
        for version in VERSIONS:
            for role in ROLES:
                for target in TARGETS:
                    if "{t" not in template and target != "probe":
                        continue  # the target does not appear: one row is enough
                    if form == "origin" and version in ("HTTP/1.1", "HTTP/1.0"):
                        status = ORIGIN_STATUS[(target, role)]
                        reaches = status in (200, 404)
                    else:
                        status, reaches = 400, False
                    rows.append(Row(form, method, template, version, role, target, status, reaches))
    return rows


ROWS = _rows()

# The health-check path with queries, fragments, encodings and neighbours, without
# credentials: only the exact GET/HEAD of /<uuid>/_probe_rest_404 passes (404 from rclone).
PROBE_VARIANTS: list[tuple[str, str, int]] = [
    ("GET", "/{D}/_probe_rest_404", 404),
    ("HEAD", "/{D}/_probe_rest_404", 404),
    ("GET", "/{D}/_probe_rest_404?", 401),
    ("GET", "/{D}/_probe_rest_404?x", 401),
    ("GET", "/{D}/_probe_rest_404?create=true", 401),
    ("GET", "/{D}/_probe_rest_404?/", 401),
    ("GET", "/{D}/_probe_rest_404?x=1&y=2", 401),
    ("GET", "/{D}/_probe_rest_404?%2f", 401),
    ("HEAD", "/{D}/_probe_rest_404?x", 401),
    ("GET", "/{D}/_probe_rest_404#", 400),  # HAProxy refuses '#' in a request line itself
    ("GET", "/{D}/_probe_rest_404#x", 400),
    ("GET", "/{D}/_probe_rest_404/", 401),
    ("GET", "/{D}/_probe_rest_404//", 401),
    ("GET", "/{D}/_probe_rest_404/.", 401),
    ("GET", "/{D}/_probe_rest_404%2f", 401),
    ("GET", "/{D}/_probe_rest_404%2F", 401),
    ("GET", "/{D}/_probe_rest_404%00", 401),
    ("GET", "/{D}/_probe_rest_404%20", 401),
    ("GET", "/{D}/_probe_rest_404;x", 401),
    ("GET", "/{D}/_probe_rest_404.json", 401),
    ("GET", "/{D}/%5fprobe_rest_404", 401),
    ("GET", "/{D}/%5Fprobe_rest_404", 401),
    ("GET", "/{D}/%255fprobe_rest_404", 401),  # double encoding
    ("GET", "/{D}/%255Fprobe_rest_404", 401),
    ("GET", "/{D}/_probe%5frest_404", 401),
    ("GET", "/{D}/_probe_rest_40%34", 401),
    ("GET", "/{D}%2f_probe_rest_404", 401),
    ("GET", "/{D}%2F_probe_rest_404", 401),
    ("GET", "/{D_dash_encoded}/_probe_rest_404", 401),
    ("GET", "/%3{D_first}{D_tail}/_probe_rest_404", 401),  # first hex digit encoded
    ("GET", "/{D_upper}/_probe_rest_404", 401),
    ("GET", "/{D}/_PROBE_REST_404", 401),
    ("GET", "/{D}/./_probe_rest_404", 401),
    ("GET", "/{D}/%2e/_probe_rest_404", 401),
    ("GET", "/{D}/%2E/_probe_rest_404", 401),
    ("GET", "/{D}/x/../_probe_rest_404", 401),
    ("GET", "/{D}/x/%2e%2e/_probe_rest_404", 401),
    ("GET", "/./{D}/_probe_rest_404", 401),
    ("GET", "//{D}/_probe_rest_404", 401),
    ("GET", "/{D}//_probe_rest_404", 401),
    ("GET", "//x/{D}/_probe_rest_404", 401),
    ("GET", "/{D}/mail/{M1}/_probe_rest_404", 401),
    ("GET", "/{D}/mail/{M1}/keys/_probe_rest_404", 401),
]


# -- raw HTTP -----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None
    headers: dict[str, str]
    body: bytes
    raw: bytes


def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = 10) -> Answer:
    """Send ``data`` on a new connection and read until the server closes it."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"no end of answer to {data[:120]!r}") from None
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = None
    if lines[0].startswith("HTTP/") and len(lines[0].split()) >= 2:
        status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, body, raw)


def request_bytes(
    method: str,
    target: str,
    version: str,
    host: str,
    auth: tuple[str, str] | None,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    if version == "0.9":  # an HTTP/0.9-style request line: no version, no header
        return f"{method} {target}\r\n".encode()
    lines = [f"{method} {target} {version}"]
    if version != "HTTP/1.0":
        lines.append(f"Host: {host}")
    lines.append(f"Accept: {REST_ACCEPT}")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    lines += [f"{name}: {value}" for name, value in extra]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def backend_sessions(admin_socket: str) -> dict[str, int]:
    """Cumulated sessions of each backend (``stot`` of its BACKEND line in ``show stat``)."""
    lines = haproxy_command(admin_socket, "show stat").splitlines()
    fields = lines[0].lstrip("# ").split(",")
    result = {}
    for line in lines[1:]:
        values = dict(zip(fields, line.split(","), strict=False))
        if values.get("svname") == "BACKEND":
            result[values["pxname"]] = int(values["stot"])
    return result


# -- the gateways -------------------------------------------------------------------------------


@dataclass
class World:
    redis: RedisServer
    base: Path
    gw: GatewayProcess
    admin: str
    values: dict[str, str]
    names: set[str]
    """every object name in the repositories on the destination"""

    def target(self, template: str) -> str:
        return template.format(**self.values)

    def exchange(self, data: bytes, gw: GatewayProcess | None = None) -> Answer:
        gw = gw or self.gw
        return raw_exchange((gw.ip, gw.port), data)

    def leaked(self, answer: Answer) -> set[str]:
        """Object names (or listing entries) found in an answer."""
        found = {name for name in self.names if name.encode() in answer.raw}
        if b'"name"' in answer.raw:
            found.add('"name"')
        return found


def _restic(world_gw: GatewayProcess, repo: str, user: str, *args: str) -> str:
    env = restic_env(
        repository_path=repo,
        user=user,
        password=PASSWORDS[user],
        restic_password=RESTIC_PASSWORD,
        gateway_url=world_gw.url,
    )
    result = run_restic(["--no-cache", *args], env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, host: PluginHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    redis_server.flush()
    client = redis_server.client()
    seed_loopback_cluster(client)
    port = free_port(NODE_IPS["1"])
    dest = add_local_destination(client, host, port).id
    client.close()
    base = tmp_path_factory.mktemp("targets")
    values = {
        "D": dest,
        "M1": M1,
        "D_upper": dest.upper(),
        "D_dash_encoded": dest.replace("-", "%2d"),
        "D_first": dest[0],
        "D_tail": dest[1:],
    }
    with GatewayProcess(redis_server, "1", port, base) as gw:
        source = base / "data"
        source.mkdir()
        (source / "file.txt").write_text("secret-ish content\n" * 100)
        names: set[str] = set()
        for repo, user in [
            (f"{dest}/mail/{M1}", "module/mail1"),
            (f"{dest}/nextcloud/{N3}", "node/1"),
        ]:
            _restic(gw, repo, user, "init")
            _restic(gw, repo, user, "backup", str(source))
            for kind in ("keys", "snapshots", "data", "index"):
                answer = raw_exchange(
                    (gw.ip, gw.port),
                    request_bytes("GET", f"/{repo}/{kind}/", "HTTP/1.1", gw.ip, ROLES["node1"]),
                )
                assert answer.status == 200, answer.raw[:300]
                names |= {item["name"] for item in json.loads(answer.body)}
        assert len(names) >= 8
        admin = GatewaySettings(gw.state_dir.resolve()).admin_socket
        yield World(redis_server, base, gw, admin, values, names)


def _check(world: World, answer: Answer, expected: int | None, reaches: bool, what: str) -> None:
    if expected is not None:
        assert answer.status == expected, f"{what}: {answer.raw[:300]!r}"
    if not reaches:
        assert "x-nsbackup-backend" not in answer.headers, f"{what} reached {answer.headers}"
        assert not world.leaked(answer), f"{what} leaked {world.leaked(answer)}"


@contextlib.contextmanager
def reaching(world: World, reaches: bool) -> Iterator[None]:
    """The block sends one request: the backends' session totals grow by one if it
    ``reaches`` a backend, else not at all."""
    before = backend_sessions(world.admin)
    yield
    after = backend_sessions(world.admin)
    grown = {name: after[name] - before[name] for name in after if after[name] != before[name]}
    assert sum(grown.values()) == (1 if reaches else 0), grown


# -- request-target forms x versions x roles x targets --------------------------------------


def test_rows_cover_every_form_version_and_role() -> None:
    assert {(r.form, r.version, r.role) for r in ROWS} == {
        (f, v, r) for f, _, _ in FORMS for v in VERSIONS for r in ROLES
    }
    assert sum(r.reaches for r in ROWS) == 10  # origin form, HTTP/1.0 and 1.1, 5 each
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_request_target_forms(world: World, row: Row) -> None:
    """Only origin form over HTTP/1.0 or 1.1 reaches a backend; everything else is 400 from
    HAProxy itself, whatever the credentials."""
    t = world.target(TARGETS[row.target])
    host = f"{world.gw.ip}:{world.gw.port}"
    target = row.template.format(t=t, t_rel=t.lstrip("/"), host=host)
    data = request_bytes(row.method, target, row.version, host, ROLES[row.role])
    with reaching(world, row.reaches):
        answer = world.exchange(data)
        _check(world, answer, row.expected, row.reaches, f"{row.method} {target} {row.version}")
        if row.reaches and row.target == "repo":
            assert world.leaked(answer)  # the listing is there: the check above can see one


@pytest.mark.parametrize(
    ("method", "template", "expected"),
    PROBE_VARIANTS,
    ids=[f"{m}-{t}" for m, t, _ in PROBE_VARIANTS],
)
def test_health_check_path_is_exact(
    world: World, method: str, template: str, expected: int
) -> None:
    target = world.target(template)
    host = f"{world.gw.ip}:{world.gw.port}"
    with reaching(world, expected == 404):
        answer = world.exchange(request_bytes(method, target, "HTTP/1.1", host, None))
        _check(world, answer, expected, expected == 404, f"{method} {target}")
        if expected == 404:
            assert answer.headers["x-nsbackup-backend"] == "restic_full@node1"


# -- HTTP/2 and protocol switches -----------------------------------------------------------


def _curl(url: str, role: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    auth = ROLES[role]
    command = ["curl", "-sS", "--max-time", "10", "-i", "-H", f"Accept: {REST_ACCEPT}", *options]
    if auth is not None:
        command += ["-u", f"{auth[0]}:{auth[1]}"]
    return subprocess.run([*command, url], capture_output=True, timeout=30, check=False)


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("role", sorted(ROLES))
def test_http2_prior_knowledge_is_not_spoken(world: World, role: str, target: str) -> None:
    """h2c with prior knowledge (HAProxy would detect it on a clear-text bind): the bind line
    says ``proto h1``, so the preface is an invalid HTTP/1 request, answered 400 and closed."""
    with reaching(world, False):
        result = _curl(
            world.gw.url + world.target(TARGETS[target]), role, "--http2-prior-knowledge"
        )
        assert result.returncode != 0, result.stdout[:300]  # no HTTP/2 answer at all
        assert not any(name.encode() in result.stdout for name in world.names)
        assert b"x-nsbackup-backend" not in result.stdout.lower()


def test_http2_preface_gets_an_http1_400(world: World) -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    with reaching(world, False):
        answer = world.exchange(preface)
        assert answer.status == 400 and answer.raw.startswith(b"HTTP/1.1 400")


UPGRADES = [
    (
        ("Upgrade", "h2c"),
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ),
    (("Upgrade", "h2c"),),
    (("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),),
    (("Upgrade", "websocket"), ("Connection", "Upgrade")),
    (("Upgrade", "HTTP/2.0"), ("Connection", "Upgrade")),
]


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize(
    "upgrade", UPGRADES, ids=["h2c", "h2c-bare", "settings-only", "websocket", "http2"]
)
def test_protocol_upgrades_are_refused(
    world: World, role: str, target: str, upgrade: tuple[tuple[str, str], ...]
) -> None:
    host = f"{world.gw.ip}:{world.gw.port}"
    data = request_bytes(
        "GET", world.target(TARGETS[target]), "HTTP/1.1", host, ROLES[role], upgrade
    )
    with reaching(world, False):
        _check(world, world.exchange(data), 400, False, f"upgrade {upgrade}")


@pytest.mark.parametrize("role", sorted(ROLES))
def test_curl_http2_upgrade_is_refused(world: World, role: str) -> None:
    """``curl --http2`` over http:// asks for ``Upgrade: h2c``: refused, nothing served."""
    with reaching(world, False):
        result = _curl(world.gw.url + world.target(TARGETS["probe"]), role, "--http2")
        assert result.stdout.startswith(b"HTTP/1.1 400"), result.stdout[:300]


# -- through a peer gateway -----------------------------------------------------------------


@pytest.fixture()
def peer(world: World) -> Iterator[GatewayProcess]:
    """Node 2's gateway on 127.0.0.3: it forwards the destination node 1 hosts to node 1.
    Started only for these tests (its health checks would reach node 1's counters)."""
    with GatewayProcess(world.redis, "2", world.gw.port, world.base) as gw:
        probe = request_bytes("GET", world.target(TARGETS["probe"]), "HTTP/1.1", gw.ip, None)
        wait_for(
            lambda: raw_exchange((gw.ip, gw.port), probe).status == 404,
            timeout=30,
            what="node 2 forwarding to node 1",
        )
        yield gw


PEER_ATTEMPTS = [
    ("GET", "http://x?{probe}", "HTTP/1.0", 400),
    ("GET", "http://x?{probe}", "HTTP/1.1", 400),
    ("GET", "http://x#{probe}", "HTTP/1.1", 400),
    ("GET", "http://user@x{probe}", "HTTP/1.1", 400),
    ("GET", "http://127.0.0.2:{port}{probe}", "HTTP/1.1", 400),
    ("GET", "HTTP://x{probe}", "HTTP/1.1", 400),
    ("GET", "https://x{probe}", "HTTP/1.1", 400),
    ("GET", "http:{probe}", "HTTP/1.1", 400),
    ("GET", "{probe}", "HTTP/2.0", 400),
    ("GET", "{probe}", "0.9", 400),
    ("OPTIONS", "*", "HTTP/1.1", 400),
    ("CONNECT", "127.0.0.2:{port}", "HTTP/1.1", 400),
    ("GET", "{probe}?", "HTTP/1.1", 401),
    ("GET", "{probe}?/", "HTTP/1.1", 401),
    ("GET", "{probe}?create=true", "HTTP/1.1", 401),
    ("GET", "{probe}/", "HTTP/1.1", 401),
    ("GET", "/{D}/%5fprobe_rest_404", "HTTP/1.1", 401),
    ("GET", "/{D}%2f_probe_rest_404", "HTTP/1.1", 401),
    ("GET", "/{D}/mail/{M1}/keys/", "HTTP/1.1", 401),
]


def test_peer_gateway_is_no_way_around(world: World, peer: GatewayProcess) -> None:
    """The same attempts sent to node 2, which forwards node 1's destination: refused by node 2
    itself; its backends (forwarding to node 1 included) see none of them."""
    admin = GatewaySettings(peer.state_dir.resolve()).admin_socket
    host = f"{peer.ip}:{peer.port}"
    values = {**world.values, "probe": world.target(TARGETS["probe"]), "port": str(peer.port)}
    for role in ("anon", "badpw"):
        for method, template, version, expected in PEER_ATTEMPTS:
            target = template.format(**values)
            before = backend_sessions(admin)
            answer = world.exchange(request_bytes(method, target, version, host, ROLES[role]), peer)
            what = f"{role} {method} {target} {version} via node 2"
            _check(world, answer, expected, False, what)
            assert backend_sessions(admin) == before, what
        h2 = _curl(peer.url + values["probe"], role, "--http2-prior-knowledge")
        assert h2.returncode != 0 and not any(n.encode() in h2.stdout for n in world.names)
        for upgrade in UPGRADES:
            answer = world.exchange(
                request_bytes("GET", values["probe"], "HTTP/1.1", host, ROLES[role], upgrade),
                peer,
            )
            _check(world, answer, 400, False, f"{role} upgrade {upgrade} via node 2")
    # what is allowed still goes through node 2 to node 1
    answer = world.exchange(request_bytes("GET", values["probe"], "HTTP/1.1", host, None), peer)
    assert answer.status == 404
    assert answer.headers["x-nsbackup-backend"].startswith("gw_")
    listing = request_bytes("GET", world.target(TARGETS["repo"]), "HTTP/1.1", host, ROLES["mail1"])
    answer = world.exchange(listing, peer)
    assert answer.status == 200 and answer.headers["x-nsbackup-backend"].startswith("gw_")
