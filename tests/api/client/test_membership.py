"""Membership transitions and their refusals."""

from __future__ import annotations

from tests.helpers import CS, MatrixClient


async def test_invite_only_room(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room()  # private_chat: invite only
    r = await bob.call("POST", f"{CS}/rooms/{room}/join", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    await alice.call("POST", f"{CS}/rooms/{room}/invite", {"user_id": bob.user_id})
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    assert (await bob.state(room, "m.room.member", bob.user_id))["membership"] == "join"


async def test_invitee_rejects_with_reason(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room()
    await alice.call(
        "POST", f"{CS}/rooms/{room}/invite", {"user_id": bob.user_id, "reason": "come"}
    )
    assert (await alice.state(room, "m.room.member", bob.user_id))["reason"] == "come"
    await bob.call("POST", f"{CS}/rooms/{room}/leave", {"reason": "busy"})
    m = await alice.state(room, "m.room.member", bob.user_id)
    assert m["membership"] == "leave" and m["reason"] == "busy"
    r = await bob.call("POST", f"{CS}/rooms/{room}/join", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_revoked_invite_cannot_join(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room()
    await alice.call("POST", f"{CS}/rooms/{room}/invite", {"user_id": bob.user_id})
    await alice.call(
        "POST", f"{CS}/rooms/{room}/kick", {"user_id": bob.user_id, "reason": "revoked"}
    )
    m = await alice.state(room, "m.room.member", bob.user_id)
    assert m["membership"] == "leave" and m["reason"] == "revoked"
    r = await bob.call("POST", f"{CS}/rooms/{room}/join", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_kick_ban_unban_and_power(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    await carol.call("POST", f"{CS}/join/{room}", {})
    # bob has no power to kick or ban
    r = await bob.call("POST", f"{CS}/rooms/{room}/kick", {"user_id": carol.user_id}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    r = await bob.call("POST", f"{CS}/rooms/{room}/ban", {"user_id": carol.user_id}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    # alice kicks carol; carol can rejoin a public room
    await alice.call(
        "POST", f"{CS}/rooms/{room}/kick", {"user_id": carol.user_id, "reason": "cool off"}
    )
    assert (await alice.state(room, "m.room.member", carol.user_id))["membership"] == "leave"
    await carol.call("POST", f"{CS}/join/{room}", {})
    # banned: cannot rejoin
    await alice.call("POST", f"{CS}/rooms/{room}/ban", {"user_id": carol.user_id, "reason": "spam"})
    r = await carol.call("POST", f"{CS}/join/{room}", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    r = await carol.send(room, "let me in", expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    # unban → leave; then she may join again
    await alice.call("POST", f"{CS}/rooms/{room}/unban", {"user_id": carol.user_id})
    await carol.call("POST", f"{CS}/join/{room}", {})
    r = await alice.call("POST", f"{CS}/rooms/{room}/unban", {"user_id": bob.user_id}, expect=403)
    assert r["errcode"] == "M_BAD_STATE"
    # kicking someone not in the room is refused
    dave = await client.register("dave")
    r = await alice.call("POST", f"{CS}/rooms/{room}/kick", {"user_id": dave.user_id}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_join_by_alias_and_leave_forget(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat", room_alias_name="hall")
    r = await bob.call("POST", f"{CS}/join/%23hall:hs.test", {})
    assert r["room_id"] == room
    r = await bob.call("POST", f"{CS}/join/%23nope:hs.test", {}, expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    r = await bob.call("POST", f"{CS}/rooms/{room}/forget", {}, expect=400)
    await bob.call("POST", f"{CS}/rooms/{room}/leave", {})
    await bob.call("POST", f"{CS}/rooms/{room}/forget", {})
    assert room not in (await bob.call("GET", f"{CS}/joined_rooms"))["joined_rooms"]


async def test_knock(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(
        initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
    )
    await bob.call("POST", f"{CS}/knock/{room}", {"reason": "let me in"})
    m = await alice.state(room, "m.room.member", bob.user_id)
    assert m["membership"] == "knock"
    await alice.call("POST", f"{CS}/rooms/{room}/invite", {"user_id": bob.user_id})
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    # knocking on an invite-only room is refused
    room2 = await alice.create_room()
    r = await bob.call("POST", f"{CS}/knock/{room2}", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_per_room_nickname_and_profile_propagation(client: MatrixClient) -> None:
    alice = await client.register("alice")
    r1 = await alice.create_room()
    r2 = await alice.create_room()
    await alice.put_state(
        r1, "m.room.member", {"membership": "join", "displayname": "Al"}, alice.user_id
    )
    assert (await alice.state(r1, "m.room.member", alice.user_id))["displayname"] == "Al"
    await alice.call(
        "PUT", f"{CS}/profile/{alice.user_id}/displayname", {"displayname": "Alice A."}
    )
    assert (await client.call("GET", f"{CS}/profile/{alice.user_id}/displayname"))[
        "displayname"
    ] == "Alice A."
    for room in (r1, r2):
        m = await alice.state(room, "m.room.member", alice.user_id)
        assert m["displayname"] == "Alice A." and m["membership"] == "join"
    r = await client.call("GET", f"{CS}/profile/@nobody:hs.test", expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    # changing another user's membership through /state is refused
    bob = await client.register("bob")
    r = await alice.put_state(r1, "m.room.member", {"membership": "join"}, bob.user_id, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_dm_lookup_and_account_data(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(
        preset="trusted_private_chat", invite=[bob.user_id], is_direct=True
    )
    direct = await alice.call("GET", f"{CS}/user/{alice.user_id}/account_data/m.direct")
    assert direct == {bob.user_id: [room]}
    r = await alice.call("GET", f"/_homeserver/client/v1/dm/{bob.user_id}")
    assert r["rooms"] == [room]
    r = await bob.call("GET", f"/_homeserver/client/v1/dm/{alice.user_id}")
    assert r["rooms"] == [room]  # from the is_direct invite
    await bob.call("POST", f"{CS}/rooms/{room}/leave", {})
    r = await bob.call("GET", f"/_homeserver/client/v1/dm/{alice.user_id}")
    assert r["rooms"] == []
    await alice.call("PUT", f"{CS}/user/{alice.user_id}/rooms/{room}/account_data/x.tag", {"a": 1})
    assert await alice.call(
        "GET", f"{CS}/user/{alice.user_id}/rooms/{room}/account_data/x.tag"
    ) == {"a": 1}
    r = await bob.call("GET", f"{CS}/user/{alice.user_id}/account_data/m.direct", expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_aliases_and_directory(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await alice.call("PUT", f"{CS}/directory/room/%23extra:hs.test", {"room_id": room})
    r = await alice.call(
        "PUT", f"{CS}/directory/room/%23extra:hs.test", {"room_id": room}, expect=409
    )
    assert (await alice.call("GET", f"{CS}/rooms/{room}/aliases"))["aliases"] == ["#extra:hs.test"]
    r = await bob.call("DELETE", f"{CS}/directory/room/%23extra:hs.test", expect=403)
    await alice.call("DELETE", f"{CS}/directory/room/%23extra:hs.test")
    r = await client.call("GET", f"{CS}/directory/room/%23extra:hs.test", expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    assert (await client.call("GET", f"{CS}/directory/list/room/{room}"))["visibility"] == "private"
    await alice.call("PUT", f"{CS}/directory/list/room/{room}", {"visibility": "public"})
    assert (await client.call("GET", f"{CS}/directory/list/room/{room}"))["visibility"] == "public"
    pub = await bob.call("POST", f"{CS}/publicRooms", {"filter": {"generic_search_term": "zzz"}})
    assert pub["chunk"] == []


async def test_delete_room_by_owner_and_admin(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat", room_alias_name="gone")
    await bob.call("POST", f"{CS}/join/{room}", {})
    r = await bob.call("POST", f"/_homeserver/client/v1/rooms/{room}/delete", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    out = await alice.call(
        "POST", f"/_homeserver/client/v1/rooms/{room}/delete", {"reason": "closing"}
    )
    assert set(out["kicked_users"]) == {alice.user_id, bob.user_id}
    m = await bob.state(room, "m.room.member", bob.user_id)
    assert m["membership"] == "leave" and m["reason"] == "closing"
    r = await bob.call("POST", f"{CS}/join/{room}", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    r = await client.call("GET", f"{CS}/directory/room/%23gone:hs.test", expect=404)
    # the operator API: non-admins refused
    r = await alice.call("GET", "/_homeserver/admin/v1/rooms", expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_revoke_endpoint(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room()
    await alice.call("POST", f"{CS}/rooms/{room}/invite", {"user_id": bob.user_id})
    await alice.call(
        "POST",
        f"/_homeserver/client/v1/rooms/{room}/revoke",
        {"user_id": bob.user_id, "reason": "changed my mind"},
    )
    m = await alice.state(room, "m.room.member", bob.user_id)
    assert m["membership"] == "leave" and m["reason"] == "changed my mind"
    await alice.call("POST", f"{CS}/rooms/{room}/invite", {"user_id": bob.user_id})
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    r = await alice.call(
        "POST", f"/_homeserver/client/v1/rooms/{room}/revoke", {"user_id": bob.user_id}, expect=403
    )
    assert r["errcode"] == "M_BAD_STATE"
    assert (await alice.state(room, "m.room.member", bob.user_id))["membership"] == "join"
