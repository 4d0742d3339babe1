"""docs/api.md's examples run, in order, against a real Redis with NS8's ACL lines and a real
WebDAV destination."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster_seed import PASSWORDS
from tests.redis_server import RedisServer
from tests.servers import RcloneWebdavServer

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.fixture(scope="module")
def dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneWebdavServer]:
    with RcloneWebdavServer(tmp_path_factory.mktemp("dav"), "davuser", "dav-pw") as server:
        yield server


def test_the_examples_in_docs_api_run(ns8_redis: RedisServer, dav: RcloneWebdavServer) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 6
    namespace = {
        "client": ns8_redis.client(),
        "node_client": ns8_redis.client("node/1", PASSWORDS["node/1"]),
        "destination": {
            "provider": "webdav",
            "name": "",
            "url": f"webdav:{dav.url.rstrip('/')}/docs",
            "password": "",
            "parameters": {"webdav_user": dav.user, "webdav_pass": "dav-pw"},
        },
    }
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"docs/api.md example {number}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"docs/api.md example {number} failed: {exc!r}\n{block}") from exc
