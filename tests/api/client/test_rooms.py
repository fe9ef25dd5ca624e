"""createRoom and its options, sending, state, redaction, reading."""

from __future__ import annotations

import pytest

from tests.helpers import CS, MatrixClient


async def test_create_room_defaults_and_state(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room(name="Lobby", topic="hello")
    assert room.startswith("!")
    assert (await alice.state(room, "m.room.name"))["name"] == "Lobby"
    assert (await alice.state(room, "m.room.topic"))["topic"] == "hello"
    create = await alice.state(room, "m.room.create")
    assert create["room_version"] == "12"
    jr = await alice.state(room, "m.room.join_rules")
    assert jr["join_rule"] == "invite"  # private_chat by default
    state = await alice.call("GET", f"{CS}/rooms/{room}/state")
    types = [e["type"] for e in state]
    for t in (
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
        "m.room.topic",
    ):
        assert t in types
    pl = await alice.state(room, "m.room.power_levels")
    # v12: the creator has unlimited power and is not listed in users
    assert alice.user_id not in pl["users"]
    full = await alice.call("GET", f"{CS}/rooms/{room}/state/m.room.name/?format=event")
    assert full["type"] == "m.room.name" and full["sender"] == alice.user_id
    assert (await alice.call("GET", f"{CS}/joined_rooms"))["joined_rooms"] == [room]


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_create_room_each_version(client: MatrixClient, version: str) -> None:
    alice = await client.register("alice")
    room = await alice.create_room(room_version=version, preset="public_chat")
    create = await alice.state(room, "m.room.create")
    assert create["room_version"] == version
    assert ("creator" in create) == (version == "10")
    pl = await alice.state(room, "m.room.power_levels")
    assert (alice.user_id in pl["users"]) == (version != "12")
    await alice.send(room, "hi")


async def test_create_room_errors(client: MatrixClient) -> None:
    alice = await client.register("alice")
    r = await alice.call("POST", f"{CS}/createRoom", {"room_version": "1"}, expect=400)
    assert r["errcode"] == "M_UNSUPPORTED_ROOM_VERSION"
    r = await alice.call("POST", f"{CS}/createRoom", {"room_version": 12}, expect=400)
    assert r["errcode"] == "M_BAD_JSON"
    r = await alice.call("POST", f"{CS}/createRoom", {"preset": "nope"}, expect=400)
    assert r["errcode"] == "M_BAD_JSON"
    r = await alice.call("POST", f"{CS}/createRoom", {"invite": ["not-a-user"]}, expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    await alice.create_room(room_alias_name="taken")
    r = await alice.call("POST", f"{CS}/createRoom", {"room_alias_name": "taken"}, expect=400)
    assert r["errcode"] == "M_ROOM_IN_USE"
    # nothing half-written: alice is in exactly one room
    assert len((await alice.call("GET", f"{CS}/joined_rooms"))["joined_rooms"]) == 1


# Reads GET /publicRooms without a token, which is off by default.
@pytest.mark.config({"directory.allow_public_rooms_without_auth": True})
async def test_create_room_options_precedence(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(
        preset="public_chat",
        visibility="public",
        room_alias_name="town",
        name="Name wins",
        initial_state=[
            {"type": "m.room.join_rules", "content": {"join_rule": "invite"}},
            {"type": "m.room.name", "content": {"name": "initial loses"}},
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            },
        ],
        creation_content={"m.federate": False, "io.homeserver.kind": "persistent"},
        power_level_content_override={"events": {"m.room.topic": 100}, "kick": 80},
        invite=[bob.user_id],
        is_direct=True,
    )
    assert (await alice.state(room, "m.room.join_rules"))["join_rule"] == "invite"
    assert (await alice.state(room, "m.room.name"))["name"] == "Name wins"
    assert (await alice.state(room, "m.room.history_visibility"))["history_visibility"] == "joined"
    assert (await alice.state(room, "m.room.create"))["m.federate"] is False
    alias = await alice.state(room, "m.room.canonical_alias")
    assert alias["alias"] == "#town:hs.test"
    pl = await alice.state(room, "m.room.power_levels")
    assert pl["events"]["m.room.topic"] == 100 and pl["events"]["m.room.name"] == 50
    assert pl["kick"] == 80
    member = await alice.state(room, "m.room.member", bob.user_id)
    assert member["membership"] == "invite" and member["is_direct"] is True
    r = await client.call("GET", f"{CS}/directory/room/%23town:hs.test")
    assert r["room_id"] == room and "hs.test" in r["servers"]
    pub = await client.call("GET", f"{CS}/publicRooms")
    assert [c["room_id"] for c in pub["chunk"]] == [room]
    assert pub["chunk"][0]["name"] == "Name wins"
    assert pub["chunk"][0]["canonical_alias"] == "#town:hs.test"
    assert pub["chunk"][0]["num_joined_members"] == 1


async def test_trusted_private_chat_gives_invitees_power(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room12 = await alice.create_room(preset="trusted_private_chat", invite=[bob.user_id])
    create = await alice.state(room12, "m.room.create")
    assert create["additional_creators"] == [bob.user_id]
    room11 = await alice.create_room(
        preset="trusted_private_chat", invite=[bob.user_id], room_version="11"
    )
    pl = await alice.state(room11, "m.room.power_levels")
    assert pl["users"][bob.user_id] == 100


async def test_send_txn_idempotent_and_messages(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    body = {"msgtype": "m.text", "body": "once"}
    a = await alice.call("PUT", f"{CS}/rooms/{room}/send/m.room.message/txn1", body)
    b = await alice.call("PUT", f"{CS}/rooms/{room}/send/m.room.message/txn1", body)
    assert a["event_id"] == b["event_id"]
    for i in range(5):
        await alice.send(room, f"m{i}")
    msgs = await alice.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=3")
    assert [e["content"].get("body") for e in msgs["chunk"]] == ["m4", "m3", "m2"]
    more = await alice.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=3&from={msgs['end']}")
    assert [e["content"].get("body") for e in more["chunk"]] == ["m1", "m0", "once"]
    bodies = [
        e["content"].get("body")
        for e in (await alice.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=100"))["chunk"]
    ]
    assert bodies.count("once") == 1
    fwd = await alice.call("GET", f"{CS}/rooms/{room}/messages?dir=f&limit=100")
    assert fwd["chunk"][0]["type"] == "m.room.create"
    assert "end" not in fwd
    flt = '{"types": ["m.room.message"]}'
    only = await alice.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=100&filter={flt}")
    assert {e["type"] for e in only["chunk"]} == {"m.room.message"}
    ev = await alice.call("GET", f"{CS}/rooms/{room}/event/{a['event_id']}")
    assert ev["content"]["body"] == "once" and ev["unsigned"]["transaction_id"] == "txn1"


async def test_redaction(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    eid = await bob.send(room, "secret")
    r = await alice.call("PUT", f"{CS}/rooms/{room}/redact/{eid}/r1", {"reason": "spam"})
    ev = await bob.call("GET", f"{CS}/rooms/{room}/event/{eid}")
    assert ev["content"] == {}
    assert ev["unsigned"]["redacted_because"]["event_id"] == r["event_id"]
    # bob (power 0) may not redact alice's message
    a_eid = await alice.send(room, "mine")
    r = await bob.call("PUT", f"{CS}/rooms/{room}/redact/{a_eid}/r2", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_unprivileged_cannot_rename_or_send_state(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    r = await bob.put_state(room, "m.room.name", {"name": "mine now"}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    assert (await alice.state(room, "m.room.name", expect=404))["errcode"] == "M_NOT_FOUND"
    await alice.put_state(room, "m.room.name", {"name": "ok"})
    assert (await bob.state(room, "m.room.name"))["name"] == "ok"


async def test_bad_input(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    r = await alice.call(
        "PUT", f"{CS}/rooms/{room}/send/m.room.message/t1", raw=b"nope", expect=400
    )
    assert r["errcode"] == "M_NOT_JSON"
    r = await alice.call("PUT", f"{CS}/rooms/not-a-room/send/m.room.message/t2", {}, expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    r = await alice.call(
        "PUT", f"{CS}/rooms/!unknown:hs.test/send/m.room.message/t3", {}, expect=403
    )
    assert r["errcode"] == "M_FORBIDDEN"
    big = {"msgtype": "m.text", "body": "x" * 70_000}
    r = await alice.call("PUT", f"{CS}/rooms/{room}/send/m.room.message/t4", big, expect=413)
    assert r["errcode"] == "M_TOO_LARGE"
    r = await alice.call(
        "PUT", f"{CS}/rooms/{room}/send/m.room.message/t5", raw=b'{"n": 1.5}', expect=400
    )
    assert r["errcode"] in ("M_BAD_JSON", "M_NOT_JSON")
    msgs = await alice.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=50")
    assert all(e["type"] != "m.room.message" for e in msgs["chunk"])
    r = await alice.call("GET", f"{CS}/rooms/{room}/messages?dir=x", expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"


async def test_members_and_joined_members(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    room = await alice.create_room(preset="public_chat", invite=[carol.user_id])
    await bob.call("POST", f"{CS}/join/{room}", {})
    members = await alice.call("GET", f"{CS}/rooms/{room}/members")
    got = {e["state_key"]: e["content"]["membership"] for e in members["chunk"]}
    assert got == {alice.user_id: "join", bob.user_id: "join", carol.user_id: "invite"}
    only = await alice.call("GET", f"{CS}/rooms/{room}/members?membership=invite")
    assert [e["state_key"] for e in only["chunk"]] == [carol.user_id]
    nots = await alice.call("GET", f"{CS}/rooms/{room}/members?not_membership=invite")
    assert len(nots["chunk"]) == 2
    joined = await alice.call("GET", f"{CS}/rooms/{room}/joined_members")
    assert set(joined["joined"]) == {alice.user_id, bob.user_id}
    assert joined["joined"][bob.user_id]["display_name"] == "bob"


async def test_capabilities(client: MatrixClient) -> None:
    alice = await client.register("alice")
    caps = await alice.call("GET", f"{CS}/capabilities")
    rv = caps["capabilities"]["m.room_versions"]
    assert rv["default"] == "12" and set(rv["available"]) == {"10", "11", "12"}


async def test_concurrent_identical_create_room_gives_distinct_rooms(client: MatrixClient) -> None:
    import asyncio

    alice = await client.register("alice")
    rooms = await asyncio.gather(*(alice.create_room() for _ in range(20)))
    assert len(set(rooms)) == 20
