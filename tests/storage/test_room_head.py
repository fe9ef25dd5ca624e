"""The one write path's head: extremities, current state, resolution, alarms.

Forks are made by hand: an event built on an older event of the room (as a
remote server's concurrent event would be) and written through the same
``Persister.commit`` every event takes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from homeserver.core.events import Event, auth_types_for_event, build_event
from homeserver.core.room_versions import V12
from homeserver.services.clock import now_ms
from homeserver.services.event_creator import Draft
from homeserver.services.persister import Pending, StaleHead
from homeserver.services.projection_rebuild import ProjectionRebuilder
from homeserver.services.server_keys import ServerKeys, load_or_create_signing_key
from tests.storage.test_event_store import ALICE, SERVER, Writer, make_writer

BOB = "@bob:hs.test"
CAROL = "@carol:hs.test"


@pytest.fixture
async def setup(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Writer, ServerKeys]]:
    keys = ServerKeys(SERVER, load_or_create_signing_key(tmp_path / "k"))
    w = await make_writer(db_url, keys)
    yield w, keys
    await w.notifier.stop()
    await w.db.close()


async def room_with_bob(w: Writer) -> str:
    """Alice (100) and Bob (50, who may change power levels)."""
    drafts = [
        Draft("m.room.create", ALICE, {"room_version": "12"}, state_key=""),
        Draft("m.room.member", ALICE, {"membership": "join"}, state_key=ALICE),
        Draft(
            "m.room.power_levels",
            ALICE,
            {
                "users": {BOB: 50},
                "events": {"m.room.power_levels": 50, "m.room.name": 50},
                "state_default": 50,
                "kick": 50,
            },
            state_key="",
        ),
        Draft("m.room.join_rules", ALICE, {"join_rule": "public"}, state_key=""),
    ]
    room, _ = await w.creator.create_room(V12, drafts)
    await w.creator.send(room, [Draft("m.room.member", BOB, {"membership": "join"}, state_key=BOB)])
    return room


async def head(w: Writer, room: str) -> tuple[str, dict[Any, str], int]:
    (ext,) = await w.store.forward_extremities(room)
    se = await w.store.get_event(ext)
    assert se is not None and se.state_group is not None
    return ext, dict(await w.store.state_at_group(se.state_group)), se.state_group


async def fork(
    w: Writer,
    keys: ServerKeys,
    room: str,
    on: tuple[str, dict[Any, str], int],
    sender: str,
    type: str,
    content: dict[str, Any],
    state_key: str | None = None,
    prev: Sequence[str] | None = None,
) -> Event:
    """Write an event built on ``on`` (an older head), as a concurrent
    server would, through the one write path."""
    parent, state, group = on
    parent_ev = await w.store.get_event(parent)
    assert parent_ev is not None
    types = auth_types_for_event(V12, type, state_key, sender, content)
    ev = build_event(
        V12,
        room_id=room,
        sender=sender,
        type=type,
        content=content,
        state_key=state_key,
        prev_events=list(prev or [parent]),
        auth_events=[state[k] for k in types if k in state],
        depth=parent_ev.event.depth + 1,
        origin_server_ts=now_ms(),
        server_name=SERVER,
        signing_key=keys.signing_key,
    )
    persister = w.creator._persister
    async with w.db.pool.acquire() as conn:
        await persister.lock_room(conn, room)
        try:
            await persister.commit(
                conn, room, [Pending(event=ev, state_before=state, before_group=group)]
            )
        finally:
            await persister.unlock_room(conn, room)
    return ev


async def current(w: Writer, room: str) -> dict[Any, str]:
    return await w.store.current_state_ids(room)


async def no_drift(w: Writer, room: str) -> None:
    drift = await ProjectionRebuilder(w.db, w.store, w.projections).verify_room(room)
    assert drift.clean, drift.tables


async def test_fork_then_state_change_citing_both_is_current(
    setup: tuple[Writer, ServerKeys],
) -> None:
    """The issue-15 case in one process: two concurrent messages fork the
    DAG, a rename cites both; the rename is the current name."""
    w, keys = setup
    room = await room_with_bob(w)
    base = await head(w, room)
    (mine,) = await w.creator.send(room, [Draft("m.room.message", ALICE, {"body": "a"})])
    theirs = await fork(w, keys, room, base, BOB, "m.room.message", {"body": "b"})
    assert set(await w.store.forward_extremities(room)) == {mine.event_id, theirs.event_id}
    rename = await fork(
        w,
        keys,
        room,
        base,
        BOB,
        "m.room.name",
        {"name": "new"},
        "",
        prev=[mine.event_id, theirs.event_id],
    )
    assert await w.store.forward_extremities(room) == [rename.event_id]
    assert (await current(w, room))[("m.room.name", "")] == rename.event_id
    assert w.creator._persister.planner.alarm.count == 0
    await no_drift(w, room)


async def test_concurrent_state_on_two_branches_is_resolved(
    setup: tuple[Writer, ServerKeys],
) -> None:
    """Two names set on two branches: the current state is the resolution
    of both branches (not whichever arrived last), and the next local event
    merges the branches."""
    w, keys = setup
    room = await room_with_bob(w)
    base = await head(w, room)
    (a,) = await w.creator.send(
        room, [Draft("m.room.name", ALICE, {"name": "alice's"}, state_key="")]
    )
    b = await fork(w, keys, room, base, BOB, "m.room.name", {"name": "bob's"}, "")
    ext = set(await w.store.forward_extremities(room))
    assert ext == {a.event_id, b.event_id}
    resolver = w.creator._persister.planner.resolver
    sa = await w.store.state_after_event(a.event_id)
    sb = await w.store.state_after_event(b.event_id)
    assert sa is not None and sb is not None
    expected = await resolver.resolve(V12, room, [sa, sb])
    assert await current(w, room) == expected
    (merge,) = await w.creator.send(room, [Draft("m.room.message", ALICE, {"body": "m"})])
    assert set(merge.prev_events) == ext
    assert await w.store.forward_extremities(room) == [merge.event_id]
    assert await current(w, room) == expected
    await no_drift(w, room)


async def test_alarm_on_a_legitimately_rolled_back_power_level(
    setup: tuple[Writer, ServerKeys],
) -> None:
    """Bob (50) changes the power levels; concurrently Alice (100) kicks
    him. Resolution applies the kick first (greater sender power) and Bob's
    change then fails: the power levels go back to the ancestor of the
    current ones. Legitimate — and exactly what the alarm reports."""
    w, keys = setup
    room = await room_with_bob(w)
    base = await head(w, room)
    pl1 = base[1][("m.room.power_levels", "")]
    (pl2,) = await w.creator.send(
        room,
        [
            Draft(
                "m.room.power_levels",
                BOB,
                {
                    "users": {BOB: 50, CAROL: 50},
                    "events": {"m.room.power_levels": 50, "m.room.name": 50},
                    "state_default": 50,
                    "kick": 50,
                },
                state_key="",
            )
        ],
    )
    assert (await current(w, room))[("m.room.power_levels", "")] == pl2.event_id
    alarm = w.creator._persister.planner.alarm
    assert alarm.count == 0
    kick = await fork(w, keys, room, base, ALICE, "m.room.member", {"membership": "leave"}, BOB)
    now = await current(w, room)
    assert now[("m.room.power_levels", "")] == pl1
    assert now[("m.room.member", BOB)] == kick.event_id
    assert alarm.count == 1
    (recorded,) = await w.store.state_reset_alarms()
    assert recorded[:5] == (room, "m.room.power_levels", "", pl2.event_id, pl1)
    await no_drift(w, room)


async def test_one_statement_append_refused_beside_another_branch(
    setup: tuple[Writer, ServerKeys],
) -> None:
    """The fast path's premise is checked by its statement: it removes all
    the room's extremities or writes nothing."""
    w, keys = setup
    room = await room_with_bob(w)
    base = await head(w, room)
    async with w.db.pool.acquire() as conn:
        wc = await w.store.writer_context(conn, room, 1, [])
        ctx = await w.creator._load_context(room, conn, wc.extremities)
        assert ctx is not None
        entries, _ = await w.creator._build_request(
            ctx, room, [Draft("m.room.message", ALICE, {"body": "stale"})]
        )
        other = await fork(w, keys, room, base, BOB, "m.room.message", {"body": "b"})
        # ``other`` cites the same parent: the removed extremity is gone.
        with pytest.raises(StaleHead):
            await w.creator._persister.commit_plain(conn, room, entries, wc.positions)
    assert await w.store.forward_extremities(room) == [other.event_id]
    # A fork next to the head the fast path knows: refused as well.
    base2 = await head(w, room)
    mine = await w.creator.send(room, [Draft("m.room.message", ALICE, {"body": "x"})])
    beside = await fork(w, keys, room, base2, BOB, "m.room.message", {"body": "y"})
    assert set(await w.store.forward_extremities(room)) == {mine[0].event_id, beside.event_id}
    (merged,) = await w.creator.send(room, [Draft("m.room.message", ALICE, {"body": "z"})])
    assert set(merged.prev_events) == {mine[0].event_id, beside.event_id}
    assert await w.store.forward_extremities(room) == [merged.event_id]
    await no_drift(w, room)


