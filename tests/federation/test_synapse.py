"""Interoperability with Synapse (the reference server) as the other side:
events, state and membership in both directions. Skipped when Synapse
cannot be started (shared/peers/synapse.sh installs it from PyPI)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.federation.harness import (
    Client,
    OurServer,
    SynapseServer,
    eventually,
    state_map,
)

pytestmark = pytest.mark.interop


def uniq(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def users(ours: OurServer, synapse: SynapseServer, session) -> tuple[Client, Client]:  # type: ignore[no-untyped-def]
    mine = await Client(session, ours.base, ours.server_name).register(uniq("ours"))
    theirs = await Client(session, synapse.base, synapse.server_name).register(uniq("syn"))
    return mine, theirs


async def same_view(x: Client, y: Client, room: str) -> None:
    want = state_map(await x.state(room))
    await eventually(lambda: y.state(room), lambda s: state_map(s) == want, timeout=30)
    assert await x.joined_members(room) == await y.joined_members(room)


@pytest.mark.parametrize("version", ["12", "10"])
async def test_our_user_joins_synapse_room_messages_and_rename(
    users: tuple[Client, Client], version: str
) -> None:
    mine, theirs = users
    room = await theirs.create_room(preset="public_chat", room_version=version, name="syn room")
    await mine.join(room, [theirs.server_name])
    await eventually(lambda: theirs.joined_members(room), lambda m: mine.user_id in m, timeout=30)
    await theirs.send(room, "from synapse")
    await eventually(lambda: mine.bodies(room), lambda b: "from synapse" in b, timeout=30)
    await mine.send(room, "from ours")
    await eventually(lambda: theirs.bodies(room), lambda b: "from ours" in b, timeout=30)
    await theirs.put_state(room, "m.room.name", {"name": "renamed by synapse"})
    await eventually(
        lambda: mine.state_event(room, "m.room.name"),
        lambda c: c["name"] == "renamed by synapse",
        timeout=30,
    )
    await same_view(theirs, mine, room)


@pytest.mark.parametrize("version", ["12", "11"])
async def test_synapse_user_joins_our_room_messages_and_rename(
    users: tuple[Client, Client], version: str
) -> None:
    mine, theirs = users
    room = await mine.create_room(preset="public_chat", room_version=version, name="our room")
    await theirs.join(room, [mine.server_name])
    await eventually(lambda: mine.joined_members(room), lambda m: theirs.user_id in m, timeout=30)
    await mine.send(room, "from ours")
    await eventually(lambda: theirs.bodies(room), lambda b: "from ours" in b, timeout=30)
    await theirs.send(room, "from synapse")
    await eventually(lambda: mine.bodies(room), lambda b: "from synapse" in b, timeout=30)
    await mine.put_state(room, "m.room.name", {"name": "renamed by ours"})
    await eventually(
        lambda: theirs.state_event(room, "m.room.name"),
        lambda c: c["name"] == "renamed by ours",
        timeout=30,
    )
    await same_view(mine, theirs, room)


# The membership scenarios of test_membership.py, with Synapse as one side.
from tests.federation.test_membership import (  # noqa: E402
    test_direct_message_carries_is_direct,
    test_invite_then_join_and_leave,
    test_join_by_alias,
    test_kick_ban_refused_rejoin_unban,
    test_knock_then_accept,
    test_reject_invite_with_reason,
)
from tests.federation.test_two_servers import exchange_typing_and_receipts  # noqa: E402

__all__ = [
    "test_direct_message_carries_is_direct",
    "test_invite_then_join_and_leave",
    "test_join_by_alias",
    "test_kick_ban_refused_rejoin_unban",
    "test_knock_then_accept",
    "test_reject_invite_with_reason",
]


@pytest.fixture(params=["ours_hosts", "synapse_hosts"])
async def sides(
    request: pytest.FixtureRequest, users: tuple[Client, Client]
) -> tuple[Client, Client]:
    """(host user, guest user) for the shared membership scenarios."""
    mine, theirs = users
    return (mine, theirs) if request.param == "ours_hosts" else (theirs, mine)


async def test_typing_and_receipts_with_synapse(users: tuple[Client, Client]) -> None:
    mine, theirs = users
    room = await theirs.create_room(preset="public_chat")
    await mine.join(room, [theirs.server_name])
    await eventually(lambda: theirs.joined_members(room), lambda m: mine.user_id in m, timeout=30)
    await exchange_typing_and_receipts(mine, theirs, room)


async def test_notaries_both_ways(ours: OurServer, synapse: SynapseServer) -> None:
    """Synapse as notary for our keys, and ours for Synapse's: each answer
    carries the server's own signature and the notary's."""
    import aiohttp
    import signedjson.key

    from homeserver.core.signing import decode_verify_key, verify_json_signature
    from tests.federation.fake import insecure_tls, key_id, signing_key_of

    async def fetch(port: int, path: str, body: object = None) -> dict:  # type: ignore[type-arg]
        async with aiohttp.ClientSession() as s:
            url = f"https://127.0.0.1:{port}{path}"
            method = "POST" if body is not None else "GET"
            async with s.request(method, url, json=body, ssl=insecure_tls()) as r:
                assert r.status == 200, await r.text()
                return await r.json()  # type: ignore[no-any-return]

    our_key = signing_key_of(ours)
    our_kid, our_vk = key_id(our_key), signedjson.key.get_verify_key(our_key)
    syn_own = await fetch(synapse.fed_port, "/_matrix/key/v2/server")
    syn_keys = {kid: decode_verify_key(kid, v["key"]) for kid, v in syn_own["verify_keys"].items()}

    def check_signed(obj: dict, server: str, keys: dict) -> None:  # type: ignore[type-arg]
        sigs = obj["signatures"][server]
        assert sigs, (server, obj)
        for kid in sigs:
            verify_json_signature(obj, server, kid, keys[kid])

    # Synapse fetches on a cache miss only for named key ids (all keys: cache).
    now = int(time.time() * 1000)
    wanted = {"server_keys": {ours.server_name: {our_kid: {"minimum_valid_until_ts": now}}}}
    got = await fetch(synapse.fed_port, "/_matrix/key/v2/query", wanted)
    (ours_via_syn,) = got["server_keys"]
    got = await fetch(synapse.fed_port, f"/_matrix/key/v2/query/{ours.server_name}")
    assert [k["server_name"] for k in got["server_keys"]] == [ours.server_name]
    assert ours_via_syn["server_name"] == ours.server_name
    assert our_kid in ours_via_syn["verify_keys"]
    check_signed(ours_via_syn, ours.server_name, {our_kid: our_vk})
    check_signed(ours_via_syn, synapse.server_name, syn_keys)

    body = {"server_keys": {synapse.server_name: {}}}
    got = await fetch(ours.fed_port, "/_matrix/key/v2/query", body)
    (syn_via_ours,) = got["server_keys"]
    assert set(syn_keys) <= set(syn_via_ours["verify_keys"])
    check_signed(syn_via_ours, synapse.server_name, syn_keys)
    check_signed(syn_via_ours, ours.server_name, {our_kid: our_vk})
