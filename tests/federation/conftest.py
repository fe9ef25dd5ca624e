"""Fixtures: two real processes of our server on loopback (TLS federation,
server names localhost:18448 and localhost:28448), each on its own database,
shared by the tests of a module; and a Synapse peer for interop tests."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import create_test_database, drop_test_database
from tests.federation.harness import REPO, Client, OurServer, SynapseServer

A_FED, A_CLIENT = 18448, 18008
B_FED, B_CLIENT = 28448, 28008
SYNAPSE_FED, SYNAPSE_CLIENT = 38448, 38008


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
    a = OurServer("a", A_FED, A_CLIENT, urls[0], tmp / "a")
    b = OurServer("b", B_FED, B_CLIENT, urls[1], tmp / "b")
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


@pytest.fixture(scope="module")
def synapse() -> SynapseServer:
    """A Synapse on localhost:38448 (skips the test when it cannot start)."""
    peer = SynapseServer("fedtest", SYNAPSE_FED, SYNAPSE_CLIENT, REPO / ".peers")
    try:
        peer.start()
    except Exception as e:  # no network for PyPI, no Python venv, ...
        pytest.skip(f"Synapse is not available: {e}")
    yield peer
    peer.stop()
