"""Membership across two processes of our server, in both directions: the
room's host server and the guest's server swap roles."""

from __future__ import annotations

import uuid

import pytest

from tests.federation.conftest import Pair
from tests.federation.harness import CS, Client, MatrixError, eventually, q, state_map


def rooms_of(sync: dict, kind: str) -> dict:
    return sync.get("rooms", {}).get(kind, {})  # Synapse leaves out empty sections


def uniq(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


@pytest.fixture(params=["a_hosts", "b_hosts"])
async def sides(request: pytest.FixtureRequest, pair: Pair) -> tuple[Client, Client]:
    """(host user, guest user): the host's server holds the room first."""
    host_srv, guest_srv = (pair.a, pair.b) if request.param == "a_hosts" else (pair.b, pair.a)
    host = await pair.client(host_srv).register(uniq("host"))
    guest = await pair.client(guest_srv).register(uniq("guest"))
    return host, guest


async def same_view(host: Client, guest: Client, room: str) -> None:
    """Both servers report the same state and joined members."""
    want = state_map(await host.state(room))
    await eventually(lambda: guest.state(room), lambda s: state_map(s) == want)
    assert await host.joined_members(room) == await guest.joined_members(room)


async def membership_is(c: Client, room: str, user: str, m: str | None) -> None:
    await eventually(lambda: c.membership_of(room, user), lambda got: got == m)


async def test_join_by_alias(sides: tuple[Client, Client]) -> None:
    host, guest = sides
    local = uniq("alias")
    room = await host.create_room(preset="public_chat", room_alias_name=local)
    alias = f"#{local}:{host.server_name}"
    r = await guest.join(alias)
    assert r["room_id"] == room
    await guest.send(room, "joined by alias")
    await eventually(lambda: host.bodies(room), lambda b: "joined by alias" in b)
    await same_view(host, guest, room)


async def test_invite_then_join_and_leave(sides: tuple[Client, Client]) -> None:
    host, guest = sides
    room = await host.create_room(preset="private_chat", name="invite only")
    await host.membership(room, "invite", user_id=guest.user_id)
    sync = await eventually(guest.sync, lambda s: room in rooms_of(s, "invite"))
    names = [e for e in rooms_of(sync, "invite")[room]["invite_state"]["events"]]
    assert any(e["type"] == "m.room.name" for e in names)
    await guest.join(room)
    await membership_is(host, room, guest.user_id, "join")
    await same_view(host, guest, room)
    await guest.membership(room, "leave")
    await membership_is(host, room, guest.user_id, "leave")
    assert guest.user_id not in await host.joined_members(room)


async def test_reject_invite_with_reason(sides: tuple[Client, Client]) -> None:
    host, guest = sides
    room = await host.create_room(preset="private_chat")
    await host.membership(room, "invite", user_id=guest.user_id)
    await eventually(guest.sync, lambda s: room in rooms_of(s, "invite"))
    await guest.membership(room, "leave", reason="no thanks")
    ev = await eventually(
        lambda: host.state_event(room, "m.room.member", guest.user_id),
        lambda c: c.get("membership") == "leave",
    )
    assert ev["reason"] == "no thanks"
    s = await guest.sync()
    assert room not in rooms_of(s, "invite")


async def test_kick_ban_refused_rejoin_unban(sides: tuple[Client, Client]) -> None:
    host, guest = sides
    room = await host.create_room(preset="public_chat")
    await guest.join(room, [host.server_name])
    await membership_is(host, room, guest.user_id, "join")
    await host.membership(room, "kick", user_id=guest.user_id, reason="out")
    await membership_is(guest, room, guest.user_id, "leave")
    await guest.join(room, [host.server_name])
    await membership_is(host, room, guest.user_id, "join")
    await host.membership(room, "ban", user_id=guest.user_id, reason="banned")
    # (Synapse answers banned users 403 rather than their ban event.)
    await eventually(
        lambda: guest.call(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(guest.user_id)}", expect=None
        ),
        lambda r: r.get("membership") == "ban" or r["_status"] == 403,
    )
    with pytest.raises(MatrixError) as e:
        await guest.join(room, [host.server_name])
    assert e.value.status == 403
    await host.membership(room, "unban", user_id=guest.user_id)
    await membership_is(host, room, guest.user_id, "leave")
    await guest.join(room, [host.server_name])
    await membership_is(host, room, guest.user_id, "join")
    await same_view(host, guest, room)


