"""A hostile server names as many servers and key ids as it likes (in the
events it relays, the servers it asks us to contact): what we remember per
name is bounded, and the per-name locks go once unused. Before, each name
and (server, key id) stayed in a dict for the process's life: memory that
a peer could grow at will."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import signedjson.key

from homeserver.services.federation import client as client_mod
from homeserver.services.federation import keyring as keyring_mod
from homeserver.services.federation.client import FederationError, ServerResolver
from homeserver.services.federation.keyring import Keyring
from homeserver.services.server_keys import ServerKeys
from homeserver.storage.database import Database
from homeserver.storage.federation import FederationStore

BOUND = 50
NAMES = 400


class Unreachable:
    """Every server named is down (the attacker made them up)."""

    async def get_json(self, destination: str, *_: Any, **__: Any) -> Any:
        raise FederationError(destination, None, None, "unreachable")

    async def post_json(self, destination: str, *_: Any, **__: Any) -> Any:
        raise FederationError(destination, None, None, "unreachable")


async def test_keyring_remembers_a_bounded_number_of_servers_and_key_ids(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyring_mod, "MAX_SERVERS", BOUND)
    own = signedjson.key.generate_signing_key("us")
    keyring = Keyring(FederationStore(db), Unreachable(), ServerKeys("us.test", own))  # type: ignore[arg-type]
    for n in range(NAMES):
        # a made-up server, and a made-up key id of one server, each time
        assert await keyring.get_key(f"x{n}.invalid", "ed25519:k", 0) is None
        assert await keyring.get_key("one.invalid", f"ed25519:k{n}", 0) is None
    assert len(keyring._mem) <= BOUND
    assert len(keyring._last_fetch) <= BOUND
    assert len(keyring._unknown_asked) <= BOUND
    assert len(keyring._locks) == 0


async def test_server_resolver_remembers_a_bounded_number_of_hostnames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_mod, "MAX_HOSTNAMES", BOUND)

    async def failing_well_known(hostname: str) -> tuple[str | None, float]:
        raise OSError("no such host")

    async def delegating(hostname: str) -> tuple[str | None, float]:
        return f"{hostname}:8448", 3600.0

    async def no_srv(name: str) -> list[tuple[int, int, int, str]]:
        return []

    for fetch in (failing_well_known, delegating):
        r = ServerResolver(fetch, no_srv)
        await asyncio.gather(*(r.resolve(f"h{n}.invalid") for n in range(NAMES)))
        assert len(r._well_known) <= BOUND
        assert len(r._failures) <= BOUND
        assert len(r._last_good) <= BOUND
        assert len(r._locks) == 0
        # what is still remembered is used: no second fetch for the newest
        assert r.cached(f"h{NAMES - 1}.invalid") is not None
