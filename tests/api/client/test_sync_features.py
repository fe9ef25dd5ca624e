"""/sync features beyond the basics of test_sync.py: inline filters, lazy
loading of members, presence and full_state parameters, private receipts,
left and knocked rooms, room summaries, unread counts, account data, state
before a limited timeline, tokens across restarts and malformed parameters."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

from homeserver.config import Config
from homeserver.storage.database import Database
from tests.helpers import CS, MatrixClient, User


async def sync(
    user: User,
    since: str | None = None,
    *,
    filter: dict[str, Any] | str | None = None,
    expect: int | None = 200,
    **params: str,
) -> dict[str, Any]:
    """GET /sync with every query parameter URL-encoded; a dict filter is
    sent inline as JSON."""
    q: dict[str, str] = {"timeout": "0", **params}
    if since is not None:
        q["since"] = since
    if filter is not None:
        q["filter"] = filter if isinstance(filter, str) else json.dumps(filter)
    return await user.call("GET", f"{CS}/sync?{urlencode(q)}", expect=expect)  # type: ignore[no-any-return]


def bodies(entry: dict[str, Any]) -> list[str]:
    return [e["content"]["body"] for e in entry["timeline"]["events"] if "body" in e["content"]]


def state_keys(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in events}


def members_in(events: list[dict[str, Any]]) -> set[str]:
    return {e["state_key"] for e in events if e["type"] == "m.room.member"}


async def public_room_with(owner: User, *others: User, **body: Any) -> str:
    room = await owner.create_room(preset="public_chat", **body)
    for u in others:
        await u.call("POST", f"{CS}/join/{room}", {})
    return room


# ----------------------------------------------------------------- 1. filters


async def test_inline_filter_limits_timeline(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    for i in range(3):
        await alice.send(room, f"m{i}")
    s = await sync(alice, filter={"room": {"timeline": {"limit": 1}}})
    tl = s["rooms"]["join"][room]["timeline"]
    assert len(tl["events"]) == 1 and tl["events"][0]["content"]["body"] == "m2"
    assert tl["limited"] is True


async def test_inline_filter_rooms_restricts_rooms(client: MatrixClient) -> None:
    alice = await client.register("alice")
    keep = await alice.create_room()
    other = await alice.create_room()
    s = await sync(alice, filter={"room": {"rooms": [keep]}})
    assert set(s["rooms"]["join"]) == {keep}
    s = await sync(alice, filter={"room": {"not_rooms": [keep]}})
    assert set(s["rooms"]["join"]) == {other}


async def test_inline_filter_timeline_types_and_not_types(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    s0 = await sync(alice)
    await alice.send(room, "text")
    await alice.send(room, type="org.example.custom", content={"x": 1})
    await alice.put_state(room, "m.room.topic", {"topic": "t"})
    only = await sync(alice, s0["next_batch"], filter={"room": {"timeline": {"types": ["m.*"]}}})
    types = [e["type"] for e in only["rooms"]["join"][room]["timeline"]["events"]]
    assert types == ["m.room.message", "m.room.topic"]
    without = await sync(
        alice, s0["next_batch"], filter={"room": {"timeline": {"not_types": ["m.room.message"]}}}
    )
    types = [e["type"] for e in without["rooms"]["join"][room]["timeline"]["events"]]
    assert types == ["org.example.custom", "m.room.topic"]


async def test_invalid_inline_filter_is_400_not_500(client: MatrixClient) -> None:
    """Bad JSON is M_NOT_JSON; JSON that is not a filter (wrong types) is
    M_BAD_JSON (Synapse validates filters against a schema and refuses
    both with 400)."""
    alice = await client.register("alice")
    await alice.create_room()
    bad = [
        ("{not json", "M_NOT_JSON"),
        ('{"room": {"timeline": {"limit": "ten"}}}', "M_BAD_JSON"),
        ('{"room": {"timeline": {"types": "m.room.message"}}}', "M_BAD_JSON"),
        ('{"room": {"rooms": "!a:b"}}', "M_BAD_JSON"),
        ('{"room": {"not_rooms": 5}}', "M_BAD_JSON"),
        ('{"room": {"state": []}}', "M_BAD_JSON"),
        ('{"room": 7}', "M_BAD_JSON"),
        ('{"account_data": "x"}', "M_BAD_JSON"),
        ('{"room": {"include_leave": "yes"}}', "M_BAD_JSON"),
        ("[1]", None),
    ]
    for raw, errcode in bad:
        r = await sync(alice, filter=raw, expect=400)
        assert r["errcode"] in ("M_BAD_JSON", "M_NOT_JSON", "M_INVALID_PARAM"), (raw, r)
        if errcode is not None:
            assert r["errcode"] == errcode, (raw, r)
    # Stored filters are validated the same way.
    r = await alice.call(
        "POST", f"{CS}/user/{alice.user_id}/filter", {"room": {"not_rooms": 5}}, expect=400
    )
    assert r["errcode"] == "M_BAD_JSON"


# ------------------------------------------------------- 2. lazy-load members

LAZY = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 2}}}


async def test_lazy_load_members_initial_and_incremental(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    dave = await client.register("dave")
    room = await public_room_with(alice, bob, carol, dave)
    await bob.send(room, "from bob")
    await carol.send(room, "from carol")

    lazy = await sync(alice, filter=LAZY)
    entry = lazy["rooms"]["join"][room]
    assert bodies(entry) == ["from bob", "from carol"]
    # Timeline senders and the syncing user; not dave, who said nothing.
    assert members_in(entry["state"]["events"]) == {alice.user_id, bob.user_id, carol.user_id}
    full = await sync(alice, filter={"room": {"timeline": {"limit": 2}}})
    assert members_in(full["rooms"]["join"][room]["state"]["events"]) == {
        alice.user_id,
        bob.user_id,
        carol.user_id,
        dave.user_id,
    }

    # Incremental: dave speaks for the first time; his member event comes
    # with it, although the timeline is not limited.
    await dave.send(room, "from dave")
    inc = await sync(alice, lazy["next_batch"], filter=LAZY)
    entry = inc["rooms"]["join"][room]
    assert bodies(entry) == ["from dave"] and entry["timeline"]["limited"] is False
    dave_member = [e for e in entry["state"]["events"] if e["type"] == "m.room.member"]
    assert [e["state_key"] for e in dave_member] == [dave.user_id]
    assert dave_member[0]["content"]["membership"] == "join"
    # Without lazy loading an unlimited incremental timeline carries no state.
    plain = await sync(alice, lazy["next_batch"], filter={"room": {"timeline": {"limit": 2}}})
    assert plain["rooms"]["join"][room]["state"]["events"] == []

    # A long-poll woken by a message (which may be answered from memory)
    # does not repeat the sender's member event this device already has.
    poll = asyncio.create_task(sync(alice, inc["next_batch"], filter=LAZY, timeout="10000"))
    await asyncio.sleep(0.1)
    await carol.send(room, "carol again")
    woken = (await asyncio.wait_for(poll, 5))["rooms"]["join"][room]
    assert bodies(woken) == ["carol again"]
    assert members_in(woken["state"]["events"]) == set()


# ------------------------------------------------------------- 3. set_presence


async def test_set_presence_values(client: MatrixClient) -> None:
    """Synapse accepts exactly online, offline and unavailable and refuses
    anything else with 400 M_INVALID_PARAM."""
    alice = await client.register("alice")
    for value in ("online", "offline", "unavailable"):
        s = await sync(alice, set_presence=value)
        assert "next_batch" in s
    r = await sync(alice, set_presence="busy", expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"


# --------------------------------------------------------------- 4. full_state


async def test_full_state_incremental_includes_quiet_rooms(client: MatrixClient) -> None:
    alice = await client.register("alice")
    quiet = await alice.create_room(name="Quiet")
    busy = await alice.create_room(name="Busy")
    s = await sync(alice)
    await alice.send(busy, "news")
    full = await sync(alice, s["next_batch"], full_state="true")
    join = full["rooms"]["join"]
    assert set(join) == {quiet, busy}
    for room, name in ((quiet, "Quiet"), (busy, "Busy")):
        st = join[room]["state"]["events"]
        assert {
            ("m.room.create", ""),
            ("m.room.power_levels", ""),
            ("m.room.join_rules", ""),
            ("m.room.member", alice.user_id),
        } <= state_keys(st)
        assert [e["content"]["name"] for e in st if e["type"] == "m.room.name"] == [name]
    # The timeline is the normal incremental one.
    assert bodies(join[busy]) == ["news"] and join[busy]["timeline"]["limited"] is False
    assert join[quiet]["timeline"]["events"] == []
    # Without full_state, only the busy room.
    plain = await sync(alice, s["next_batch"])
    assert set(plain["rooms"]["join"]) == {busy}


# ---------------------------------------------------------- 5. private receipts


async def test_private_read_receipt_only_reaches_its_owner(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    eid = await alice.send(room, "read me")
    a0 = await sync(alice)
    b0 = await sync(bob)
    await bob.call("POST", f"{CS}/rooms/{room}/receipt/m.read.private/{eid}", {})

    def receipts(s: dict[str, Any]) -> list[dict[str, Any]]:
        entry = s["rooms"]["join"].get(room, {"ephemeral": {"events": []}})
        return [e for e in entry["ephemeral"]["events"] if e["type"] == "m.receipt"]

    (mine,) = receipts(await sync(bob, b0["next_batch"]))
    assert bob.user_id in mine["content"][eid]["m.read.private"]
    a1 = await sync(alice, a0["next_batch"])
    assert receipts(a1) == []
    # Nothing alice may see happened: the room is not in her sync at all.
    assert room not in a1["rooms"]["join"]
    # Nor in an initial sync.
    assert receipts(await sync(alice)) == []

    # A public receipt reaches both.
    await bob.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{eid}", {})
    for s in (await sync(alice, a1["next_batch"]), await sync(bob, b0["next_batch"])):
        found = [r["content"][eid].get("m.read", {}) for r in receipts(s)]
        assert any(bob.user_id in x for x in found), s


# --------------------------------------------------------------- 6. left rooms


async def test_rejected_invite_appears_under_leave(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(invite=[bob.user_id])
    s = await sync(bob)
    assert room in s["rooms"]["invite"]
    await bob.membership(room, "leave")
    s2 = await sync(bob, s["next_batch"])
    assert room not in s2["rooms"]["invite"] and room not in s2["rooms"]["join"]
    last = s2["rooms"]["leave"][room]["timeline"]["events"][-1]
    assert (last["type"], last["state_key"]) == ("m.room.member", bob.user_id)
    assert last["content"]["membership"] == "leave" and last["sender"] == bob.user_id


async def test_ban_appears_under_leave(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    s = await sync(bob)
    await alice.membership(room, "ban", user_id=bob.user_id, reason="spam")
    s2 = await sync(bob, s["next_batch"])
    assert room not in s2["rooms"]["join"]
    last = s2["rooms"]["leave"][room]["timeline"]["events"][-1]
    assert (last["type"], last["state_key"]) == ("m.room.member", bob.user_id)
    assert last["content"]["membership"] == "ban" and last["sender"] == alice.user_id
    assert last["content"]["reason"] == "spam"


async def test_initial_sync_left_rooms_need_include_leave_and_skip_forgotten(
    client: MatrixClient,
) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    kept = await public_room_with(alice, bob)
    forgotten = await public_room_with(alice, bob)
    await bob.send(kept, "bye")
    await bob.membership(kept, "leave")
    await bob.membership(forgotten, "leave")
    await bob.membership(forgotten, "forget")
    plain = await sync(bob)
    assert plain["rooms"]["leave"] == {} and plain["rooms"]["join"] == {}
    with_leave = await sync(bob, filter={"room": {"include_leave": True}})
    assert set(with_leave["rooms"]["leave"]) == {kept}
    entry = with_leave["rooms"]["leave"][kept]
    last = entry["timeline"]["events"][-1]
    assert (last["type"], last["state_key"]) == ("m.room.member", bob.user_id)
    assert last["content"]["membership"] == "leave"
    assert "bye" in bodies(entry)


# -------------------------------------------------------------------- 7. knock


async def test_knock_appears_under_knock_with_stripped_state(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(
        name="Knock here",
        initial_state=[
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ],
    )
    s = await sync(bob)
    await bob.call("POST", f"{CS}/knock/{room}", {"reason": "let me in"})
    s2 = await sync(bob, s["next_batch"])
    assert room not in s2["rooms"]["join"] and room not in s2["rooms"]["invite"]
    events = s2["rooms"]["knock"][room]["knock_state"]["events"]
    by_key = {(e["type"], e["state_key"]): e for e in events}
    assert ("m.room.create", "") in by_key
    assert by_key[("m.room.join_rules", "")]["content"]["join_rule"] == "knock"
    assert by_key[("m.room.name", "")]["content"]["name"] == "Knock here"
    mine = by_key[("m.room.member", bob.user_id)]
    assert mine["content"]["membership"] == "knock" and mine["sender"] == bob.user_id
    # Stripped: no event ids, signatures or timestamps.
    assert all(set(e) <= {"type", "state_key", "content", "sender"} for e in events)
    # An initial sync shows it too.
    init = await sync(bob)
    assert room in init["rooms"]["knock"]


# ------------------------------------------------------------------ 8. summary


async def test_summary_heroes_and_counts(client: MatrixClient) -> None:
    alice = await client.register("alice")
    others = [await client.register(f"user{i}") for i in range(6)]
    room = await alice.create_room(preset="private_chat")  # no name, no alias
    for u in others:
        await alice.call("POST", f"{CS}/rooms/{room}/invite", {"user_id": u.user_id})
    for u in others[:2]:
        await u.call("POST", f"{CS}/join/{room}", {})
    s = await sync(alice)
    summary = s["rooms"]["join"][room]["summary"]
    assert summary["m.joined_member_count"] == 3
    assert summary["m.invited_member_count"] == 4
    heroes = summary["m.heroes"]
    assert len(heroes) == 5 and len(set(heroes)) == 5
    assert alice.user_id not in heroes
    assert set(heroes) <= {u.user_id for u in others}
    # From bob's side: alice is a hero, bob is not.
    bob_summary = (await sync(others[0]))["rooms"]["join"][room]["summary"]
    assert alice.user_id in bob_summary["m.heroes"]
    assert others[0].user_id not in bob_summary["m.heroes"]
    # Named, the room needs no heroes (Synapse then omits them).
    await alice.put_state(room, "m.room.name", {"name": "Named"})
    named = (await sync(alice, s["next_batch"]))["rooms"]["join"][room]["summary"]
    assert "m.heroes" not in named
    assert named["m.joined_member_count"] == 3 and named["m.invited_member_count"] == 4


# ------------------------------------------------------- 9. unread notifications


async def test_notification_count_follows_read_receipt(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    s = await sync(bob)
    ids = [await alice.send(room, f"n{i}") for i in range(3)]
    await bob.send(room, "my own message does not count")

    def count(s: dict[str, Any]) -> int:
        return int(s["rooms"]["join"][room]["unread_notifications"]["notification_count"])

    s1 = await sync(bob, s["next_batch"])
    assert count(s1) == 3
    assert count(await sync(alice)) == 1  # bob's message; hers do not count
    await bob.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{ids[0]}", {})
    s2 = await sync(bob, s1["next_batch"])
    assert count(s2) == 2
    # A private receipt clears notifications like a public one (the spec's
    # purpose for it).
    await bob.call("POST", f"{CS}/rooms/{room}/receipt/m.read.private/{ids[1]}", {})
    s3 = await sync(bob, s2["next_batch"])
    assert count(s3) == 1
    await bob.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{ids[2]}", {})
    s4 = await sync(bob, s3["next_batch"])
    assert count(s4) == 0
    assert count(await sync(bob)) == 0


# ------------------------------------------------------------- 10. account data


async def test_account_data_global_and_per_room(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    s = await sync(alice)
    await alice.call(
        "PUT", f"{CS}/user/{alice.user_id}/account_data/org.example.settings", {"theme": "dark"}
    )
    s2 = await sync(alice, s["next_batch"])
    assert {"type": "org.example.settings", "content": {"theme": "dark"}} in s2["account_data"][
        "events"
    ]
    assert s2["rooms"]["join"] == {}
    await alice.call(
        "PUT",
        f"{CS}/user/{alice.user_id}/rooms/{room}/account_data/org.example.pin",
        {"pinned": True},
    )
    s3 = await sync(alice, s2["next_batch"])
    assert s3["account_data"]["events"] == []
    assert s3["rooms"]["join"][room]["account_data"]["events"] == [
        {"type": "org.example.pin", "content": {"pinned": True}}
    ]
    # An initial sync has both.
    init = await sync(alice)
    assert {"type": "org.example.settings", "content": {"theme": "dark"}} in init["account_data"][
        "events"
    ]
    assert {"type": "org.example.pin", "content": {"pinned": True}} in init["rooms"]["join"][room][
        "account_data"
    ]["events"]


# ---------------------------------------------- 11. state before a limited gap


async def test_limited_incremental_sync_carries_state_changed_in_the_gap(
    client: MatrixClient,
) -> None:
    alice = await client.register("alice")
    room = await alice.create_room(name="Old")
    s = await sync(alice)
    await alice.put_state(room, "m.room.name", {"name": "New"})
    await alice.put_state(room, "m.room.topic", {"topic": "gap topic"})
    for i in range(5):
        await alice.send(room, f"after {i}")
    s2 = await sync(alice, s["next_batch"], filter={"room": {"timeline": {"limit": 3}}})
    entry = s2["rooms"]["join"][room]
    assert entry["timeline"]["limited"] is True
    assert bodies(entry) == ["after 2", "after 3", "after 4"]
    st = {(e["type"], e["state_key"]): e for e in entry["state"]["events"]}
    assert st[("m.room.name", "")]["content"]["name"] == "New"
    assert st[("m.room.topic", "")]["content"]["topic"] == "gap topic"
    # Only what changed: unchanged state is not repeated.
    assert ("m.room.create", "") not in st


# -------------------------------------------------- 12. tokens across restarts


async def test_token_survives_a_new_app_on_the_same_database(
    client: MatrixClient,
    aiohttp_client: Any,
    config: Config,
    db: Database,
) -> None:
    from homeserver.app import create_app

    alice = await client.register("alice")
    room = await alice.create_room()
    await alice.send(room, "before")
    s = await sync(alice)
    await alice.send(room, "between")
    await client.http.close()  # the first app goes away

    fresh = MatrixClient(await aiohttp_client(create_app(config, db)))
    alice2 = User(alice.user_id, alice.token, alice.device_id, fresh)
    await alice2.send(room, "after")
    s2 = await sync(alice2, s["next_batch"])
    assert bodies(s2["rooms"]["join"][room]) == ["between", "after"]
    assert s2["rooms"]["join"][room]["timeline"]["limited"] is False
    s3 = await sync(alice2, s2["next_batch"])
    assert s3["rooms"]["join"] == {}


# -------------------------------------------------------- 13. bad parameters


async def test_malformed_since_and_timeout_are_400(client: MatrixClient) -> None:
    alice = await client.register("alice")
    for since in ("garbage", "s", "sabc", "x123", "s99999999999999999999999999"):
        r = await sync(alice, since, expect=400)
        assert r["errcode"] in ("M_INVALID_PARAM", "M_UNKNOWN_TOKEN", "M_BAD_JSON"), (since, r)
    for timeout in ("soon", "1.5"):
        r = await sync(alice, timeout=timeout, expect=400)
        assert r["errcode"] == "M_INVALID_PARAM", (timeout, r)
    r = await sync(alice, full_state="maybe", expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"
