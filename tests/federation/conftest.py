"""Fixtures: two real processes of our server on loopback (TLS federation,
server names localhost:<port> on free loopback ports), each on its own database,
shared by the tests of a module; and a Synapse peer for interop tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import create_test_database, drop_test_database
from tests.federation.fake import FakeOrigin
from tests.federation.harness import REPO, Client, OurServer, SynapseServer
from tests.ports import free_port


class Pair:
    def __init__(self, a: OurServer, b: OurServer, session: aiohttp.ClientSession) -> None:
        self.a = a
        self.b = b
        self.session = session

    def client(self, server: OurServer | SynapseServer) -> Client:
        return Client(self.session, server.base, server.server_name)


@pytest.fixture(scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        yield s


@pytest.fixture(scope="module")
async def pair(
    pg_url: str, template_url: str, session: aiohttp.ClientSession
) -> AsyncIterator[Pair]:
    tmp = Path(tempfile.mkdtemp(prefix="hs-fed-"))
    urls = [await create_test_database(pg_url), await create_test_database(pg_url)]
    a = OurServer("a", free_port(), free_port(), urls[0], tmp / "a")
    b = OurServer("b", free_port(), free_port(), urls[1], tmp / "b")
    a.start()
    b.start()
    try:
        await a.wait_ready()
        await b.wait_ready()
        yield Pair(a, b, session)
    finally:
        a.stop()
        b.stop()
        for url in urls:
            await drop_test_database(pg_url, url)


@asynccontextmanager
async def running_server(
    pg_url: str, name: str, env: dict[str, str] | None = None
) -> AsyncIterator[OurServer]:
    """One process of our server on its own database (``env``: extra
    ``HOMESERVER_*`` settings), stopped and dropped afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="hs-fed-"))
    url = await create_test_database(pg_url)
    srv = OurServer(name, free_port(), free_port(), url, tmp / name, env=env)
    srv.start()
    try:
        await srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        await drop_test_database(pg_url, url)


@asynccontextmanager
async def our_servers(
    pg_url: str, names: Sequence[str], env: dict[str, str] | None = None
) -> AsyncIterator[list[OurServer]]:
    """Several processes of our server (``running_server`` each)."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_server(pg_url, n, env)) for n in names]


@pytest.fixture(scope="module")
async def ours(
    pg_url: str, template_url: str, session: aiohttp.ClientSession
) -> AsyncIterator[OurServer]:
    """One process of our server."""
    async with running_server(pg_url, "ours") as srv:
        yield srv


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeOrigin]:
    """A third server inside the test process: keys, and nothing else."""
    f = FakeOrigin(free_port())
    await f.start()
    yield f
    await f.stop()


def synapse_peer(name: str) -> Iterator[SynapseServer]:
    """A fresh Synapse named ``name`` on free loopback ports, stopped and its
    state folder removed afterwards (skips the test when it cannot start)."""
    peer = SynapseServer(name, free_port(), free_port(), REPO / ".peers")
    try:
        peer.start()
    except Exception as e:  # no network for PyPI, no Python venv, ports taken, ...
        peer.stop()
        shutil.rmtree(REPO / ".peers" / name, ignore_errors=True)
        pytest.skip(f"Synapse is not available: {e}")
    yield peer
    if os.environ.get("HOMESERVER_TEST_KEEP_SYNAPSE"):  # for debugging: look at its logs
        return
    peer.stop()
    shutil.rmtree(REPO / ".peers" / name, ignore_errors=True)
    (REPO / ".peers" / f"{name}.start.log").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def synapse() -> Iterator[SynapseServer]:
    """A fresh Synapse on a free loopback port (skips the test when it cannot start)."""
    # A state folder of its own per run (Synapse keeps our old keys, rooms and
    # backoff otherwise); the venv with Synapse itself is shared in .peers.
    prefix = os.environ.get("HOMESERVER_TEST_SYNAPSE_PREFIX", "fedtest")
    yield from synapse_peer(f"{prefix}-{os.getpid()}")
