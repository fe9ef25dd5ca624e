"""Relations from the outside: bundled aggregations (m.thread, m.replace,
m.reference) on every path that returns events, ``/relations`` in its three
forms and both directions, ``/threads``, ``/context``, and the relation
projection under ``homeserver verify``/``rebuild``."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from homeserver.services.projection_rebuild import ProjectionRebuilder
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.projections import Projections
from tests.helpers import CS, MatrixClient, User

V1 = "/_matrix/client/v1"


def rel(rel_type: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {"m.relates_to": {"rel_type": rel_type, "event_id": event_id, **extra}}


async def reply(user: User, room: str, root: str, body: str) -> str:
    content = {"msgtype": "m.text", "body": body, **rel("m.thread", root)}
    return str(await user.send(room, content=content))


async def edit(user: User, room: str, target: str, body: str) -> str:
    content = {
        "msgtype": "m.text",
        "body": f"* {body}",
        "m.new_content": {"msgtype": "m.text", "body": body},
        **rel("m.replace", target),
    }
    return str(await user.send(room, content=content))


async def react(user: User, room: str, target: str, key: str) -> str:
    return str(
        await user.send(room, type="m.reaction", content=rel("m.annotation", target, key=key))
    )


async def event(user: User, room: str, event_id: str) -> dict[str, Any]:
    return dict(await user.call("GET", f"{CS}/rooms/{room}/event/{quote(event_id)}"))


async def relations(user: User, room: str, path: str, expect: int = 200, **q: Any) -> Any:
    query = "&".join(f"{k}={quote(str(v))}" for k, v in q.items())
    return await user.call("GET", f"{V1}/rooms/{room}/relations/{path}?{query}", expect=expect)


@pytest.fixture
async def pair(client: MatrixClient) -> tuple[User, User, str]:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.membership(room, "join")
    return alice, bob, room


async def test_aggregations_bundled_on_event_messages_sync_and_context(
    pair: tuple[User, User, str],
) -> None:
    alice, bob, room = pair
    since = (await bob.call("GET", f"{CS}/sync"))["next_batch"]
    root = await alice.send(room, "root")
    r1 = await reply(bob, room, root, "first")
    r2 = await reply(alice, room, root, "second")
    e1 = await edit(alice, room, root, "root v2")
    e2 = await edit(alice, room, root, "root v3")
    await edit(bob, room, root, "not yours")  # another sender's edit is no edit
    ref = await alice.send(
        room, content={"msgtype": "m.text", "body": "see", **rel("m.reference", root)}
    )
    await edit(alice, room, r2, "second, fixed")

    def check(ev: dict[str, Any], viewer: User) -> None:
        assert ev["content"]["body"] == "root"  # v1.7+: the content is never replaced
        bundled = ev["unsigned"]["m.relations"]
        thread = bundled["m.thread"]
        assert thread["count"] == 2
        assert thread["latest_event"]["event_id"] == r2
        assert thread["current_user_participated"] is True
        # the latest reply carries its own edit
        assert (
            thread["latest_event"]["unsigned"]["m.relations"]["m.replace"]["content"][
                "m.new_content"
            ]["body"]
            == "second, fixed"
        )
        assert bundled["m.replace"]["event_id"] == e2
        assert bundled["m.replace"]["sender"] == alice.user_id
        assert bundled["m.reference"] == {"chunk": [{"event_id": ref}]}

    check(await event(bob, room, root), bob)
    chunk = (await bob.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=50"))["chunk"]
    check(next(e for e in chunk if e["event_id"] == root), bob)
    for sync_since in (None, since):
        path = f"{CS}/sync" + (f"?since={sync_since}" if sync_since else "")
        s = await bob.call("GET", path)
        tl = s["rooms"]["join"][room]["timeline"]["events"]
        check(next(e for e in tl if e["event_id"] == root), bob)
    ctx = await bob.call("GET", f"{CS}/rooms/{room}/context/{quote(root)}?limit=2")
    check(ctx["event"], bob)
    # r1 is in the thread too; edits are no aggregations of their own
    assert "m.relations" not in (await event(bob, room, r1))["unsigned"]
    assert e1 != e2
    # an edit of an edit is no edit: nothing bundled on the edit
    await edit(alice, room, e2, "edit of an edit")
    assert "m.relations" not in (await event(bob, room, e2))["unsigned"]

    # carol never took part in the thread
    carol = await alice.http.register("carol")
    await carol.membership(room, "join")
    assert (await event(carol, room, root))["unsigned"]["m.relations"]["m.thread"][
        "current_user_participated"
    ] is False

    # a redacted reply leaves the summary; a redacted root has none
    await alice.call("PUT", f"{CS}/rooms/{room}/redact/{quote(r2)}/t1", {})
    thread = (await event(bob, room, root))["unsigned"]["m.relations"]["m.thread"]
    assert thread["count"] == 1 and thread["latest_event"]["event_id"] == r1
    await alice.call("PUT", f"{CS}/rooms/{room}/redact/{quote(root)}/t2", {})
    assert "m.relations" not in (await event(bob, room, root))["unsigned"]


async def test_relations_three_forms_both_directions_and_recursion(
    pair: tuple[User, User, str],
) -> None:
    alice, bob, room = pair
    root = await alice.send(room, "root")
    reactions = [await react(bob, room, root, k) for k in ("a", "b", "c", "d", "e")]
    replies = [await reply(alice, room, root, f"r{i}") for i in range(2)]
    edited = await edit(alice, room, root, "root!")
    nested = await react(bob, room, replies[0], "x")  # relates to a reply
    everything = [*reactions, *replies, edited]

    # newest first, pages of 5, then the rest
    page1 = await relations(bob, room, root, limit=5)
    assert [e["event_id"] for e in page1["chunk"]] == everything[::-1][:5]
    assert "prev_batch" not in page1 and "recursion_depth" not in page1
    page2 = await relations(bob, room, root, limit=5, **{"from": page1["next_batch"]})
    assert [e["event_id"] for e in page2["chunk"]] == everything[::-1][5:]
    assert "next_batch" not in page2 and page2["prev_batch"] == page1["next_batch"]
    # forwards: oldest first
    f1 = await relations(bob, room, root, dir="f", limit=4)
    f2 = await relations(bob, room, root, dir="f", limit=4, **{"from": f1["next_batch"]})
    assert [e["event_id"] for e in f1["chunk"] + f2["chunk"]] == everything[:8]
    # `to` stops where an earlier page started
    upto = await relations(bob, room, root, limit=50, to=page1["next_batch"])
    assert [e["event_id"] for e in upto["chunk"]] == everything[::-1][:5]

    by_type = await relations(bob, room, f"{root}/m.annotation", limit=50)
    assert [e["event_id"] for e in by_type["chunk"]] == reactions[::-1]
    both = await relations(bob, room, f"{root}/m.annotation/m.reaction", limit=50)
    assert [e["event_id"] for e in both["chunk"]] == reactions[::-1]
    none = await relations(bob, room, f"{root}/m.annotation/m.room.message", limit=50)
    assert none["chunk"] == [] and "next_batch" not in none
    threads = await relations(bob, room, f"{root}/m.thread", limit=50)
    assert [e["event_id"] for e in threads["chunk"]] == replies[::-1]

    # recursion reaches the reaction to a reply
    deep = await relations(bob, room, root, limit=50, recurse="true")
    assert deep["recursion_depth"] >= 3
    assert nested in [e["event_id"] for e in deep["chunk"]]
    flat = await relations(bob, room, root, limit=50, recurse="false")
    assert nested not in [e["event_id"] for e in flat["chunk"]] and flat["recursion_depth"] == 1
    deep_reactions = await relations(
        bob, room, f"{root}/m.annotation/m.reaction", limit=50, recurse="true"
    )
    assert [e["event_id"] for e in deep_reactions["chunk"]] == [nested, *reactions[::-1]]


@pytest.fixture
async def outsider(client: MatrixClient) -> tuple[User, str]:
    """A user in none of the pair's rooms, and an event of their own room."""
    mallory = await client.register("mallory")
    other = await mallory.create_room()
    return mallory, str(await mallory.send(other, "mine"))