async def test_admin_only_invites_bind_the_other_server(sides: tuple[Client, Client]) -> None:
    """A conference room's invites are for the owner and admins (the invite
    power level), so the guest's own server refuses the guest's invite; the
    room config's allow_invites opens it, on both servers alike."""
    host, guest = sides
    friend = await host.register(uniq("friend"))  # on the host's server
    room = await host.create_room(creation_content={"io.homeserver.kind": "conference"})
    await host.membership(room, "invite", user_id=guest.user_id)
    await eventually(guest.sync, lambda s: room in rooms_of(s, "invite"))
    await guest.join(room, [host.server_name])
    await membership_is(host, room, guest.user_id, "join")
    with pytest.raises(MatrixError) as e:
        await guest.membership(room, "invite", user_id=friend.user_id)
    # (was a 500: the refusal of an invite to another server went unmapped)
    assert e.value.status == 403 and e.value.body["errcode"] == "M_FORBIDDEN"
    cfg = await host.call(
        "PUT", f"/_homeserver/client/v1/rooms/{q(room)}/config", {"allow_invites": True}
    )
    assert cfg["allow_invites"] is True
    await eventually(
        lambda: guest.state_event(room, "m.room.power_levels"), lambda pl: pl["invite"] == 0
    )
    await guest.membership(room, "invite", user_id=friend.user_id)
    await membership_is(host, room, friend.user_id, "invite")


async def test_remote_moderator_kicks_local_user(pair: Pair) -> None:
    """A moderator on B kicks and bans a user of A, in a room A created."""
    owner = await pair.client(pair.a).register(uniq("owner"))
    local = await pair.client(pair.a).register(uniq("local"))
    mod = await pair.client(pair.b).register(uniq("mod"))
    room = await owner.create_room(preset="public_chat")
    await local.join(room)
    await mod.join(room, [pair.a.server_name])
    pl = await owner.state_event(room, "m.room.power_levels")
    pl["users"][mod.user_id] = 50
    await owner.put_state(room, "m.room.power_levels", pl)
    await eventually(
        lambda: mod.state_event(room, "m.room.power_levels"),
        lambda c: c["users"].get(mod.user_id) == 50,
    )
    await membership_is(mod, room, local.user_id, "join")
    await mod.membership(room, "kick", user_id=local.user_id)
    await membership_is(owner, room, local.user_id, "leave")
    await local.join(room)
    await membership_is(mod, room, local.user_id, "join")
    await mod.membership(room, "ban", user_id=local.user_id)
    await membership_is(owner, room, local.user_id, "ban")
    with pytest.raises(MatrixError):
        await local.join(room)
    await same_view(owner, mod, room)


async def test_knock_then_accept(sides: tuple[Client, Client]) -> None:
    host, guest = sides
    room = await host.create_room(
        preset="private_chat",
        initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
    )
    await guest.knock(room, [host.server_name], reason="let me in")
    await membership_is(host, room, guest.user_id, "knock")
    s = await guest.sync()
    assert room in rooms_of(s, "knock")
    await host.membership(room, "invite", user_id=guest.user_id)
    await eventually(guest.sync, lambda s: room in rooms_of(s, "invite"))
    await guest.join(room)
    await membership_is(host, room, guest.user_id, "join")
    await same_view(host, guest, room)


async def test_direct_message_carries_is_direct(sides: tuple[Client, Client]) -> None:
    host, guest = sides
    room = await host.create_room(
        preset="trusted_private_chat", is_direct=True, invite=[guest.user_id]
    )
    sync = await eventually(guest.sync, lambda s: room in rooms_of(s, "invite"))
    events = rooms_of(sync, "invite")[room]["invite_state"]["events"]
    mine = [e for e in events if e["type"] == "m.room.member" and e["state_key"] == guest.user_id]
    assert mine and mine[0]["content"].get("is_direct") is True
    await guest.join(room)
    await membership_is(host, room, guest.user_id, "join")
    await same_view(host, guest, room)


async def test_profile_and_directory_queries(pair: Pair) -> None:
    a = await pair.client(pair.a).register(uniq("prof"))
    await a.call("PUT", f"{CS}/profile/{q(a.user_id)}/displayname", {"displayname": "Prof A"})
    b = await pair.client(pair.b).register(uniq("asker"))
    r = await b.call("GET", f"{CS}/profile/{q(a.user_id)}", expect=None)
    assert r.get("displayname") == "Prof A" or r["_status"] == 404  # client proxying is optional
    with pytest.raises(MatrixError) as e:
        await b.join(f"#nope{uuid.uuid4().hex[:4]}:{pair.a.server_name}")
    assert e.value.status == 404