async def test_one_statement_append_refused_while_the_room_is_locked(
    setup: tuple[Writer, ServerKeys],
) -> None:
    w, _ = setup
    room = await room_with_bob(w)
    persister = w.creator._persister
    async with w.db.pool.acquire() as holder, w.db.pool.acquire() as conn:
        await persister.lock_room(holder, room)
        try:
            wc = await w.store.writer_context(conn, room, 1, [])
            ctx = await w.creator._load_context(room, conn, wc.extremities)
            assert ctx is not None
            entries, _ = await w.creator._build_request(
                ctx, room, [Draft("m.room.message", ALICE, {"body": "locked out"})]
            )
            with pytest.raises(StaleHead):
                await persister.commit_plain(conn, room, entries, wc.positions)
        finally:
            await persister.unlock_room(holder, room)


async def test_two_processes_writing_one_room_merge_at_once(db_url: str, tmp_path: Path) -> None:
    """Issue 18.5: two 'processes' (own pools, caches and writer tasks)
    sending into one room at the same time used to grow two chains side by
    side for hundreds of events. Now a branch lasts until the next write:
    every fork point is merged within a few events, and the room ends with
    one extremity."""
    import asyncio

    keys = ServerKeys(SERVER, load_or_create_signing_key(tmp_path / "k"))
    a, b = await make_writer(db_url, keys), await make_writer(db_url, keys)
    try:
        room = await room_with_bob(a)

        async def burst(w: Writer, who: str, n: int) -> None:
            for i in range(n):
                await w.creator.send(room, [Draft("m.room.message", who, {"body": f"{who}{i}"})])

        await asyncio.gather(*(burst(w, u, 60) for w in (a, b) for u in (ALICE, BOB)))
        await a.creator.send(room, [Draft("m.room.message", ALICE, {"body": "last"})])
        assert len(await a.store.forward_extremities(room)) == 1
        rows = await a.db.fetch(
            "SELECT g.event_id, g.prev_event_id, e.depth FROM event_edges g "
            "JOIN events e USING (event_id) WHERE g.room_id = $1",
            room,
        )
        children: dict[str, list[str]] = {}
        prevs: dict[str, list[str]] = {}
        depth: dict[str, int] = {}
        for r in rows:
            children.setdefault(r["prev_event_id"], []).append(r["event_id"])
            prevs.setdefault(r["event_id"], []).append(r["prev_event_id"])
            depth[r["event_id"]] = r["depth"]
        forks = [p for p, c in children.items() if len(c) > 1]
        longest = 0
        for f in forks:
            # Walk down every branch from the fork until an event that
            # merges (cites several prev events): the fork's lifetime.
            for child in children[f]:
                steps, cur = 1, child
                while len(prevs.get(cur, [])) < 2 and children.get(cur):
                    cur = children[cur][0]
                    steps += 1
                longest = max(longest, steps)
        assert longest <= 3, f"a branch ran {longest} events before merging ({len(forks)} forks)"
        await no_drift(a, room)
    finally:
        for w in (a, b):
            await w.notifier.stop()
            await w.db.close()