async def test_relations_refusals(pair: tuple[User, User, str], outsider: tuple[User, str]) -> None:
    alice, bob, room = pair
    root = await alice.send(room, "root")
    outsider_user, elsewhere = outsider
    # not in the room: 403; an event of another room or none at all: 404
    r = await relations(outsider_user, room, root, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    r = await relations(bob, room, elsewhere, expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    r = await relations(bob, room, "$nothing:hs.test", expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    for bad, code in (
        ({"dir": "x"}, "M_INVALID_PARAM"),
        ({"from": "bogus"}, "M_INVALID_PARAM"),
        ({"limit": "ten"}, "M_INVALID_PARAM"),
        ({"recurse": "maybe"}, "M_INVALID_PARAM"),
    ):
        r = await relations(bob, room, root, expect=400, **bad)
        assert r["errcode"] == code, (bad, r)
    r = await relations(bob, room, "not-an-event-id", expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    r = await bob.call("GET", f"{V1}/rooms/{room}/threads?include=some", expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    r = await outsider_user.call("GET", f"{V1}/rooms/{room}/threads", expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_threads_by_latest_activity_participation_and_pages(
    pair: tuple[User, User, str], client: MatrixClient
) -> None:
    alice, bob, room = pair
    carol = await client.register("carol")
    await carol.membership(room, "join")
    t1 = await alice.send(room, "thread one")
    t2 = await bob.send(room, "thread two")
    await alice.send(room, "no thread")
    await reply(bob, room, t1, "in one")
    await reply(alice, room, t2, "in two")
    await reply(carol, room, t1, "carol in one")  # t1 is now the most recent

    got = await bob.call("GET", f"{V1}/rooms/{room}/threads")
    assert [e["event_id"] for e in got["chunk"]] == [t1, t2]
    assert got["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"] == 2
    mine = await carol.call("GET", f"{V1}/rooms/{room}/threads?include=participated")
    assert [e["event_id"] for e in mine["chunk"]] == [t1]
    # bob started t2 and replied in t1
    bobs = await bob.call("GET", f"{V1}/rooms/{room}/threads?include=participated")
    assert [e["event_id"] for e in bobs["chunk"]] == [t1, t2]
    p1 = await bob.call("GET", f"{V1}/rooms/{room}/threads?limit=1")
    assert [e["event_id"] for e in p1["chunk"]] == [t1]
    p2 = await bob.call("GET", f"{V1}/rooms/{room}/threads?limit=1&from={p1['next_batch']}")
    assert [e["event_id"] for e in p2["chunk"]] == [t2]
    p3 = await bob.call("GET", f"{V1}/rooms/{room}/threads?limit=1&from={p2['next_batch']}")
    assert p3["chunk"] == [] and "next_batch" not in p3


async def test_context_sides_tokens_filter_and_lazy_members(
    pair: tuple[User, User, str], client: MatrixClient
) -> None:
    alice, bob, room = pair
    carol = await client.register("carol")
    await carol.membership(room, "join")  # joins, never speaks
    ids = []
    for i in range(10):
        ids.append(await (alice if i % 2 else bob).send(room, f"m{i}"))
    mid = ids[5]
    ctx = await bob.call("GET", f"{CS}/rooms/{room}/context/{quote(mid)}?limit=4")
    assert ctx["event"]["event_id"] == mid
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[4], ids[3]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[6], ids[7]]
    state_types = {(e["type"], e["state_key"]) for e in ctx["state"]}
    assert ("m.room.create", "") in state_types and ("m.room.member", carol.user_id) in state_types
    # the tokens continue with /messages on either side
    back = await bob.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=1&from={ctx['start']}")
    assert back["chunk"][0]["event_id"] == ids[2]
    fwd = await bob.call("GET", f"{CS}/rooms/{room}/messages?dir=f&limit=1&from={ctx['end']}")
    assert fwd["chunk"][0]["event_id"] == ids[8]

    # a filter applies to both sides; lazy loading keeps only the speakers
    flt = quote(json.dumps({"senders": [alice.user_id], "lazy_load_members": True}))
    ctx = await bob.call("GET", f"{CS}/rooms/{room}/context/{quote(mid)}?limit=4&filter={flt}")
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[3], ids[1]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[7], ids[9]]
    members = {e["state_key"] for e in ctx["state"] if e["type"] == "m.room.member"}
    assert members == {alice.user_id}  # mid's sender (alice) and the returned events' senders
    assert ("m.room.create", "") in {(e["type"], e["state_key"]) for e in ctx["state"]}
    # at the end of the room: nothing after, the end token is past the last event
    last = await bob.call("GET", f"{CS}/rooms/{room}/context/{quote(ids[9])}?limit=2")
    assert last["events_after"] == []
    more = await bob.call("GET", f"{CS}/rooms/{room}/messages?dir=f&from={last['end']}")
    assert more["chunk"] == []
    only = await bob.call("GET", f"{CS}/rooms/{room}/context/{quote(mid)}?limit=0")
    assert only["events_before"] == only["events_after"] == []


async def test_context_refusals(pair: tuple[User, User, str], outsider: tuple[User, str]) -> None:
    alice, bob, room = pair
    eid = await alice.send(room, "x")
    outsider_user, elsewhere = outsider
    base = f"{CS}/rooms/{room}/context"
    assert (await outsider_user.call("GET", f"{base}/{quote(eid)}", expect=403))["errcode"] == (
        "M_FORBIDDEN"
    )
    assert (await bob.call("GET", f"{base}/{quote(elsewhere)}", expect=404))["errcode"] == (
        "M_NOT_FOUND"
    )
    assert (await bob.call("GET", f"{base}/{quote(eid)}?filter=nope", expect=400))[
        "errcode"
    ] == "M_NOT_JSON"
    assert (await bob.call("GET", f"{base}/{quote(eid)}?filter=%5B%5D", expect=400))[
        "errcode"
    ] == "M_BAD_JSON"
    assert (await bob.call("GET", f"{base}/{quote(eid)}?limit=x", expect=400))[
        "errcode"
    ] == "M_INVALID_PARAM"
    assert (await bob.call("GET", f"{base}/nope", expect=400))["errcode"] == "M_INVALID_PARAM"


async def test_relations_projection_is_verified_and_rebuilt(
    pair: tuple[User, User, str], db: Database
) -> None:
    alice, bob, room = pair
    root = await alice.send(room, "root")
    await reply(bob, room, root, "r")
    await react(bob, room, root, "+1")
    rows = await db.fetch("SELECT rel_type FROM event_relations WHERE room_id = $1", room)
    assert sorted(r["rel_type"] for r in rows) == ["m.annotation", "m.thread"]
    rebuilder = ProjectionRebuilder(db, EventStore(db), Projections(db, "hs.test"))
    assert (await rebuilder.verify_room(room)).clean
    await db.execute("DELETE FROM event_relations WHERE rel_type = 'm.thread'")
    drift = await rebuilder.verify_room(room)
    assert drift.tables == {"event_relations": (1, 0)}
    assert "m.relations" not in (await event(bob, room, root))["unsigned"]
    await rebuilder.rebuild_room(room)
    assert (await rebuilder.verify_room(room)).clean
    assert (await event(bob, room, root))["unsigned"]["m.relations"]["m.thread"]["count"] == 1


async def test_aggregations_cost_one_query_per_page(
    pair: tuple[User, User, str], db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many events a page holds, their aggregations are one query
    (and one more for the latest replies' own edits), on /messages and /sync;
    on /messages the page's own statement also says which events have
    relations at all, so a page without any costs no aggregation query."""
    alice, bob, room = pair
    roots = [await alice.send(room, f"root {i}") for i in range(12)]
    for r in roots:
        await reply(bob, room, r, "re")
    queries: list[str] = []
    real_fetch = db.fetch

    async def counting(sql: str, *args: Any) -> Any:
        if "event_relations" in sql:
            queries.append(sql)
        return await real_fetch(sql, *args)

    monkeypatch.setattr(db, "fetch", counting)
    page = await bob.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=30")
    bundled = [e for e in page["chunk"] if "m.relations" in e["unsigned"]]
    assert {e["event_id"] for e in bundled} == set(roots)
    assert len(queries) == 3, queries  # the page, the aggregations, their edits
    queries.clear()
    # A page of events nothing relates to: the page's statement only.
    plain = await alice.send(room, "nothing relates to this")
    page = await bob.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=1")
    assert [e["event_id"] for e in page["chunk"]] == [plain]
    assert len(queries) == 1, queries
    queries.clear()
    flt = quote(json.dumps({"room": {"timeline": {"limit": 30}}}))
    s = await bob.call("GET", f"{CS}/sync?filter={flt}")
    timeline = s["rooms"]["join"][room]["timeline"]["events"]
    assert {e["event_id"] for e in timeline if "m.relations" in e["unsigned"]} == set(roots)
    assert len(queries) == 2, queries


async def test_relations_of_a_database_from_before_are_derived_once_at_start(
    pair: tuple[User, User, str], db: Database
) -> None:
    alice, bob, room = pair
    root = await alice.send(room, "root")
    await reply(bob, room, root, "r")
    # as a database written before the table existed (schema version 2):
    # migration 0003 derives the rows
    await db.execute("DELETE FROM event_relations")
    await db.execute("DELETE FROM schema_version WHERE version > 2")
    await db.apply_schema()
    assert (await event(bob, room, root))["unsigned"]["m.relations"]["m.thread"]["count"] == 1
    # once: a later start derives nothing again
    await db.execute("DELETE FROM event_relations")
    await db.apply_schema()
    assert await db.fetchval("SELECT count(*) FROM event_relations") == 0


async def test_aggregations_never_show_what_the_reader_may_not_see(
    pair: tuple[User, User, str],
) -> None:
    """Bob left; the thread went on. The root he saw must not carry the
    reply or the edit written after he left (history visibility)."""
    alice, bob, room = pair
    await alice.put_state(room, "m.room.history_visibility", {"history_visibility": "joined"})
    root = await alice.send(room, "root")
    await reply(bob, room, root, "while bob was here")
    assert (await event(bob, room, root))["unsigned"]["m.relations"]["m.thread"]["count"] == 1
    await bob.membership(room, "leave")
    secret = await reply(alice, room, root, "after bob left")
    await edit(alice, room, root, "edited after bob left")
    seen = await event(bob, room, root)
    assert "m.thread" not in seen["unsigned"].get("m.relations", {})
    assert "m.replace" not in seen["unsigned"].get("m.relations", {})
    chunk = (await bob.call("GET", f"{CS}/rooms/{room}/messages?dir=b&limit=50"))["chunk"]
    assert secret not in json.dumps(chunk)
    # alice sees it all
    mine = (await event(alice, room, root))["unsigned"]["m.relations"]
    assert mine["m.thread"]["latest_event"]["event_id"] == secret and "m.replace" in mine
