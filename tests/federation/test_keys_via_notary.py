"""A member server that is down does not split the room for a new joiner
whose operator configured a notary — here one of our own servers.

C's user joins A's room and talks; C stops; B's user joins through A. B has
never seen C, so C's signing key cannot come from C: B asks the notary its
operator trusts (``federation.trusted_key_servers: [A]``), verifies C's
events and ends with A's state and members. B does not ask A *because* A
relayed the join (that path let any server vouch for keys it made up: see
tests/security/test_key_trust.py); without the notary, C's events fail the
signature checks and are dropped (the spec's receipt rules). And B's own
notary endpoint does not serve C's keys: it only got them second-hand."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.federation.conftest import Pair, running_server
from tests.federation.fake import insecure_tls
from tests.federation.harness import Client, OurServer, eventually, state_map


class Trio:
    def __init__(self, a: OurServer, b: OurServer, c: OurServer, s: aiohttp.ClientSession):
        self.a, self.b, self.c = a, b, c
        self.pair = Pair(a, b, s)

    def client(self, server: OurServer) -> Client:
        return self.pair.client(server)


@pytest.fixture(scope="module")
async def trio(
    pg_url: str, template_url: str, session: aiohttp.ClientSession
) -> AsyncIterator[Trio]:
    """A and C plain; B trusts A as its notary."""
    async with running_server(pg_url, "a") as a:
        notary = {"HOMESERVER_FEDERATION_TRUSTED_KEY_SERVERS": a.server_name}
        async with running_server(pg_url, "b", notary) as b, running_server(pg_url, "c") as c:
            yield Trio(a, b, c, session)


async def notary_keys(server: OurServer, of: str) -> list[dict[str, object]]:
    """GET /_matrix/key/v2/query/{of} on ``server``'s federation port."""
    url = f"https://127.0.0.1:{server.fed_port}/_matrix/key/v2/query/{of}"
    async with aiohttp.ClientSession() as s, s.get(url, ssl=insecure_tls()) as r:
        assert r.status == 200
        return list((await r.json())["server_keys"])


async def test_joiner_gets_a_down_servers_keys_from_its_configured_notary(trio: Trio) -> None:
    a, b, c = trio.a, trio.b, trio.c
    tag = uuid.uuid4().hex[:6]
    alice = await trio.client(a).register(f"alice{tag}")
    carol = await trio.client(c).register(f"carol{tag}")
    room = await alice.create_room(
        preset="public_chat", power_level_content_override={"events": {"m.room.topic": 0}}
    )
    await carol.join(room, [a.server_name])
    await carol.send(room, "from c")
    await carol.put_state(room, "m.room.topic", {"topic": "set on c"})
    await eventually(lambda: alice.bodies(room), lambda got: "from c" in got)
    await eventually(
        lambda: alice.state_event(room, "m.room.topic"),
        lambda t: t.get("topic") == "set on c",
    )
    c.stop()
    bob = await trio.client(b).register(f"bob{tag}")
    await bob.join(room, [a.server_name])
    want = {alice.user_id, carol.user_id, bob.user_id}
    assert await bob.joined_members(room) == want
    await eventually(lambda: alice.joined_members(room), lambda m: m == want)
    assert state_map(await bob.state(room)) == state_map(await alice.state(room))
    assert (await bob.state_event(room, "m.room.topic"))["topic"] == "set on c"
    # A fetched C's keys from C itself and vouches for them; B only has
    # them through A, so it does not.
    assert [k["server_name"] for k in await notary_keys(a, c.server_name)] == [c.server_name]
    assert await notary_keys(b, c.server_name) == []
