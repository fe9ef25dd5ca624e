"""Real client libraries from outside the project — matrix-nio and
mautrix-python — drive event context, relations, threads and a room upgrade
through their own request building, response parsing and (mautrix) sync
loop.

The fixtures give one user per library (``nio_bob``, ``mx_alice``) in a
shared room; later areas (devices, search, push-rule counts) can add their
scenarios here with the same fixtures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nio
import pytest
from mautrix.api import Method, Path
from mautrix.client import Client
from mautrix.types import (
    Event,
    EventType,
    MessageType,
    RelationType,
    RoomCreatePreset,
    RoomCreateStateEventContent,
    RoomDirectoryVisibility,
    StateEvent,
    TextMessageEventContent,
    UserID,
)
from nio.api import RelationshipType

from tests.helpers import MatrixClient


@pytest.fixture
async def base_url(client: MatrixClient) -> str:
    return str(client.http.make_url("")).rstrip("/")


@pytest.fixture
async def nio_bob(base_url: str) -> AsyncIterator[nio.AsyncClient]:
    c = nio.AsyncClient(base_url, "bob")
    r = await c.register("bob", "secret-bob")
    assert isinstance(r, nio.RegisterResponse), r
    yield c
    await c.close()


@pytest.fixture
async def mx_alice(client: MatrixClient, base_url: str) -> AsyncIterator[Client]:
    me = await client.register("alice")
    mx = Client(mxid=UserID(me.user_id), device_id=me.device_id, base_url=base_url, token=me.token)
    yield mx
    mx.stop()
    await mx.api.session.close()


def ok(resp: object, kind: type) -> object:
    assert isinstance(resp, kind), resp
    return resp


async def test_context_relations_and_threads_through_nio_and_mautrix(
    nio_bob: nio.AsyncClient, mx_alice: Client
) -> None:
    room = await mx_alice.create_room(preset=RoomCreatePreset.PUBLIC, name="Talk")
    ok(await nio_bob.join(room), nio.JoinResponse)
    before = await mx_alice.send_text(room, "before")
    root = await mx_alice.send_text(room, "root")
    thread_reply = ok(
        await nio_bob.room_send(
            room,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": "in thread",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root},
            },
        ),
        nio.RoomSendResponse,
    ).event_id  # type: ignore[attr-defined]
    reaction = await mx_alice.react(room, root, "👍")
    edit = TextMessageEventContent(msgtype=MessageType.TEXT, body="root, edited")
    edit.set_edit(root)
    edited = await mx_alice.send_message(room, edit)

    # nio: /context parsed into its own response, aggregations on the event
    ctx = ok(await nio_bob.room_context(room, root, limit=2), nio.RoomContextResponse)
    assert ctx.event.event_id == root  # type: ignore[attr-defined]
    assert [e.event_id for e in ctx.events_before] == [before]  # type: ignore[attr-defined]
    assert [e.event_id for e in ctx.events_after] == [thread_reply]  # type: ignore[attr-defined]
    bundled = ctx.event.source["unsigned"]["m.relations"]  # type: ignore[attr-defined]
    assert bundled["m.thread"]["count"] == 1
    assert bundled["m.replace"]["event_id"] == edited
    # nio: /relations in its three forms, paginated by nio itself (limit 1)
    every = [e.event_id async for e in nio_bob.room_get_event_relations(room, root, limit=1)]
    assert every == [edited, reaction, thread_reply]
    reactions = [
        e.event_id
        async for e in nio_bob.room_get_event_relations(
            room, root, RelationshipType.annotation, "m.reaction"
        )
    ]
    assert reactions == [reaction]
    edits = [
        e.event_id
        async for e in nio_bob.room_get_event_relations(room, root, RelationshipType.replacement)
    ]
    assert edits == [edited]
    threads = [e.event_id async for e in nio_bob.room_get_threads(room)]
    assert threads == [root]

    # mautrix: /context into its typed EventContext
    mctx = await mx_alice.get_event_context(room, root, limit=6)
    assert mctx.event.event_id == root
    assert [e.event_id for e in mctx.events_after] == [thread_reply, reaction, edited]
    assert any(isinstance(s, StateEvent) and s.type == EventType.ROOM_CREATE for s in mctx.state)
    # mautrix: /relations through its request machinery, events parsed by it
    resp = await mx_alice.api.request(
        Method.GET, Path.v1.rooms[room].relations[root][RelationType.REPLACE.value]
    )
    parsed = [Event.deserialize(e) for e in resp["chunk"]]
    assert [e.event_id for e in parsed] == [edited]
    assert parsed[0].content.relates_to.rel_type == RelationType.REPLACE
    assert parsed[0].content.get_edit() == root


async def test_upgrade_through_mautrix_followed_by_nio_and_mautrix_sync(
    nio_bob: nio.AsyncClient, mx_alice: Client
) -> None:
    alias_local = "library-hall"
    old = await mx_alice.create_room(
        alias_localpart=alias_local,
        preset=RoomCreatePreset.PUBLIC,
        visibility=RoomDirectoryVisibility.PUBLIC,
        name="Hall",
        room_version="11",
    )
    ok(await nio_bob.join(old), nio.JoinResponse)
    first = ok(await nio_bob.sync(timeout=0), nio.SyncResponse)

    # mautrix's own sync loop sees the tombstone
    tombstones: asyncio.Queue[StateEvent] = asyncio.Queue()

    async def on_tombstone(evt: StateEvent) -> None:
        await tombstones.put(evt)

    mx_alice.add_event_handler(EventType.ROOM_TOMBSTONE, on_tombstone)
    mx_alice.start(None)
    resp = await mx_alice.api.request(
        Method.POST, Path.v3.rooms[old].upgrade, {"new_version": "12"}
    )
    new = resp["replacement_room"]
    tomb = await asyncio.wait_for(tombstones.get(), timeout=30)
    assert tomb.room_id == old and tomb.content.replacement_room == new
    create = await mx_alice.get_state_event(new, EventType.ROOM_CREATE)
    assert isinstance(create, RoomCreateStateEventContent)
    assert create.predecessor.room_id == old and create.room_version == "12"

    # nio: the tombstone arrives as its RoomUpgradeEvent, the new room as an invite
    nxt = ok(await nio_bob.sync(timeout=0, since=first.next_batch), nio.SyncResponse)  # type: ignore[attr-defined]
    timeline = nxt.rooms.join[old].timeline.events  # type: ignore[attr-defined]
    upgrades = [e for e in timeline if isinstance(e, nio.RoomUpgradeEvent)]
    assert upgrades and upgrades[0].replacement_room == new
    assert new in nxt.rooms.invite  # type: ignore[attr-defined]
    resolved = ok(
        await nio_bob.room_resolve_alias(f"#{alias_local}:hs.test"), nio.RoomResolveAliasResponse
    )
    assert resolved.room_id == new  # type: ignore[attr-defined]
    ok(await nio_bob.join(new), nio.JoinResponse)
    ok(
        await nio_bob.room_send(new, "m.room.message", {"msgtype": "m.text", "body": "moved"}),
        nio.RoomSendResponse,
    )
    refused = await nio_bob.room_send(old, "m.room.message", {"msgtype": "m.text", "body": "x"})
    assert isinstance(refused, nio.RoomSendError) and refused.status_code == "M_FORBIDDEN"


async def test_devices_search_and_user_directory_through_nio_and_mautrix(
    nio_bob: nio.AsyncClient, mx_alice: Client, base_url: str
) -> None:
    """Issue 17: matrix-nio manages devices (list, rename, delete behind
    user-interactive auth); mautrix searches messages and the user directory."""
    phone = nio.AsyncClient(base_url, "bob")
    try:
        ok(await phone.login("secret-bob", device_name="phone"), nio.LoginResponse)
        listed = ok(await nio_bob.devices(), nio.DevicesResponse)
        assert {d.id for d in listed.devices} == {nio_bob.device_id, phone.device_id}  # type: ignore[attr-defined]
        ok(
            await nio_bob.update_device(phone.device_id, {"display_name": "old phone"}),
            nio.UpdateDeviceResponse,
        )
        again = ok(await nio_bob.devices(), nio.DevicesResponse)
        names = {d.id: d.display_name for d in again.devices}  # type: ignore[attr-defined]
        assert names[phone.device_id] == "old phone"
        first = await nio_bob.delete_devices([phone.device_id])
        assert isinstance(first, nio.DeleteDevicesAuthResponse), first  # the UIA flows
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": nio_bob.user_id},
            "password": "secret-bob",
            "session": first.session,
        }
        ok(await nio_bob.delete_devices([phone.device_id], auth), nio.DeleteDevicesResponse)
        gone = await phone.whoami()
        assert isinstance(gone, nio.WhoamiError), gone
    finally:
        await phone.close()

    room = await mx_alice.create_room(preset=RoomCreatePreset.PUBLIC, name="Findings")
    ok(await nio_bob.join(room), nio.JoinResponse)
    await mx_alice.send_text(room, "the quarterly numbers are in")
    await mx_alice.send_text(room, "lunch at noon")
    found = await mx_alice.api.request(
        Method.POST,
        Path.v3.search,
        {"search_categories": {"room_events": {"search_term": "numbers", "order_by": "recent"}}},
    )
    results = found["search_categories"]["room_events"]["results"]
    assert [r["result"]["content"]["body"] for r in results] == ["the quarterly numbers are in"]
    users = await mx_alice.search_users("bob")
    assert [u.user_id for u in users.results] == [nio_bob.user_id]
