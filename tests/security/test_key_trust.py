"""Forged signing keys, written as the attack (issue 16, finding 1).

A hostile server S sends us a transaction with events claiming to come from
X — a server that is down — signed with a key S made up, and answers key
queries for X with that key (self-signed by it, and countersigned by S). X's
user ``mallory`` was given power 100 in the room by its creator, so with the
forged key accepted, mallory's join and then a kick of our user bob would
pass the authorization rules. We must ask X's keys of X and of configured
notaries only — never of S because S relayed the events — so the events
fail the signature checks and are dropped, our notary endpoint does not
serve the forged key, and requests signed as X stay unauthorised."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import signedjson.key
from aiohttp import web

from homeserver.config import TrustedKeyServer
from homeserver.core.canonical import compute_event_id
from homeserver.core.events import auth_types_for_event, build_event
from homeserver.core.room_versions import RoomVersion, get_room_version
from homeserver.core.signing import sign_json
from homeserver.services.clock import now_ms
from homeserver.services.federation.client import FederationClient
from homeserver.services.federation.keyring import Keyring
from homeserver.services.server_keys import ServerKeys
from homeserver.storage.database import Database
from homeserver.storage.federation import FederationStore, StoredKey
from tests.federation.conftest import free_port, running_server
from tests.federation.fake import DAY_MS, FakeOrigin, b64, insecure_tls, key_id, signed_request
from tests.federation.harness import LOOPBACK_OPEN, Client, OurServer

Q = "/_matrix/key/v2/query"


class Hostile(FakeOrigin):
    """A real server with real keys, that also answers key queries for the
    unreachable X with the key it holds for X: made up (S, the attacker), or
    X's real one (a notary the operator trusts)."""

    def __init__(self, port: int, victim_name: str) -> None:
        super().__init__(port)
        self.x_name = victim_name
        self.x_key = signedjson.key.generate_signing_key("forged")
        self.key_queries = 0
        self.add_route("POST", Q, self._query)
        self.add_route("GET", Q + "/{server}", self._query)

    def forged_response(self) -> dict[str, Any]:
        resp = {
            "server_name": self.x_name,
            "valid_until_ts": int(time.time() * 1000) + DAY_MS,
            "verify_keys": {key_id(self.x_key): {"key": b64(self.x_key)}},
            "old_verify_keys": {},
        }
        return sign_json(sign_json(resp, self.x_name, self.x_key), self.server_name, self.key)

    async def _query(self, request: web.Request) -> web.Response:
        self.key_queries += 1
        return web.json_response({"server_keys": [self.forged_response()]})


@pytest.fixture(scope="module")
async def target(pg_url: str, template_url: str) -> AsyncIterator[OurServer]:
    async with running_server(pg_url, "target") as srv:
        yield srv


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    # X: a loopback port nobody listens on (allowed by the test allowlist,
    # so X really is asked, and really is down).
    s = Hostile(free_port(), f"localhost:{free_port()}")
    await s.start()
    yield s
    await s.stop()


def forged_event(
    s: Hostile,
    rv: RoomVersion,
    room: str,
    state: dict[tuple[str, str], str],
    prev: str,
    depth: int,
    state_key: str,
    membership: str,
) -> dict[str, Any]:
    """A membership event from mallory@X, signed with S's made-up key for X."""
    sender = f"@mallory:{s.x_name}"
    content = {"membership": membership}
    auth = [
        state[k]
        for k in auth_types_for_event(rv, "m.room.member", state_key, sender, content)
        if k in state
    ]
    ev = build_event(
        rv,
        room_id=room,
        sender=sender,
        type="m.room.member",
        content=content,
        state_key=state_key,
        prev_events=[prev],
        auth_events=auth,
        depth=depth,
        origin_server_ts=int(time.time() * 1000),
        server_name=s.x_name,
        signing_key=s.x_key,
    )
    return dict(ev.pdu)


