"""Room kinds and lifecycle: one DM per pair, upgrade to group, invitations
with expiry, capacity, room config, archived rooms, transient purge, the
operator API."""

from __future__ import annotations

import asyncio

import pytest

from homeserver.config import Config
from tests.helpers import CS, MatrixClient, make_config

HS = "/_homeserver/client/v1"


async def test_one_dm_per_pair_under_race(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")

    async def open_dm(i: int) -> str:
        u, other = (alice, bob) if i % 2 else (bob, alice)
        r = await u.call("POST", f"{HS}/dm", {"user_id": other.user_id})
        return str(r["room_id"])

    rooms = await asyncio.gather(*(open_dm(i) for i in range(20)))
    assert len(set(rooms)) == 1
    room = rooms[0]
    # both end up joined (the invited side joins when it calls)
    assert (await alice.state(room, "m.room.member", bob.user_id))["membership"] == "join"
    direct_a = await alice.call("GET", f"{CS}/user/{alice.user_id}/account_data/m.direct")
    direct_b = await bob.call("GET", f"{CS}/user/{bob.user_id}/account_data/m.direct")
    assert direct_a[bob.user_id] == [room] and direct_b[alice.user_id] == [room]
    assert (await alice.call("GET", f"{HS}/dm/{bob.user_id}"))["rooms"] == [room]


async def test_dm_reopened_after_partner_left(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = (await alice.call("POST", f"{HS}/dm", {"user_id": bob.user_id}))["room_id"]
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    await bob.call("POST", f"{CS}/rooms/{room}/leave", {})
    r = await alice.call("POST", f"{HS}/dm", {"user_id": bob.user_id})
    assert r["room_id"] == room and r["created"] is False
    assert (await alice.state(room, "m.room.member", bob.user_id))["membership"] == "invite"
    # bob asking again joins him back into the same room
    r = await bob.call("POST", f"{HS}/dm", {"user_id": alice.user_id})
    assert r["room_id"] == room
    assert (await alice.state(room, "m.room.member", bob.user_id))["membership"] == "join"


async def test_upgrade_one_to_one_to_group(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    room = (await alice.call("POST", f"{HS}/dm", {"user_id": bob.user_id}))["room_id"]
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    for i in range(4):
        await (alice if i % 2 else bob).send(room, f"line {i}")
    r = await alice.call(
        "POST",
        f"{HS}/rooms/{room}/upgrade_to_group",
        {"invite": [carol.user_id], "copy_history": 3},
    )
    group = r["room_id"]
    assert group != room and r["copied_messages"] == 3
    create = await alice.state(group, "m.room.create")
    assert create["predecessor"]["room_id"] == room
    # room v12: the creator is the sender, no creator key on either path
    assert "creator" not in create
    assert "creator" not in await alice.state(room, "m.room.create")
    members = await alice.call("GET", f"{CS}/rooms/{group}/members")
    got = {e["state_key"]: e["content"]["membership"] for e in members["chunk"]}
    assert got == {alice.user_id: "join", bob.user_id: "invite", carol.user_id: "invite"}
    msgs = await alice.call("GET", f"{CS}/rooms/{group}/messages?dir=f&limit=50")
    copied = [e["content"]["body"] for e in msgs["chunk"] if e["type"] == "m.room.message"]
    assert len(copied) == 3 and "> line 1" in copied[0] and "> line 3" in copied[2]
    # the pair's room is still usable
    await bob.send(room, "still here")


async def test_invite_with_comment_expiry_and_listing(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(name="Plans", topic="weekend")
    await alice.call(
        "POST",
        f"{CS}/rooms/{room}/invite",
        {"user_id": bob.user_id, "reason": "join us", "expires_in_ms": 400},
    )
    inv = (await bob.call("GET", f"{HS}/invites"))["invites"]
    assert len(inv) == 1
    assert inv[0]["room_id"] == room and inv[0]["inviter"] == alice.user_id
    assert inv[0]["name"] == "Plans" and inv[0]["topic"] == "weekend"
    assert inv[0]["reason"] == "join us" and inv[0]["member_count"] == 1
    assert "expires_ts" in inv[0] and inv[0]["age_ms"] >= 0
    for _ in range(50):
        await asyncio.sleep(0.1)
        m = await alice.state(room, "m.room.member", bob.user_id)
        if m["membership"] == "leave":
            break
    assert m["membership"] == "leave" and m["reason"] == "invite expired"
    r = await bob.call("POST", f"{CS}/rooms/{room}/join", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    assert (await bob.call("GET", f"{HS}/invites"))["invites"] == []


async def test_decline_silently_or_with_message(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    r1 = await alice.create_room(invite=[bob.user_id])
    r2 = await alice.create_room(invite=[bob.user_id])
    await bob.call("POST", f"{CS}/rooms/{r1}/leave", {})
    await bob.call("POST", f"{CS}/rooms/{r2}/leave", {"reason": "not now, thanks"})
    assert "reason" not in await alice.state(r1, "m.room.member", bob.user_id)
    assert (await alice.state(r2, "m.room.member", bob.user_id))["reason"] == "not now, thanks"


async def test_capacity_and_config(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    room = await alice.create_room(preset="public_chat")
    cfg = await alice.call("PUT", f"{HS}/rooms/{room}/config", {"max_members": 2})
    assert cfg["max_members"] == 2 and cfg["public"] is True and cfg["members_only"] is False
    await bob.call("POST", f"{CS}/join/{room}", {})
    r = await carol.call("POST", f"{CS}/join/{room}", {}, expect=403)
    assert r["errcode"] == "IO.HOMESERVER.ROOM_FULL"
    cfg = await alice.call(
        "PUT", f"{HS}/rooms/{room}/config", {"moderated": True, "members_only": True}
    )
    assert cfg["moderated"] is True and cfg["members_only"] is True and cfg["public"] is False
    r = await bob.send(room, "may I speak?", expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    await alice.send(room, "I may")
    assert (await bob.call("GET", f"{HS}/rooms/{room}/config"))["moderated"] is True
    r = await bob.call("PUT", f"{HS}/rooms/{room}/config", {"moderated": False}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_archived_rooms(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(
        preset="public_chat", name="Club", creation_content={"io.homeserver.kind": "persistent"}
    )
    await bob.call("POST", f"{CS}/join/{room}", {})
    await bob.call("POST", f"{CS}/rooms/{room}/leave", {})
    arch = (await bob.call("GET", f"{HS}/rooms/archived"))["rooms"]
    assert [a["room_id"] for a in arch] == [room]
    assert arch[0]["name"] == "Club" and arch[0]["can_rejoin"] is True
    await bob.call("POST", f"{CS}/rooms/{room}/forget", {})
    assert (await bob.call("GET", f"{HS}/rooms/archived"))["rooms"] == []


async def test_public_kind_is_published(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room(
        room_alias_name="plaza",
        preset="public_chat",
        creation_content={"io.homeserver.kind": "public"},
    )
    pub = await client.call("GET", f"{CS}/publicRooms")
    assert room in [c["room_id"] for c in pub["chunk"]]
    r = await alice.call(
        "POST",
        f"{CS}/createRoom",
        {"creation_content": {"io.homeserver.kind": "weird"}},
        expect=400,
    )
    assert r["errcode"] == "M_BAD_JSON"


@pytest.fixture
def config(tmp_path) -> Config:  # type: ignore[no-untyped-def]
    return make_config(
        tmp_path,
        admins=["@admin:hs.test"],
        **{
            "rooms.transient_purge_after_ms": 100,
            # test_public_kind_is_published reads /publicRooms without a token
            "directory.allow_public_rooms_without_auth": True,
        },
    )


async def test_transient_room_purged_after_last_leaves(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room(creation_content={"io.homeserver.kind": "transient"})
    await alice.send(room, "ephemeral")
    keep = await alice.create_room(creation_content={"io.homeserver.kind": "persistent"})
    await alice.call("POST", f"{CS}/rooms/{room}/leave", {})
    await alice.call("POST", f"{CS}/rooms/{keep}/leave", {})
    admin = await client.register("admin")
    for _ in range(60):
        await asyncio.sleep(0.1)
        r = await admin.call("GET", f"/_homeserver/admin/v1/rooms/{room}")
        if r["joined_members"] is None:
            break
    details = await admin.call("GET", f"/_homeserver/admin/v1/rooms/{room}")
    assert details["joined_members"] is None  # projections and history gone
    msgs = await admin.call("GET", f"/_homeserver/admin/v1/rooms/{room}/state")
    assert msgs["state"] == []
    kept = await admin.call("GET", f"/_homeserver/admin/v1/rooms/{keep}/state")
    assert kept["state"] != []


async def test_operator_api(client: MatrixClient) -> None:
    admin = await client.register("admin")
    alice = await client.register("alice")
    bob = await client.register("bob")
    r1 = await alice.create_room(name="Alpha", preset="public_chat")
    r2 = await alice.create_room(name="Beta")
    await bob.call("POST", f"{CS}/join/{r1}", {})
    out = await admin.call("GET", "/_homeserver/admin/v1/rooms?order_by=name")
    assert [r["name"] for r in out["rooms"]] == ["Alpha", "Beta"]
    out = await admin.call("GET", "/_homeserver/admin/v1/rooms?order_by=joined_members&dir=b")
    assert out["rooms"][0]["room_id"] == r1 and out["rooms"][0]["joined_members"] == 2
    out = await admin.call("GET", "/_homeserver/admin/v1/rooms?search_term=bet")
    assert [r["room_id"] for r in out["rooms"]] == [r2]
    out = await admin.call("GET", "/_homeserver/admin/v1/rooms?limit=1")
    assert len(out["rooms"]) == 1 and out["next_batch"] == 1 and out["total_rooms"] == 2
    members = await admin.call("GET", f"/_homeserver/admin/v1/rooms/{r1}/members")
    assert {m["user_id"] for m in members["members"]} == {alice.user_id, bob.user_id}
    await admin.call("POST", f"/_homeserver/admin/v1/rooms/{r2}/members", {"user_id": bob.user_id})
    assert (await bob.state(r2, "m.room.member", bob.user_id))["membership"] == "join"
    out = await admin.call(
        "DELETE", f"/_homeserver/admin/v1/rooms/{r2}", {"purge": True, "reason": "cleanup"}
    )
    assert out["purged_events"] > 0
    r = await bob.call("POST", f"{CS}/join/{r2}", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    r = await alice.call("GET", "/_homeserver/admin/v1/rooms", expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_admin_actions_are_audited(client: MatrixClient, db) -> None:  # type: ignore[no-untyped-def]
    admin = await client.register("admin")
    await admin.call("GET", "/_homeserver/admin/v1/rooms")
    rows = await db.fetch("SELECT admin, action FROM admin_audit")
    assert [(r["admin"], r["action"]) for r in rows] == [("@admin:hs.test", "list_rooms")]
