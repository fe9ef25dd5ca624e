"""Issue 17's "sync and join correctness" scenarios, each written as the
conformance run played it: an inline filter with a limit, a join followed by
an incremental sync, a gapped incremental sync with several state changes,
lazy-loading across three syncs, a joined-only history room, and a join
carrying custom content."""

from __future__ import annotations

from typing import Any

from tests.api.client.test_sync_features import bodies, members_in, sync
from tests.helpers import CS, MatrixClient


async def test_inline_filter_with_types_still_fills_its_limit(client: MatrixClient) -> None:
    """A filtered timeline holds up to ``limit`` *matching* events: newer
    events the filter drops do not use up the limit."""
    alice = await client.register("alice")
    room = await alice.create_room()
    for i in range(4):
        await alice.send(room, f"m{i}")
    for i in range(6):
        await alice.send(room, type="org.example.noise", content={"i": i})
    flt = {"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}}
    s = await sync(alice, filter=flt)
    tl = s["rooms"]["join"][room]["timeline"]
    assert [e["content"]["body"] for e in tl["events"]] == ["m2", "m3"]
    assert tl["limited"] is True
    # Incremental: the same holds inside the window since the token.
    s1 = await sync(alice, filter=flt)
    for i in range(3):
        await alice.send(room, f"n{i}")
        await alice.send(room, type="org.example.noise", content={"j": i})
    s2 = await sync(alice, s1["next_batch"], filter=flt)
    tl = s2["rooms"]["join"][room]["timeline"]
    assert [e["content"]["body"] for e in tl["events"]] == ["n1", "n2"]
    assert tl["limited"] is True


async def test_join_then_incremental_sync_carries_room_state(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat", name="The room", topic="t")
    for i in range(15):
        await alice.send(room, f"before {i}")
    s = await sync(bob)
    assert room not in s["rooms"]["join"]
    await bob.call("POST", f"{CS}/join/{room}", {})
    s2 = await sync(bob, s["next_batch"])
    entry = s2["rooms"]["join"][room]
    seen = entry["state"]["events"] + entry["timeline"]["events"]
    keys = {(e["type"], e.get("state_key")) for e in seen if "state_key" in e}
    for k in [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.name", ""),
        ("m.room.topic", ""),
        ("m.room.member", alice.user_id),
        ("m.room.member", bob.user_id),
    ]:
        assert k in keys, k
    assert entry["timeline"]["events"][-1]["state_key"] == bob.user_id


async def test_gapped_incremental_sync_has_every_state_change(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    room = await alice.create_room(preset="public_chat", name="n0")
    await bob.call("POST", f"{CS}/join/{room}", {})
    s = await sync(alice)
    await alice.put_state(room, "m.room.name", {"name": "n1"})
    await alice.put_state(room, "m.room.topic", {"topic": "t1"})
    await carol.call("POST", f"{CS}/join/{room}", {})
    await bob.membership(room, "leave")
    await alice.put_state(room, "m.room.name", {"name": "n2"})
    await alice.put_state(room, "org.example.custom", {"k": 1}, "sk")
    for i in range(10):
        await alice.send(room, f"gap {i}")
    s2 = await sync(alice, s["next_batch"], filter={"room": {"timeline": {"limit": 4}}})
    entry = s2["rooms"]["join"][room]
    assert entry["timeline"]["limited"] is True
    assert bodies(entry) == ["gap 6", "gap 7", "gap 8", "gap 9"]
    st = {(e["type"], e["state_key"]): e["content"] for e in entry["state"]["events"]}
    assert st[("m.room.name", "")] == {"name": "n2"}
    assert st[("m.room.topic", "")] == {"topic": "t1"}
    assert st[("m.room.member", carol.user_id)]["membership"] == "join"
    assert st[("m.room.member", bob.user_id)]["membership"] == "leave"
    assert st[("org.example.custom", "sk")] == {"k": 1}
    assert ("m.room.create", "") not in st


LAZY = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 1}}}


async def test_lazy_loaded_members_are_not_resent_across_three_syncs(
    client: MatrixClient,
) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    await bob.send(room, "one")
    s1 = await sync(alice, filter=LAZY)
    assert bob.user_id in members_in(s1["rooms"]["join"][room]["state"]["events"])
    assert not members_in(s1["rooms"]["join"][room]["timeline"]["events"])
    await bob.send(room, "two")
    s2 = await sync(alice, s1["next_batch"], filter=LAZY)
    entry = s2["rooms"]["join"][room]
    assert bodies(entry) == ["two"]
    assert members_in(entry["state"]["events"]) == set()
    await bob.send(room, "three")
    s3 = await sync(alice, s2["next_batch"], filter=LAZY)
    entry = s3["rooms"]["join"][room]
    assert bodies(entry) == ["three"]
    assert members_in(entry["state"]["events"]) == set()
    # include_redundant_members asks for them every time.
    redundant: dict[str, Any] = {
        "room": {"state": {"lazy_load_members": True, "include_redundant_members": True}}
    }
    await bob.send(room, "four")
    s4 = await sync(alice, s3["next_batch"], filter=redundant)
    assert members_in(s4["rooms"]["join"][room]["state"]["events"]) == {bob.user_id}


async def test_joined_history_visibility_shows_the_joiners_own_join(
    client: MatrixClient,
) -> None:
    for visibility in ("joined", "invited"):
        alice = await client.register(f"alice{visibility}")
        bob = await client.register(f"bob{visibility}")
        room = await alice.create_room(
            preset="public_chat",
            name="secret history",
            initial_state=[
                {
                    "type": "m.room.history_visibility",
                    "content": {"history_visibility": visibility},
                }
            ],
        )
        for i in range(12):
            await alice.send(room, f"hidden {i}")
        await bob.call("POST", f"{CS}/join/{room}", {})
        s = await sync(bob)
        entry = s["rooms"]["join"][room]
        timeline = entry["timeline"]["events"]
        assert [(e["type"], e.get("state_key")) for e in timeline] == [
            ("m.room.member", bob.user_id)
        ], visibility
        st = {(e["type"], e["state_key"]) for e in entry["state"]["events"]}
        assert ("m.room.name", "") in st and ("m.room.create", "") in st
        await alice.send(room, "visible")
        s2 = await sync(bob, s["next_batch"])
        assert bodies(s2["rooms"]["join"][room]) == ["visible"]


async def test_join_keeps_custom_content_and_reason(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {"reason": "hello", "org.example.custom": {"a": 1}})
    content = await bob.state(room, "m.room.member", bob.user_id)
    assert content["membership"] == "join"
    assert content["reason"] == "hello"
    assert content["org.example.custom"] == {"a": 1}
    # The other join endpoint too; a body cannot choose the membership.
    await carol.call("POST", f"{CS}/rooms/{room}/join", {"membership": "leave", "foo": "bar"})
    content = await carol.state(room, "m.room.member", carol.user_id)
    assert content["membership"] == "join" and content["foo"] == "bar"
    r = await carol.call("POST", f"{CS}/join/{room}", {"reason": 5}, expect=400)
    assert r["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM")