async def test_forged_keys_for_an_unreachable_server_are_not_trusted(
    target: OurServer, hostile: Hostile
) -> None:
    tag = uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession() as http:
        base = Client(http, target.base, target.server_name)
        alice = await base.register(f"alice{tag}")
        bob = await base.register(f"bob{tag}")
        mallory = f"@mallory:{hostile.x_name}"
        room = await alice.create_room(
            preset="public_chat",
            power_level_content_override={"users": {mallory: 100}},
        )
        await bob.join(room)
        events = await alice.state(room)
        state = {(e["type"], e["state_key"]): e["event_id"] for e in events}
        create = next(e for e in events if e["type"] == "m.room.create")
        rv = get_room_version(create["content"].get("room_version", "1"))
        bob_join = state[("m.room.member", bob.user_id)]
        join = forged_event(hostile, rv, room, state, bob_join, 20, mallory, "join")
        state[("m.room.member", mallory)] = compute_event_id(join, rv)
        kick = forged_event(
            hostile, rv, room, state, compute_event_id(join, rv), 21, bob.user_id, "leave"
        )

        answer = await hostile.request(
            "PUT",
            target,
            f"/_matrix/federation/v1/send/{uuid.uuid4().hex}",
            body={
                "origin": hostile.server_name,
                "origin_server_ts": int(time.time() * 1000),
                "pdus": [join, kick],
            },
        )
        assert answer.status == 200, answer
        results = answer.body["pdus"]
        for pdu in (join, kick):
            assert "signature" in results[compute_event_id(pdu, rv)].get("error", ""), results

        # The kick did not happen, mallory is no member, S was never asked.
        assert await alice.membership_of(room, bob.user_id) == "join"
        assert await alice.membership_of(room, mallory) is None
        assert hostile.key_queries == 0

        # Our notary endpoint does not vouch for the forged key (GET and POST).
        url = f"https://127.0.0.1:{target.fed_port}{Q}"
        async with http.get(f"{url}/{quote(hostile.x_name)}", ssl=insecure_tls()) as r:
            assert r.status == 200
            assert (await r.json())["server_keys"] == []
        body = {"server_keys": {hostile.x_name: {}}}
        async with http.post(url, json=body, ssl=insecure_tls()) as r:
            assert r.status == 200
            assert (await r.json())["server_keys"] == []

    # Requests signed as X with the forged key stay unauthorised.
    got = await signed_request(
        "GET",
        target,
        f"/_matrix/federation/v1/state_ids/{quote(room, safe='')}?event_id={quote(bob_join)}",
        origin=hostile.x_name,
        key=hostile.x_key,
    )
    assert got.status == 401, got
    assert got.body["errcode"] == "M_UNAUTHORIZED"
    assert hostile.key_queries == 0


# ------------------------------------------------- configured notaries


@pytest.mark.parametrize("pin", ["notary's key", "another key", "unpinned", "no notary"])
async def test_keys_of_a_down_server_only_through_a_configured_notary(
    db: Database, hostile: Hostile, pin: str
) -> None:
    """The notary's answer counts only when the notary is configured and
    signed it with its pinned key (or, unpinned, the key it serves itself);
    what we learn that way is used, never re-served by our notary endpoint."""
    other = signedjson.key.generate_signing_key("other")
    notaries: list[TrustedKeyServer] = []
    if pin == "notary's key":
        notaries = [
            TrustedKeyServer(hostile.server_name, ((key_id(hostile.key), b64(hostile.key)),))
        ]
    elif pin == "another key":
        notaries = [TrustedKeyServer(hostile.server_name, ((key_id(hostile.key), b64(other)),))]
    elif pin == "unpinned":
        notaries = [TrustedKeyServer(hostile.server_name)]
    own = signedjson.key.generate_signing_key("us")
    client = FederationClient("us.test", own, verify_certificates=False, ip_filter=LOOPBACK_OPEN)
    keyring = Keyring(FederationStore(db), client, ServerKeys("us.test", own), notaries)
    try:
        got = await keyring.get_key(hostile.x_name, key_id(hostile.x_key), now_ms())
        if pin in ("notary's key", "unpinned"):
            assert got is not None and got.encode() == hostile.x_key.verify_key.encode()
            assert hostile.key_queries == 1
        else:
            assert got is None
            assert hostile.key_queries == (1 if notaries else 0)
        assert await keyring.notary_response(hostile.x_name) is None
    finally:
        await client.close()


async def test_keys_cached_before_the_fix_are_forgotten_once(db: Database) -> None:
    """A database from before may hold a forged key (and serve it as a
    notary): migration 0002 forgets cached remote keys once on upgrade."""
    store = FederationStore(db)
    forged = signedjson.key.generate_signing_key("forged")
    until = now_ms() + DAY_MS

    async def poison() -> None:
        key = StoredKey("x.test", key_id(forged), b64(forged), until, False)
        await store.store_server_keys("x.test", [key], {"server_name": "x.test"}, until, now_ms())

    await db.pool.execute("DELETE FROM schema_version WHERE version > 1")  # as before
    await poison()
    await db.apply_schema()
    assert await store.server_keys("x.test") == {}
    assert await store.key_response("x.test") is None
    await poison()  # fetched again after the upgrade: kept across restarts
    await db.apply_schema()
    assert key_id(forged) in await store.server_keys("x.test")
