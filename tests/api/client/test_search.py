"""POST /search: full-text search over the rooms a user is in."""

from __future__ import annotations

from typing import Any

from tests.helpers import CS, MatrixClient, User


async def search(user: User, term: str, expect: int = 200, batch: str = "", **crit: Any) -> Any:
    body = {"search_categories": {"room_events": {"search_term": term, **crit}}}
    path = f"{CS}/search" + (f"?next_batch={batch}" if batch else "")
    r = await user.call("POST", path, body, expect=expect)
    return r["search_categories"]["room_events"] if expect == 200 else r


async def test_search_finds_visible_messages_only(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    mallory = await client.register("mallory")
    room = await alice.create_room(preset="public_chat", name="Gardening club")
    await bob.call("POST", f"{CS}/join/{room}", {})
    await alice.send(room, "The tomatoes are ripening nicely")
    await bob.send(room, "Tomato soup tonight?")
    await bob.send(room, "unrelated chatter")
    redacted = await alice.send(room, "secret tomato recipe")
    await alice.call("PUT", f"{CS}/rooms/{room}/redact/{redacted}/r1", {})
    other = await mallory.create_room(name="elsewhere")
    await mallory.send(other, "tomato in a room alice is not in")

    r = await search(alice, "tomato")
    bodies = {x["result"]["content"]["body"] for x in r["results"]}
    # Stemming: "tomatoes" and "Tomato" both match; the redacted one and
    # mallory's room do not.
    assert bodies == {"The tomatoes are ripening nicely", "Tomato soup tonight?"}
    assert r["count"] == 2 and "tomato" in r["highlights"]
    assert all(x["result"]["room_id"] == room for x in r["results"])
    # Names and topics are searchable too, and keys narrow it.
    r = await search(alice, "gardening")
    assert [x["result"]["type"] for x in r["results"]] == ["m.room.name"]
    r = await search(alice, "gardening", keys=["content.body"])
    assert r["results"] == [] and r["count"] == 0
    # Mallory never sees alice's room.
    r = await search(mallory, "tomato")
    assert [x["result"]["room_id"] for x in r["results"]] == [other]


async def test_search_pages_orders_filters_and_context(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    for i in range(7):
        await (alice if i % 2 else bob).send(room, f"apple number {i}")
    seen: list[str] = []
    batch = ""
    while True:
        r = await search(alice, "apple", batch=batch, order_by="recent", filter={"limit": 3})
        seen += [x["result"]["content"]["body"] for x in r["results"]]
        if "next_batch" not in r:
            break
        batch = r["next_batch"]
    assert seen == [f"apple number {i}" for i in reversed(range(7))]
    # Rank order pages by offset; the union is every match once.
    ranked: list[str] = []
    batch = ""
    while True:
        r = await search(alice, "apple", batch=batch, filter={"limit": 4})
        ranked += [x["result"]["event_id"] for x in r["results"]]
        if "next_batch" not in r:
            break
        batch = r["next_batch"]
    assert len(ranked) == len(set(ranked)) == 7
    # Senders filter, groups and context.
    r = await search(
        alice,
        "apple",
        order_by="recent",
        filter={"senders": [bob.user_id]},
        groupings={"group_by": [{"key": "room_id"}]},
        event_context={"before_limit": 1, "after_limit": 1, "include_profile": True},
    )
    assert {x["result"]["sender"] for x in r["results"]} == {bob.user_id}
    assert r["groups"]["room_id"][room]["results"] == [
        x["result"]["event_id"] for x in r["results"]
    ]
    first = r["results"][0]["context"]
    assert len(first["events_before"]) == 1 and bob.user_id in first["profile_info"]


async def test_search_bad_requests(client: MatrixClient) -> None:
    alice = await client.register("alice")
    for crit, code in [
        ({"search_term": ""}, "M_MISSING_PARAM"),
        ({"search_term": "x", "keys": ["content.secret"]}, "M_BAD_JSON"),
        ({"search_term": "x", "order_by": "best"}, "M_BAD_JSON"),
        ({"search_term": "x", "filter": "rooms"}, "M_BAD_JSON"),
        ({"search_term": "x", "groupings": {"group_by": [{"key": "type"}]}}, "M_BAD_JSON"),
    ]:
        body = {"search_categories": {"room_events": crit}}
        r = await alice.call("POST", f"{CS}/search", body, expect=400)
        assert r["errcode"] == code, crit
    r = await search(alice, "x", expect=400, batch="s12")  # a recent-order token for rank
    assert r["errcode"] == "M_INVALID_PARAM"
    r = await search(alice, "x", expect=400, batch="r1x")
    assert r["errcode"] == "M_INVALID_PARAM"
    r = await search(alice, 'quoted "phrase" -not or (weird')
    assert r["results"] == []
