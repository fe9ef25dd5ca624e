"""The append-only log, its projections, concurrency and rebuild."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import asyncpg
import pytest

from homeserver.core.events import StateKey
from homeserver.core.room_versions import V12
from homeserver.services.event_creator import Draft, EventCreator
from homeserver.services.notifier import Notifier
from homeserver.services.persister import Persister, StaleHead, room_lock_key
from homeserver.services.projection_rebuild import ProjectionRebuilder
from homeserver.services.room_head import HeadPlanner, StateResetAlarm, StateResolver
from homeserver.services.server_keys import ServerKeys
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.projections import PROJECTION_TABLES, Projections

SERVER = "hs.test"
ALICE = "@alice:hs.test"


@dataclass
class Writer:
    """One 'process': its own pool, caches, notifier and creator."""

    db: Database
    store: EventStore
    projections: Projections
    creator: EventCreator
    notifier: Notifier


async def make_writer(url: str, keys: ServerKeys) -> Writer:
    db = await Database.connect(url, min_size=1, max_size=5)
    store = EventStore(db)
    proj = Projections(db, SERVER)
    notifier = Notifier(url)
    await notifier.start()
    resolver = StateResolver(store)
    planner = HeadPlanner(store, resolver, StateResetAlarm(store))
    creator = EventCreator(db, store, Persister(store, proj, notifier, planner), keys)
    return Writer(db, store, proj, creator, notifier)


@pytest.fixture
async def writers(db_url: str, tmp_path) -> AsyncIterator[tuple[Writer, Writer]]:  # type: ignore[no-untyped-def]
    from homeserver.services.server_keys import load_or_create_signing_key

    keys = ServerKeys(SERVER, load_or_create_signing_key(tmp_path / "k"))
    a = await make_writer(db_url, keys)
    b = await make_writer(db_url, keys)
    yield a, b
    for w in (a, b):
        await w.notifier.stop()
        await w.db.close()


async def new_room(w: Writer) -> str:
    drafts = [
        Draft("m.room.create", ALICE, {"room_version": "12"}, state_key=""),
        Draft("m.room.member", ALICE, {"membership": "join"}, state_key=ALICE),
        Draft(
            "m.room.power_levels",
            ALICE,
            {"users": {}, "events_default": 0, "state_default": 50},
            state_key="",
        ),
        Draft("m.room.join_rules", ALICE, {"join_rule": "public"}, state_key=""),
    ]
    room_id, _ = await w.creator.create_room(V12, drafts)
    return room_id


async def test_race_fifty_appends_two_connections(writers: tuple[Writer, Writer]) -> None:
    a, b = writers
    room = await new_room(a)

    async def send(w: Writer, i: int) -> str:
        (ev,) = await w.creator.send(
            room, [Draft("m.room.message", ALICE, {"msgtype": "m.text", "body": str(i)})]
        )
        return ev.event_id

    ids = await asyncio.gather(*(send(a if i % 2 else b, i) for i in range(50)))
    assert len(set(ids)) == 50
    rows = await a.db.fetch(
        "SELECT event_id, depth, stream_ordering, json FROM events WHERE room_id = $1 "
        "ORDER BY stream_ordering",
        room,
    )
    assert len(rows) == 54
    known = {r["event_id"]: r for r in rows}
    edges = await a.db.fetch(
        "SELECT event_id, prev_event_id FROM event_edges WHERE room_id = $1", room
    )
    for e in edges:  # every prev event exists and is older
        prev = known[e["prev_event_id"]]
        cur = known[e["event_id"]]
        assert prev["depth"] < cur["depth"]
        assert prev["stream_ordering"] < cur["stream_ordering"]
    depths = [r["depth"] for r in rows]
    assert depths == sorted(depths)
    ext = await a.store.forward_extremities(room)
    assert len(ext) == 1 and ext[0] == rows[-1]["event_id"]
    # the position readers see covers every event
    pos = await a.store.current_position()
    assert pos >= rows[-1]["stream_ordering"]
    drift = await ProjectionRebuilder(a.db, a.store, a.projections).verify_room(room)
    assert drift.clean, drift.tables


async def test_no_visible_gaps_while_writing(writers: tuple[Writer, Writer]) -> None:
    """A reader that sees position N sees every event at or below N."""
    a, b = writers
    rooms = [await new_room(a) for _ in range(4)]
    stop = asyncio.Event()
    problems: list[str] = []

    async def reader() -> None:
        # Reserved positions that were abandoned may stay empty, but no event
        # at or below a position a reader saw may appear afterwards.
        while not stop.is_set():
            pos = await b.store.current_position()
            q = "SELECT count(*) FROM events WHERE stream_ordering <= $1"
            seen = await b.db.fetchval(q, pos)
            await asyncio.sleep(0.001)
            later = await b.db.fetchval(q, pos)
            if later != seen:
                problems.append(f"pos {pos}: saw {seen} events, later {later}")

    async def writer(w: Writer, k: int) -> None:
        for i in range(15):
            await w.creator.send(
                rooms[(i + k) % 4],
                [Draft("m.room.message", ALICE, {"msgtype": "m.text", "body": f"{k}-{i}"})],
            )

    task = asyncio.create_task(reader())
    await asyncio.gather(*(writer(a if k % 2 else b, k) for k in range(6)))
    stop.set()
    await task
    assert problems == []


async def test_log_is_append_only(writers: tuple[Writer, Writer]) -> None:
    a, _ = writers
    room = await new_room(a)
    for sql in (
        "UPDATE events SET sender = 'x' WHERE room_id = $1",
        "DELETE FROM events WHERE room_id = $1",
        "DELETE FROM event_edges WHERE room_id = $1",
        "UPDATE state_group_entries SET event_id = 'x' WHERE room_id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await a.db.execute(sql, room)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await a.db.execute("TRUNCATE events CASCADE")
    assert await a.store.count_events(room) == 4


async def test_rebuild_restores_projections(writers: tuple[Writer, Writer]) -> None:
    a, _ = writers
    room = await new_room(a)
    bob = "@bob:hs.test"
    await a.creator.send(room, [Draft("m.room.member", bob, {"membership": "join"}, state_key=bob)])
    await a.creator.send(room, [Draft("m.room.name", ALICE, {"name": "n"}, state_key="")])
    eid = (await a.creator.send(room, [Draft("m.room.message", bob, {"body": "x"})]))[0].event_id
    await a.creator.send(room, [Draft("m.room.redaction", ALICE, {"redacts": eid}, redacts=eid)])
    await a.creator.send(
        room, [Draft("m.room.member", bob, {"membership": "leave"}, state_key=bob)]
    )

    async def dump() -> dict[str, list[tuple]]:
        out = {}
        for t in PROJECTION_TABLES:
            rows = await a.db.fetch(f"SELECT * FROM {t} WHERE room_id = $1", room)
            out[t] = sorted(tuple(sorted(dict(r).items())) for r in rows)
        return out

    before = await dump()
    assert before["current_state"] and before["room_members"] and before["event_redactions"]
    for t in PROJECTION_TABLES:
        await a.db.execute(f"DELETE FROM {t}")
    rebuilder = ProjectionRebuilder(a.db, a.store, a.projections)
    drift = await rebuilder.verify_room(room)
    assert not drift.clean
    await rebuilder.rebuild_all()
    assert await dump() == before
    assert (await rebuilder.verify_room(room)).clean


async def test_state_snapshots_are_deltas(writers: tuple[Writer, Writer]) -> None:
    a, _ = writers
    room = await new_room(a)
    for i in range(30):
        user = f"@u{i}:hs.test"
        await a.creator.send(
            room, [Draft("m.room.member", user, {"membership": "join"}, state_key=user)]
        )
    groups = await a.db.fetch(
        "SELECT g.group_id, g.prev_group, count(s.*) AS n FROM state_groups g "
        "JOIN state_group_entries s USING (group_id) WHERE g.room_id = $1 "
        "GROUP BY g.group_id, g.prev_group ORDER BY g.group_id",
        room,
    )
    deltas = [g for g in groups if g["prev_group"] is not None]
    assert len(deltas) >= 30 and all(g["n"] == 1 for g in deltas)
    # the state read back through the chain has every member
    ext = await a.store.forward_extremities(room)
    state = await EventStore(a.db).state_after_event(ext[0])
    assert state is not None
    assert sum(1 for (t, _) in state if t == "m.room.member") == 31


async def test_optimistic_append_refused_when_the_head_moved(
    writers: tuple[Writer, Writer],
) -> None:
    """A message batch is first written without the room lock, in one
    statement that must remove the extremities it was built on: when
    another process moved the room meanwhile, nothing is written, its
    positions are released, and the next send goes through normally."""
    a, b = writers
    room = await new_room(a)
    async with a.db.pool.acquire() as conn:
        wc = await a.store.writer_context(conn, room, 1, [])
        ctx = await a.creator._load_context(room, conn, wc.extremities)
        assert ctx is not None
        entries, events = await a.creator._build_request(
            ctx, room, [Draft("m.room.message", ALICE, {"body": "stale"})]
        )
        (moved,) = await b.creator.send(room, [Draft("m.room.message", ALICE, {"body": "b"})])
        with pytest.raises(StaleHead):
            await a.creator._persister.commit_plain(conn, room, entries, wc.positions)
    stale = events[0].event_id
    assert await a.db.fetchval("SELECT count(*) FROM events WHERE event_id = $1", stale) == 0
    assert await a.db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    assert await a.store.forward_extremities(room) == [moved.event_id]
    (ev,) = await a.creator.send(room, [Draft("m.room.message", ALICE, {"body": "again"})])
    assert list(ev.prev_events) == [moved.event_id]
    assert await a.store.forward_extremities(room) == [ev.event_id]


async def test_pooled_connection_keeps_no_room_lock(writers: tuple[Writer, Writer]) -> None:
    """Pooled connections skip asyncpg's reset round trip, except after a
    session lock was left held (a cancelled writer): then it is dropped
    before the connection is reused."""
    a, _ = writers
    async with a.db.pool.acquire() as conn:
        await a.creator._persister.lock_room(conn, "!left:hs.test")
    other = await asyncpg.connect(a.db.url)
    try:
        got = await other.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", *room_lock_key("!left:hs.test")
        )
        assert got is True
    finally:
        await other.close()


async def test_counter_reseeded_above_every_stream(writers: tuple[Writer, Writer]) -> None:
    """The position counter is unlogged (lost in a crash): it is re-seeded
    above every position in use, account data and receipts included, so no
    position is handed out twice."""
    a, _ = writers
    room = await new_room(a)
    await a.db.execute(
        "INSERT INTO account_data (user_id, room_id, type, content, stream_ordering) "
        "VALUES ($1, '', 'x.test', '{}'::jsonb, 1000000)",
        ALICE,
    )
    await a.db.execute("DELETE FROM stream_counter")
    (ev,) = await a.creator.send(room, [Draft("m.room.message", ALICE, {"body": "after"})])
    got = await a.store.get_event(ev.event_id)
    assert got is not None and got.stream_ordering > 1_000_000


async def test_messages_on_a_known_head_take_one_statement(
    writers: tuple[Writer, Writer],
) -> None:
    """A process that wrote a room last appends the next messages in one
    statement (positions allocated in it); when another process moved the
    room meanwhile, or a transaction id repeats, it falls back and the log
    stays one consistent DAG."""
    a, b = writers
    room = await new_room(a)

    def msg(body: str, txn: str | None = None) -> list[Draft]:
        return [
            Draft(
                "m.room.message",
                ALICE,
                {"body": body},
                txn=(ALICE, "DEV", txn) if txn else None,
            )
        ]

    await a.creator.send(room, msg("first"))
    before = a.creator.one_statement_appends
    (e2,) = await a.creator.send(room, msg("second"))
    assert a.creator.one_statement_appends == before + 1
    (e3,) = await b.creator.send(room, msg("from the other process"))
    (e4,) = await a.creator.send(room, msg("after it"))  # stale head: falls back
    assert list(e4.prev_events) == [e3.event_id]
    (e5,) = await a.creator.send(room, msg("once", "t1"))
    (e6,) = await a.creator.send(room, msg("once", "t1"))  # a retried request
    assert e6.event_id == e5.event_id
    got = [await a.store.get_event(e.event_id) for e in (e2, e3, e4, e5)]
    positions = [g.stream_ordering for g in got if g is not None]
    assert positions == sorted(positions) and len(positions) == 4
    assert await a.store.current_position() >= positions[-1]
    assert await a.db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    assert await a.store.forward_extremities(room) == [e5.event_id]
    drift = await ProjectionRebuilder(a.db, a.store, a.projections).verify_room(room)
    assert drift.clean, drift.tables


async def _rejoined_room(a: Writer, user: str) -> tuple[Mapping[StateKey, str], EventStore]:
    """A room ``user`` joined, left and joined again (a membership chain),
    its current state, and an event store with cold caches (another process)."""
    room = await new_room(a)
    for m in ("join", "leave", "join"):
        await a.creator.send(
            room, [Draft("m.room.member", user, {"membership": m}, state_key=user)]
        )
    return await a.store.current_state_ids(room), EventStore(a.db)


async def test_auth_chains_are_read_once_and_agree_with_the_log(
    writers: tuple[Writer, Writer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each event's auth chain, read for state resolution, is the closure
    of its auth events in the log; read again, it costs no query."""
    a, _ = writers
    user = "@bob:hs.test"
    state, store = await _rejoined_room(a, user)
    chains = await store.auth_chains(state.values())
    assert set(chains) == set(state.values())
    for eid, chain in chains.items():
        want: set[str] = set()
        todo = [eid]
        while todo:
            ev = await a.store.get_event_objs([todo.pop()])
            for e in ev.values():
                for aid in e.auth_events:
                    if aid not in want:
                        want.add(aid)
                        todo.append(aid)
        assert chain == want, eid
    create = state[("m.room.create", "")]
    assert chains[create] == frozenset()
    member = chains[state[("m.room.member", user)]]
    assert len(member) >= 4  # PL, join rules, the earlier memberships (v12 cites no create)
    calls = 0
    real = a.db.fetch

    async def counting(*args: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        return await real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(a.db, "fetch", counting)
    assert await store.auth_chains(state.values()) == chains
    assert calls == 0


async def test_cached_chains_and_states_share_their_strings(writers: tuple[Writer, Writer]) -> None:
    """The caches of auth chains and state maps hold each event id once:
    chains overlap (each membership's chain holds the one before) and the
    states of a room repeat most of their entries, so the cache's memory is
    a slot per entry, not a string per entry (the soak's growth)."""
    a, _ = writers
    user = "@bob:hs.test"
    state, store = await _rejoined_room(a, user)
    member = state[("m.room.member", user)]
    others = [e for e in state.values() if e != member]
    first = await store.auth_chains([member])
    rest = await store.auth_chains(others)  # read by another query
    seen = {id(x): x for c in rest.values() for x in c}
    common = [x for x in first[member] if x in {y for c in rest.values() for y in c}]
    assert common and all(id(x) in seen for x in common)
    # Two state groups of the room: the same keys and ids, the same objects.
    joined = await a.store.get_event(member)
    pl = await a.store.get_event(state[("m.room.power_levels", "")])
    assert joined is not None and pl is not None and joined.state_group != pl.state_group
    s1 = await store.state_at_group(joined.state_group)
    s2 = await store.state_at_group(pl.state_group)
    shared = [key for key, eid in s1.items() if s2.get(key) == eid]
    assert len(shared) >= 3
    for key in shared:
        (k2,) = [k for k in s2 if k == key]
        assert k2[0] is key[0] and k2[1] is key[1] and s2[key] is s1[key]


async def test_the_auth_chain_cache_is_bounded_in_bytes(writers: tuple[Writer, Writer]) -> None:
    """The auth-chain cache weighs each chain by its set's table, not by its
    ids: a set's table grows fourfold when it passes 60% full (1,229 ids take
    128 KB, 1,228 take 32 KB), so a bound on ids let the soak's servers grow
    by some 28 MB when long membership chains crossed that size."""
    import sys

    from homeserver.storage.events import AUTH_CHAIN_BYTES

    assert sys.getsizeof(frozenset(map(str, range(1229)))) > 3 * sys.getsizeof(
        frozenset(map(str, range(1228)))
    )
    a, _ = writers
    state, _ = await _rejoined_room(a, "@bob:hs.test")
    bound = 650  # bytes: three small chains (216 bytes each) fit, not all five
    store = EventStore(a.db, cache_factor=bound / AUTH_CHAIN_BYTES)
    chains = await store.auth_chains(state.values())
    cache = store._auth_chains
    assert cache.fill.bound == bound
    assert cache.fill.weight == sum(sys.getsizeof(c) for c in cache.values()) <= bound
    assert 0 < len(cache) < len(chains)
