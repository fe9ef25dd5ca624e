"""/sync: initial and incremental, long-poll wake-ups, invites, leaves,
limited timelines, typing, receipts and read markers."""

from __future__ import annotations

import asyncio
import time

from homeserver.api.appkeys import SYNC
from tests.helpers import CS, MatrixClient, User


async def sync(user: User, since: str | None = None, timeout: int = 0, **params: str) -> dict:
    q = f"?timeout={timeout}" + (f"&since={since}" if since else "")
    for k, v in params.items():
        q += f"&{k}={v}"
    return await user.call("GET", f"{CS}/sync{q}")  # type: ignore[no-any-return]


async def test_initial_sync_shape(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room(name="R")
    await alice.send(room, "one")
    s = await sync(alice)
    assert s["next_batch"]
    joined = s["rooms"]["join"][room]
    bodies = [e["content"].get("body") for e in joined["timeline"]["events"]]
    assert bodies[-1] == "one"
    state_types = {e["type"] for e in joined["state"]["events"]} | {
        e["type"] for e in joined["timeline"]["events"]
    }
    assert {"m.room.create", "m.room.power_levels", "m.room.name"} <= state_types
    assert joined["summary"]["m.joined_member_count"] == 1
    # nothing new: an incremental sync with timeout 0 is empty
    s2 = await sync(alice, s["next_batch"])
    assert s2["rooms"]["join"] == {}


async def test_invite_reaches_invitee_with_stripped_state(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    s = await sync(bob)
    room = await alice.create_room(
        name="Party",
        invite=[bob.user_id],
        is_direct=True,
        room_alias_name="party",
        initial_state=[
            {"type": "m.room.avatar", "content": {"url": "mxc://example.org/cake"}},
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            {"type": "m.room.topic", "content": {"topic": "cake"}},
        ],
    )
    s2 = await sync(bob, s["next_batch"])
    inv = s2["rooms"]["invite"][room]["invite_state"]["events"]
    by_type = {(e["type"], e["state_key"]): e for e in inv}
    assert by_type[("m.room.name", "")]["content"]["name"] == "Party"
    assert ("m.room.create", "") in by_type and ("m.room.join_rules", "") in by_type
    assert by_type[("m.room.avatar", "")]["content"]["url"] == "mxc://example.org/cake"
    assert by_type[("m.room.encryption", "")]["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert by_type[("m.room.canonical_alias", "")]["content"]["alias"].startswith("#party:")
    # stripped state: the spec's recommended types only, each with type,
    # state_key, sender and content
    assert by_type[("m.room.topic", "")]["content"]["topic"] == "cake"
    assert ("m.room.power_levels", "") not in by_type and (
        "m.room.history_visibility",
        "",
    ) not in by_type
    assert all(set(e) >= {"type", "state_key", "sender", "content"} for e in inv)
    mine = by_type[("m.room.member", bob.user_id)]
    assert mine["content"]["membership"] == "invite" and mine["content"]["is_direct"] is True
    assert by_type[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    # joining moves the room to rooms.join with full state
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    s3 = await sync(bob, s2["next_batch"])
    assert room in s3["rooms"]["join"] and room not in s3["rooms"]["invite"]


async def test_long_poll_wakes_on_message(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    s = await sync(bob)
    poll = asyncio.create_task(sync(bob, s["next_batch"], timeout=10_000))
    await asyncio.sleep(0.2)
    assert not poll.done()
    t0 = time.monotonic()
    await alice.send(room, "wake up")
    got = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - t0 < 2
    evs = got["rooms"]["join"][room]["timeline"]["events"]
    assert [e["content"]["body"] for e in evs] == ["wake up"]


async def test_kicked_user_sees_room_under_leave(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    s = await sync(bob)
    await alice.call("POST", f"{CS}/rooms/{room}/kick", {"user_id": bob.user_id, "reason": "bye"})
    s2 = await sync(bob, s["next_batch"])
    left = s2["rooms"]["leave"][room]
    last = left["timeline"]["events"][-1]
    assert last["type"] == "m.room.member" and last["content"]["membership"] == "leave"
    assert last["sender"] == alice.user_id and last["content"]["reason"] == "bye"
    assert room not in s2["rooms"]["join"]


async def test_limited_timeline_and_prev_batch_pages_back(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    s = await sync(alice)
    for i in range(15):
        await alice.send(room, f"gap {i}")
    flt = '{"room":{"timeline":{"limit":5}}}'
    s2 = await sync(alice, s["next_batch"], filter=flt)
    tl = s2["rooms"]["join"][room]["timeline"]
    assert tl["limited"] is True
    assert [e["content"]["body"] for e in tl["events"]] == [f"gap {i}" for i in range(10, 15)]
    back = await alice.call(
        "GET", f"{CS}/rooms/{room}/messages?dir=b&limit=10&from={tl['prev_batch']}"
    )
    assert [e["content"]["body"] for e in back["chunk"]] == [f"gap {i}" for i in range(9, -1, -1)]


async def test_typing_receipts_read_markers(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    s = await sync(bob)
    await alice.call(
        "PUT", f"{CS}/rooms/{room}/typing/{alice.user_id}", {"typing": True, "timeout": 10000}
    )
    s2 = await sync(bob, s["next_batch"])
    eph = s2["rooms"]["join"][room]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": [alice.user_id]}} in eph
    # An initial sync tells who types now; a stop reaches incremental syncs
    # as an empty list, and initial syncs no longer mention the room's typing.
    init = await sync(bob, None)
    eph = init["rooms"]["join"][room]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": [alice.user_id]}} in eph
    await alice.call("PUT", f"{CS}/rooms/{room}/typing/{alice.user_id}", {"typing": False})
    s2b = await sync(bob, s2["next_batch"])
    eph = s2b["rooms"]["join"][room]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": []}} in eph
    init = await sync(bob, None)
    assert not [
        e for e in init["rooms"]["join"][room]["ephemeral"]["events"] if e["type"] == "m.typing"
    ]
    eid = await alice.send(room, "read me")
    await bob.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{eid}", {})
    await bob.call("POST", f"{CS}/rooms/{room}/read_markers", {"m.fully_read": eid})
    s3 = await sync(alice, None)
    eph = s3["rooms"]["join"][room]["ephemeral"]["events"]
    receipts = [e for e in eph if e["type"] == "m.receipt"]
    assert bob.user_id in receipts[0]["content"][eid]["m.read"]
    fr = await bob.call("GET", f"{CS}/user/{bob.user_id}/rooms/{room}/account_data/m.fully_read")
    assert fr == {"event_id": eid}
    s4 = await sync(bob, None)
    ad = s4["rooms"]["join"][room]["account_data"]["events"]
    assert {"type": "m.fully_read", "content": {"event_id": eid}} in ad


async def test_filters_stored(client: MatrixClient) -> None:
    alice = await client.register("alice")
    r = await alice.call(
        "POST", f"{CS}/user/{alice.user_id}/filter", {"room": {"timeline": {"limit": 2}}}
    )
    fid = r["filter_id"]
    got = await alice.call("GET", f"{CS}/user/{alice.user_id}/filter/{fid}")
    assert got == {"room": {"timeline": {"limit": 2}}}
    room = await alice.create_room()
    s = await sync(alice, filter=fid)
    assert len(s["rooms"]["join"][room]["timeline"]["events"]) == 2


def _comparable(resp: dict) -> dict:
    """A sync response without what legitimately differs between two reads
    of the same stream range (event ages)."""
    for room in resp["rooms"]["join"].values():
        for e in room["timeline"]["events"]:
            e.get("unsigned", {}).pop("age", None)
    return resp


async def test_long_poll_woken_by_local_messages_answers_like_the_database(
    client: MatrixClient,
) -> None:
    """A long-poll woken by messages this process appended is answered from
    memory (no database read); the answer equals what a /sync over the same
    range reads from the database: timeline, transaction id echo, summary,
    unread count, next_batch."""
    app = client.http.server.app
    sync_service = app[SYNC]
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="private_chat")  # no name: heroes
    await alice.call("POST", f"{CS}/rooms/{room}/invite", {"user_id": bob.user_id})
    await bob.call("POST", f"{CS}/join/{room}", {})
    await alice.send(room, "seen")
    first = await sync(bob)
    since = first["next_batch"]
    for i in range(3):
        before = sync_service.answered_from_memory
        poll = asyncio.create_task(sync(bob, since, timeout=10_000))
        await asyncio.sleep(0.1)
        await alice.send(room, f"new {i}")
        woken = await asyncio.wait_for(poll, 5)
        assert sync_service.answered_from_memory == before + 1
        again = await sync(bob, since)  # the same range, read from the database
        assert _comparable(woken) == _comparable(again)
        entry = woken["rooms"]["join"][room]
        assert [e["content"]["body"] for e in entry["timeline"]["events"]] == [f"new {i}"]
        assert entry["unread_notifications"]["notification_count"] == 2 + i
        assert entry["summary"]["m.heroes"] == [alice.user_id]
        since = woken["next_batch"]
    # The sender's own long-poll sees the transaction id, like from the database.
    s = await sync(alice)
    poll = asyncio.create_task(sync(alice, s["next_batch"], timeout=10_000))
    await asyncio.sleep(0.1)
    await alice.send(room, "mine")
    woken = await asyncio.wait_for(poll, 5)
    again = await sync(alice, s["next_batch"])
    assert _comparable(woken) == _comparable(again)
    (ev,) = woken["rooms"]["join"][room]["timeline"]["events"]
    assert "transaction_id" in ev["unsigned"]
