"""Fixtures for the attacks: a real server process of ours with short
connection timeouts (``live``), and a fake remote server with keys."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import create_test_database, drop_test_database
from tests.federation.conftest import free_port
from tests.federation.fake import FakeOrigin
from tests.federation.harness import OurServer

# Short limits, so an attack is seen to be cut off within a test's time.
LIVE_LIMITS = {
    "HOMESERVER_LISTEN_HEADER_TIMEOUT": "2",
    "HOMESERVER_LISTEN_IDLE_TIMEOUT": "3",
    "HOMESERVER_LISTEN_BODY_TIMEOUT": "2",
    "HOMESERVER_LISTEN_MAX_CONNECTIONS_PER_ADDRESS": "10",
}


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ while a server process is started."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


@pytest.fixture(scope="module")
async def live(pg_url: str, template_url: str) -> AsyncIterator[OurServer]:
    """One process of our server, limits as in LIVE_LIMITS."""
    tmp = Path(tempfile.mkdtemp(prefix="hs-sec-"))
    url = await create_test_database(pg_url)
    srv = OurServer("live", free_port(), free_port(), url, tmp / "live")
    with environment(LIVE_LIMITS):
        srv.start()
    try:
        await srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        await drop_test_database(pg_url, url)


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeOrigin]:
    f = FakeOrigin(free_port())
    await f.start()
    yield f
    await f.stop()
