"""Fixtures for the attacks: a real server process of ours with short
connection limits (``live``), and a fake remote server with keys (``fake``,
from tests/federation/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.federation.conftest import fake, running_server
from tests.federation.harness import OurServer

__all__ = ["fake", "live"]

# Short limits, so an attack is seen to be cut off within a test's time.
LIVE_LIMITS = {
    "HOMESERVER_LISTEN_HEADER_TIMEOUT": "2",
    "HOMESERVER_LISTEN_IDLE_TIMEOUT": "3",
    "HOMESERVER_LISTEN_BODY_TIMEOUT": "2",
    "HOMESERVER_LISTEN_MAX_CONNECTIONS_PER_ADDRESS": "10",
}


@pytest.fixture(scope="module")
async def live(pg_url: str, template_url: str) -> AsyncIterator[OurServer]:
    """One process of our server, limits as in LIVE_LIMITS."""
    async with running_server(pg_url, "live", LIVE_LIMITS) as srv:
        yield srv
