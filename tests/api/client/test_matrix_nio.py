"""A real client library from outside the project (matrix-nio) drives the
server through its own request building and response parsing: rooms with
presets and an alias, invite, join by alias, rename, kick, ban, a DM with
is_direct, and its normal sync loop seeing invites, joins, messages and
member changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nio
import pytest

from tests.helpers import MatrixClient


@pytest.fixture
async def base_url(client: MatrixClient) -> str:
    return str(client.http.make_url("")).rstrip("/")


@pytest.fixture
async def nio_users(base_url: str) -> AsyncIterator[list[nio.AsyncClient]]:
    users = []
    for name in ("alice", "bob", "carol"):
        c = nio.AsyncClient(base_url, name)
        r = await c.register(name, "secret-" + name)
        assert isinstance(r, nio.RegisterResponse), r
        users.append(c)
    yield users
    for c in users:
        await c.close()


def ok(resp: object, kind: type) -> object:
    assert isinstance(resp, kind), resp
    return resp


async def test_rooms_membership_and_dm_through_matrix_nio(nio_users: list[nio.AsyncClient]) -> None:
    alice, bob, carol = nio_users
    r = ok(
        await alice.room_create(
            alias="nio-hall", name="Hall", topic="t", preset=nio.RoomPreset.public_chat
        ),
        nio.RoomCreateResponse,
    )
    room = r.room_id  # type: ignore[attr-defined]
    resolved = ok(await bob.room_resolve_alias("#nio-hall:hs.test"), nio.RoomResolveAliasResponse)
    assert resolved.room_id == room  # type: ignore[attr-defined]
    ok(await bob.join("#nio-hall:hs.test"), nio.JoinResponse)
    ok(
        await alice.room_put_state(room, "m.room.name", {"name": "Renamed"}),
        nio.RoomPutStateResponse,
    )
    name = ok(await bob.room_get_state_event(room, "m.room.name"), nio.RoomGetStateEventResponse)
    assert name.content["name"] == "Renamed"  # type: ignore[attr-defined]
    # bob has no power: nio parses the 403 into an error response
    denied = await bob.room_put_state(room, "m.room.name", {"name": "mine"})
    assert isinstance(denied, nio.RoomPutStateError) and denied.status_code == "M_FORBIDDEN"

    private = ok(
        await alice.room_create(preset=nio.RoomPreset.private_chat, name="Secret"),
        nio.RoomCreateResponse,
    ).room_id  # type: ignore[attr-defined]
    ok(await alice.room_invite(private, carol.user_id), nio.RoomInviteResponse)
    ok(await carol.join(private), nio.JoinResponse)
    ok(await alice.room_kick(private, carol.user_id, reason="bye"), nio.RoomKickResponse)
    ok(await carol.join(private), nio.JoinError)  # kicked from an invite-only room
    ok(await alice.room_invite(private, carol.user_id), nio.RoomInviteResponse)
    ok(await carol.join(private), nio.JoinResponse)
    ok(await alice.room_ban(private, carol.user_id, reason="spam"), nio.RoomBanResponse)
    ok(await carol.join(private), nio.JoinError)
    ok(await alice.room_unban(private, carol.user_id), nio.RoomUnbanResponse)

    dm = ok(
        await alice.room_create(
            is_direct=True, invite=[bob.user_id], preset=nio.RoomPreset.trusted_private_chat
        ),
        nio.RoomCreateResponse,
    ).room_id  # type: ignore[attr-defined]
    synced = ok(await bob.sync(timeout=0), nio.SyncResponse)
    invite = synced.rooms.invite[dm]  # type: ignore[attr-defined]
    mine = [
        e
        for e in invite.invite_state
        if isinstance(e, nio.InviteMemberEvent) and e.state_key == bob.user_id
    ]
    assert mine and mine[0].content.get("is_direct") is True
    ok(await bob.join(dm), nio.JoinResponse)
    members = ok(await alice.joined_members(dm), nio.JoinedMembersResponse)
    assert {m.user_id for m in members.members} == {alice.user_id, bob.user_id}  # type: ignore[attr-defined]


async def test_matrix_nio_sync_loop(nio_users: list[nio.AsyncClient]) -> None:
    alice, bob, _ = nio_users
    seen: list[str] = []
    invited = asyncio.Event()
    got_message = asyncio.Event()
    renamed = asyncio.Event()

    async def on_invite(room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        if event.state_key == bob.user_id:
            seen.append("invite")
            invited.set()

    async def on_message(room: nio.MatrixRoom, event: nio.RoomMessageText) -> None:
        seen.append(f"message:{event.body}")
        got_message.set()

    async def on_member(room: nio.MatrixRoom, event: nio.RoomMemberEvent) -> None:
        seen.append(f"member:{event.state_key}:{event.membership}")
        if event.state_key == alice.user_id and event.content.get("displayname") == "Alice!":
            renamed.set()

    bob.add_event_callback(on_invite, nio.InviteMemberEvent)  # type: ignore[arg-type]
    bob.add_event_callback(on_message, nio.RoomMessageText)  # type: ignore[arg-type]
    bob.add_event_callback(on_member, nio.RoomMemberEvent)  # type: ignore[arg-type]
    await bob.sync(timeout=0)
    loop = asyncio.create_task(bob.sync_forever(timeout=2000))
    try:
        room = ok(
            await alice.room_create(name="Loop", invite=[bob.user_id]), nio.RoomCreateResponse
        ).room_id  # type: ignore[attr-defined]
        await asyncio.wait_for(invited.wait(), 10)
        ok(await bob.join(room), nio.JoinResponse)
        ok(
            await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "hi bob"}),
            nio.RoomSendResponse,
        )
        await asyncio.wait_for(got_message.wait(), 10)
        ok(await alice.set_displayname("Alice!"), nio.ProfileSetDisplayNameResponse)
        await asyncio.wait_for(renamed.wait(), 10)
    finally:
        loop.cancel()
    assert "invite" in seen and "message:hi bob" in seen
    assert f"member:{bob.user_id}:join" in seen
    assert bob.rooms[room].display_name == "Loop"
    assert bob.rooms[room].users[alice.user_id].display_name == "Alice!"


async def test_push_rule_counts_through_matrix_nio(nio_users: list[nio.AsyncClient]) -> None:
    """nio's sync parses our unread_notifications into its room model: a
    mention highlights, a notice does not count, the receipt nio sends
    (m.read in the main thread) clears them; its push-rule calls work."""
    alice, bob, _carol = nio_users
    r = ok(await alice.room_create(preset=nio.RoomPreset.public_chat), nio.RoomCreateResponse)
    room = r.room_id  # type: ignore[attr-defined]
    ok(await bob.join(room), nio.JoinResponse)
    ok(await bob.sync(timeout=0), nio.SyncResponse)
    sent = []
    for content in (
        {"msgtype": "m.text", "body": "plain"},
        {"msgtype": "m.notice", "body": "a bot"},
        {"msgtype": "m.text", "body": "you", "m.mentions": {"user_ids": [bob.user_id]}},
    ):
        resp = ok(await alice.room_send(room, "m.room.message", content), nio.RoomSendResponse)
        sent.append(resp.event_id)  # type: ignore[attr-defined]
    ok(await bob.sync(timeout=0), nio.SyncResponse)
    assert (bob.rooms[room].unread_notifications, bob.rooms[room].unread_highlights) == (2, 1)
    ok(await bob.update_receipt_marker(room, sent[-1]), nio.UpdateReceiptMarkerResponse)
    ok(await bob.sync(timeout=0), nio.SyncResponse)
    assert (bob.rooms[room].unread_notifications, bob.rooms[room].unread_highlights) == (0, 0)
    # nio's push-rule calls: mute the room for bob, and nothing counts;
    # nio learns the rules from the m.push_rules account data in sync.
    ok(
        await bob.set_pushrule("global", nio.PushRuleKind.room, room, actions=[]),
        nio.SetPushRuleResponse,
    )
    await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "x"})
    synced = ok(await bob.sync(timeout=0), nio.SyncResponse)
    assert bob.rooms[room].unread_notifications == 0
    (rules,) = [
        e
        for e in synced.account_data_events  # type: ignore[attr-defined]
        if isinstance(e, nio.PushRulesEvent)
    ]
    assert [r.id for r in rules.global_rules.room] == [room]
