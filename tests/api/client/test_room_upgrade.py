"""POST /rooms/{roomId}/upgrade from the outside: the tombstone clients see,
the new room with its predecessor and copied state, aliases and directory
listing moved, members invited, bans kept, the old room restricted; and the
refusals."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.helpers import CS, MatrixClient, User


def upgrade_path(room: str) -> str:
    return f"{CS}/rooms/{room}/upgrade"


async def state_map(user: User, room: str) -> dict[tuple[str, str], dict[str, Any]]:
    events = await user.call("GET", f"{CS}/rooms/{room}/state")
    return {(e["type"], e["state_key"]): e for e in events}


async def test_upgrade_moves_aliases_invites_members_and_tombstones(
    client: MatrixClient,
) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    dave = await client.register("dave")
    acl = {"allow": ["*"], "deny": ["evil.example"], "allow_ip_literals": False}
    old = await alice.create_room(
        preset="public_chat",
        room_version="11",
        room_alias_name="hall",
        name="Hall",
        topic="all things",
        visibility="public",
        initial_state=[
            {"type": "m.room.guest_access", "content": {"guest_access": "can_join"}},
            {"type": "m.room.avatar", "content": {"url": "mxc://hs.test/abc"}},
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            {"type": "m.room.server_acl", "content": acl},
            {"type": "com.example.custom", "content": {"stays": True}},
        ],
    )
    for u in (bob, carol, dave):
        await u.membership(old, "join")
    await alice.membership(old, "ban", user_id=dave.user_id, reason="spam")
    since = (await bob.call("GET", f"{CS}/sync"))["next_batch"]
    old_state = await state_map(alice, old)

    new = (await alice.call("POST", upgrade_path(old), {"new_version": "12"}))["replacement_room"]
    assert new != old
    st = await state_map(alice, new)
    create = st[("m.room.create", "")]["content"]
    assert create["room_version"] == "12" and create["predecessor"]["room_id"] == old
    for key in (
        "m.room.name",
        "m.room.topic",
        "m.room.avatar",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.guest_access",
        "m.room.encryption",
        "m.room.server_acl",
        "m.room.canonical_alias",
    ):
        assert st[(key, "")]["content"] == old_state[(key, "")]["content"], key
    assert ("com.example.custom", "") not in st
    pl = st[("m.room.power_levels", "")]["content"]
    old_pl = old_state[("m.room.power_levels", "")]["content"]
    # v12: the upgrader is the new room's creator, never listed in users
    assert alice.user_id not in pl["users"]
    assert {k: v for k, v in pl.items() if k != "users"} == {
        k: v for k, v in old_pl.items() if k != "users"
    }
    # members invited, bans kept
    assert st[("m.room.member", bob.user_id)]["content"]["membership"] == "invite"
    assert st[("m.room.member", carol.user_id)]["content"]["membership"] == "invite"
    assert st[("m.room.member", dave.user_id)]["content"]["membership"] == "ban"
    # aliases and the directory listing moved
    resolved = await bob.call("GET", f"{CS}/directory/room/{quote('#hall:hs.test')}")
    assert resolved["room_id"] == new
    assert (await alice.call("GET", f"{CS}/rooms/{new}/aliases"))["aliases"] == ["#hall:hs.test"]
    assert (await alice.call("GET", f"{CS}/rooms/{old}/aliases"))["aliases"] == []
    assert (await bob.call("GET", f"{CS}/directory/list/room/{new}"))["visibility"] == "public"
    assert (await bob.call("GET", f"{CS}/directory/list/room/{old}"))["visibility"] == "private"

    # the old room: tombstone, restricted levels, no canonical alias
    tomb = await bob.state(old, "m.room.tombstone")
    assert tomb["replacement_room"] == new and tomb["body"]
    restricted = await bob.state(old, "m.room.power_levels")
    assert restricted["events_default"] == 50 and restricted["invite"] == 50
    assert await bob.state(old, "m.room.canonical_alias") == {}
    refused = await bob.send(old, "still here?", expect=403)
    assert refused["errcode"] == "M_FORBIDDEN"

    # what bob's client sees: the tombstone in the old room, the invite to the new
    s = await bob.call("GET", f"{CS}/sync?since={since}")
    timeline = s["rooms"]["join"][old]["timeline"]["events"]
    tombs = [e for e in timeline if e["type"] == "m.room.tombstone"]
    assert tombs and tombs[0]["content"]["replacement_room"] == new
    assert new in s["rooms"]["invite"]
    await bob.membership(new, "join")
    assert await bob.send(new, "moved in")


async def test_upgrade_refusals(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    mallory = await client.register("mallory")
    room = await alice.create_room(preset="public_chat")
    await bob.membership(room, "join")
    r = await alice.call("POST", upgrade_path(room), {"new_version": "99"}, expect=400)
    assert r["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    r = await bob.call("POST", upgrade_path(room), {"new_version": "12"}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    r = await mallory.call("POST", upgrade_path(room), {"new_version": "12"}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    r = await alice.call("POST", upgrade_path(room), {}, expect=400)
    assert r["errcode"] == "M_MISSING_PARAM"
    r = await alice.call("POST", upgrade_path(room), {"new_version": 12}, expect=400)
    assert r["errcode"] == "M_BAD_JSON"
    r = await alice.call(
        "POST",
        upgrade_path(room),
        {"new_version": "12", "additional_creators": ["not a user"]},
        expect=400,
    )
    assert r["errcode"] == "M_INVALID_PARAM"
    r = await alice.call("POST", upgrade_path(room), raw=b"{nope", expect=400)
    assert r["errcode"] == "M_NOT_JSON"
    r = await alice.call("POST", upgrade_path("not-a-room"), {"new_version": "12"}, expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    # nothing was written by the refusals
    assert (await alice.call("GET", f"{CS}/joined_rooms"))["joined_rooms"] == [room]


async def test_moderator_upgrade_gets_power_for_the_copy_only(client: MatrixClient) -> None:
    """A user allowed to tombstone but not to set every copied state event:
    the new room ends with exactly the old levels (and the upgrader's own)."""
    alice = await client.register("alice")
    mod = await client.register("mod")
    room = await alice.create_room(
        preset="public_chat",
        room_version="11",
        power_level_content_override={
            "users": {"@mod:hs.test": 60},
            "events": {"m.room.tombstone": 60, "m.room.server_acl": 100},
        },
        initial_state=[{"type": "m.room.server_acl", "content": {"allow": ["*"]}}],
    )
    await mod.membership(room, "join")
    new = (await mod.call("POST", upgrade_path(room), {"new_version": "11"}))["replacement_room"]
    st = await state_map(mod, new)
    old_pl = await alice.state(room, "m.room.power_levels")
    new_pl = st[("m.room.power_levels", "")]["content"]
    assert new_pl["users"] == {alice.user_id: 100, mod.user_id: 60}
    assert new_pl["events"] == old_pl["events"]
    assert st[("m.room.server_acl", "")]["content"] == {"allow": ["*"]}
    assert st[("m.room.member", alice.user_id)]["content"]["membership"] == "invite"
    # mod may not change the old levels (power_levels needs 100): they stay
    assert (await alice.state(room, "m.room.tombstone"))["replacement_room"] == new
    assert old_pl.get("events_default", 0) == 0


async def test_upgrade_from_v12_gives_the_creator_a_listed_level(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room(preset="private_chat", room_version="12")
    new = (await alice.call("POST", upgrade_path(room), {"new_version": "11"}))["replacement_room"]
    pl = await alice.state(new, "m.room.power_levels")
    assert pl["users"][alice.user_id] == 100
    assert await alice.send(new, "works")


async def test_repeated_and_concurrent_upgrades_make_one_room(client: MatrixClient) -> None:
    """A client retrying (or double-clicking) gets the same replacement."""
    import asyncio

    alice = await client.register("alice")
    room = await alice.create_room(preset="public_chat")
    body = {"new_version": "12"}
    answers = await asyncio.gather(
        *(alice.call("POST", upgrade_path(room), body) for _ in range(3))
    )
    again = await alice.call("POST", upgrade_path(room), body)
    assert len({a["replacement_room"] for a in [*answers, again]}) == 1
    joined = (await alice.call("GET", f"{CS}/joined_rooms"))["joined_rooms"]
    assert sorted(joined) == sorted([room, again["replacement_room"]])
