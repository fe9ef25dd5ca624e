"""Upgrades and relations across servers, Synapse as the other side: a
Synapse member of a room we host sees its tombstone, resolves the moved alias
and follows to the replacement; our member of a room Synapse upgrades
follows too; thread replies and reactions received over federation are
aggregated and listed here, ours are listed by Synapse. Skipped when Synapse
cannot be started (shared/peers/synapse.sh)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.federation.conftest import synapse_peer
from tests.federation.harness import Client, SynapseServer, eventually, q
from tests.federation.test_synapse import uniq, users  # noqa: F401  (the users fixture)

pytestmark = pytest.mark.interop

CS = "/_matrix/client/v3"


@pytest.fixture(scope="module")
def synapse() -> Iterator[SynapseServer]:
    """A Synapse of this module's own, named for this work."""
    yield from synapse_peer(f"client-rooms-{os.getpid()}")


async def upgrade(user: Client, room: str, version: str) -> str:
    r = await user.call("POST", f"{CS}/rooms/{q(room)}/upgrade", {"new_version": version})
    return str(r["replacement_room"])


async def test_synapse_member_follows_our_upgrade(users: tuple[Client, Client]) -> None:  # noqa: F811
    mine, theirs = users
    alias_name = uniq("hall")
    alias = f"#{alias_name}:{mine.server_name}"
    old = await mine.create_room(
        preset="public_chat", room_version="11", room_alias_name=alias_name, name="Hall"
    )
    await theirs.join(old, [mine.server_name])
    await eventually(lambda: mine.joined_members(old), lambda m: theirs.user_id in m, timeout=30)

    new = await upgrade(mine, old, "12")
    # Synapse's client sees the tombstone and the restricted levels
    tomb = await eventually(
        lambda: theirs.state_event(old, "m.room.tombstone"),
        lambda c: c.get("replacement_room") == new,
        timeout=30,
    )
    assert tomb["replacement_room"] == new
    pl = await eventually(
        lambda: theirs.state_event(old, "m.room.power_levels"),
        lambda c: c.get("events_default") == 50,
        timeout=30,
    )
    assert pl["invite"] == 50
    # the alias now names the new room, over federation too
    resolved = await theirs.call("GET", f"{CS}/directory/room/{q(alias)}")
    assert resolved["room_id"] == new
    # and the member follows, by the tombstone sender's server
    await theirs.join(new, [mine.server_name])
    await eventually(lambda: mine.joined_members(new), lambda m: theirs.user_id in m, timeout=30)
    create = await theirs.state_event(new, "m.room.create")
    assert create["predecessor"]["room_id"] == old and create["room_version"] == "12"
    assert (await theirs.state_event(new, "m.room.name"))["name"] == "Hall"
    await theirs.send(new, "followed")
    await eventually(lambda: mine.bodies(new), lambda b: "followed" in b, timeout=30)


async def test_our_member_follows_synapse_upgrade(users: tuple[Client, Client]) -> None:  # noqa: F811
    mine, theirs = users
    old = await theirs.create_room(preset="public_chat", room_version="10", name="Theirs")
    await mine.join(old, [theirs.server_name])
    await eventually(lambda: theirs.joined_members(old), lambda m: mine.user_id in m, timeout=30)
    since = (await mine.sync())["next_batch"]

    new = await upgrade(theirs, old, "11")

    # our client sees the tombstone in its sync
    async def tombstones() -> list[dict]:  # type: ignore[type-arg]
        s = await mine.sync(since)
        tl = s["rooms"].get("join", {}).get(old, {}).get("timeline", {}).get("events", [])
        return [e for e in tl if e["type"] == "m.room.tombstone"]

    seen = await eventually(tombstones, timeout=30)
    assert seen[0]["content"]["replacement_room"] == new
    await mine.join(new, [theirs.server_name])
    await eventually(lambda: theirs.joined_members(new), lambda m: mine.user_id in m, timeout=30)
    assert (await mine.state_event(new, "m.room.create"))["predecessor"]["room_id"] == old
    await mine.send(new, "followed too")
    await eventually(lambda: theirs.bodies(new), lambda b: "followed too" in b, timeout=30)


async def test_relations_across_servers(users: tuple[Client, Client]) -> None:  # noqa: F811
    mine, theirs = users
    room = await mine.create_room(preset="public_chat")
    await theirs.join(room, [mine.server_name])
    await eventually(lambda: mine.joined_members(room), lambda m: theirs.user_id in m, timeout=30)
    root = await mine.send(room, "root")
    thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    await eventually(lambda: theirs.bodies(room), lambda b: "root" in b, timeout=30)
    # Synapse's user replies in the thread: aggregated and listed here
    theirs_reply = await theirs.send(room, content={"msgtype": "m.text", "body": "re", **thread})

    async def bundled() -> dict:  # type: ignore[type-arg]
        ev = await mine.call("GET", f"{CS}/rooms/{q(room)}/event/{q(root)}")
        return ev["unsigned"].get("m.relations", {})  # type: ignore[no-any-return]

    got = await eventually(bundled, lambda r: "m.thread" in r, timeout=30)
    assert got["m.thread"]["latest_event"]["event_id"] == theirs_reply
    listed = await mine.call("GET", f"/_matrix/client/v1/rooms/{q(room)}/relations/{q(root)}")
    assert [e["event_id"] for e in listed["chunk"]] == [theirs_reply]
    # our reaction is listed by Synapse
    reaction = await mine.send(
        room,
        type="m.reaction",
        content={"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "+1"}},
    )

    async def synapse_lists() -> list[str]:
        r = await theirs.call(
            "GET", f"/_matrix/client/v1/rooms/{q(room)}/relations/{q(root)}/m.annotation"
        )
        return [e["event_id"] for e in r["chunk"]]

    assert await eventually(synapse_lists, lambda ids: reaction in ids, timeout=30)
