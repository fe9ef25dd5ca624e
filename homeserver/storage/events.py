"""The room DAG: events, edges, state groups, and reads over them.

Tables owned: events, event_edges, event_auth, state_groups,
state_group_entries, rooms, stream_inflight, stream_counter. Projections are
in ``projections.py``; the write path that ties them together is
``services/persister.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from sys import intern
from typing import Any

import asyncpg

from homeserver.core.events import Event, StateKey
from homeserver.core.lru import LRU, CacheFill, scaled
from homeserver.core.room_versions import RoomVersion, get_room_version
from homeserver.storage.database import Database
from homeserver.storage.projections import head_ctes

# A state group chain longer than this is cut by a full snapshot, so reading
# the state at any event walks at most this many deltas.
MAX_STATE_CHAIN = 50

StateMap = dict[StateKey, str]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event with what the server decided about it at receipt."""

    event: Event
    stream_ordering: int
    rejected_reason: str | None
    soft_failed: bool
    outlier: bool
    state_group: int | None
    txn_id: str | None = None
    txn_device_id: str | None = None


@dataclass(frozen=True, slots=True)
class TimelinePage:
    """A page of a room's timeline with what serialising it needs besides
    the events, read by the same statement: the redactions of each event
    and which events are the target of a relation (the others have no
    aggregations to look up)."""

    events: list[StoredEvent]
    redactions: dict[str, list[str]]
    related: frozenset[str]


@dataclass(frozen=True, slots=True)
class WriterContext:
    """See ``EventStore.writer_context``."""

    extremities: list[str]
    seen_txns: dict[tuple[str, str, str], str]
    positions: list[int]
    federated: bool


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event to append, with its place in the log already decided."""

    event: Event
    stream_ordering: int
    state_group: int | None
    rejected_reason: str | None = None
    soft_failed: bool = False
    outlier: bool = False
    received_ts: int = 0
    txn: tuple[str, str, str] | None = None  # (user_id, device_id, txn_id)
    redacted_pdu: Mapping[str, Any] | None = None


# State entries kept across all cached state groups (a slot and a key tuple
# each, their strings interned and shared: some 25 MB when full).
STATE_CACHE_ENTRIES = 200_000
# Bytes of the cached auth chains' hash tables (their ids are interned and
# shared with the rest of the process). Weighed by table, not by ids: a set's
# table grows fourfold when it passes 60% full, so a chain of 1,229 ids takes
# 128 KB and one of 1,228 takes 32 KB. A bound on ids (500,000 before) was
# none on bytes: the soak saw the cache step up by some 28 MB on both servers
# when the re-joining users' membership chains passed 1,229 ids.
AUTH_CHAIN_BYTES = 24 * 2**20


# A state group and its entries in one statement (see create_state_group).
_NEW_STATE_GROUP = (
    "WITH g AS (INSERT INTO state_groups (group_id, room_id, prev_group, chain_length) "
    "  VALUES (nextval('state_group_seq'), $1, $2, $3) RETURNING group_id), "
    "e AS (INSERT INTO state_group_entries (group_id, room_id, type, state_key, event_id) "
    "  SELECT g.group_id, $1, u.t, u.sk, u.ev FROM g, "
    "  unnest($4::text[], $5::text[], $6::text[]) AS u(t, sk, ev)) "
    "SELECT group_id FROM g"
)

# The highest position below which nothing can still appear: just under the
# oldest position reserved by a writer that has not committed yet.
CURRENT_POSITION_SQL = (
    "SELECT COALESCE((SELECT min(pos) - 1 FROM stream_inflight), "
    "(SELECT pos FROM stream_counter WHERE id = 1), "
    "(SELECT max(stream_ordering) FROM events), 0)"
)

_INSERT_EVENTS_CTES = (
    "WITH ev AS (INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, "
    "  sender, depth, origin_server_ts, received_ts, json, redacted_json, rejected_reason, "
    "  soft_failed, outlier, state_group, txn_user_id, txn_device_id, txn_id) "
    "  SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], "
    "  $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], "
    "  $12::text[], $13::boolean[], $14::boolean[], $15::bigint[], $16::text[], $17::text[], "
    "  $18::text[])), "
    "ed AS (INSERT INTO event_edges (event_id, prev_event_id, room_id) "
    "  SELECT * FROM unnest($19::text[], $20::text[], $21::text[]) ON CONFLICT DO NOTHING), "
    "au AS (INSERT INTO event_auth (event_id, auth_id, room_id) "
    "  SELECT * FROM unnest($22::text[], $23::text[], $24::text[]) ON CONFLICT DO NOTHING), "
    "rel AS (DELETE FROM stream_inflight WHERE pos = $25::bigint) "
)
_INSERT_EVENTS_SQL = (
    _INSERT_EVENTS_CTES + "SELECT pg_notify($26::text, $27::text) WHERE $26::text IS NOT NULL"
)
_INSERT_EVENTS_WITH_HEAD_SQL = (
    _INSERT_EVENTS_CTES + ", " + head_ctes(28, checked=True) + " SELECT (SELECT ok FROM head_ok), "
    "CASE WHEN $26::text IS NOT NULL THEN pg_notify($26::text, $27::text) END"
)
# The same for a writer holding the room lock, whose head needs no check.
_INSERT_EVENTS_WITH_LOCKED_HEAD_SQL = (
    _INSERT_EVENTS_CTES + ", " + head_ctes(28) + " SELECT "
    "CASE WHEN $26::text IS NOT NULL THEN pg_notify($26::text, $27::text) END"
)

# The same, for a writer that also allocates the stream positions (see
# ``append_allocating``): $1 = how many, event columns without positions.
_APPEND_ALLOCATING_SQL = (
    "WITH bump AS (UPDATE stream_counter SET pos = pos + $1 WHERE id = 1 RETURNING pos), "
    "ev AS (INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, "
    "  sender, depth, origin_server_ts, received_ts, json, redacted_json, rejected_reason, "
    "  soft_failed, outlier, state_group, txn_user_id, txn_device_id, txn_id) "
    "  SELECT (SELECT pos FROM bump) - $1 + u.ord, u.event_id, u.room_id, u.type, "
    "  u.state_key, u.sender, u.depth, u.ots, u.rts, u.json, u.rjson, u.rej, u.sf, u.outlier, "
    "  u.sg, u.tu, u.td, u.ti FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], "
    "  $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], "
    "  $12::text[], $13::boolean[], $14::boolean[], $15::bigint[], $16::text[], $17::text[], "
    "  $18::text[]) WITH ORDINALITY AS u(event_id, room_id, type, state_key, sender, depth, "
    "  ots, rts, json, rjson, rej, sf, outlier, sg, tu, td, ti, ord)), "
    "ed AS (INSERT INTO event_edges (event_id, prev_event_id, room_id) "
    "  SELECT * FROM unnest($19::text[], $20::text[], $21::text[]) ON CONFLICT DO NOTHING), "
    "au AS (INSERT INTO event_auth (event_id, auth_id, room_id) "
    "  SELECT * FROM unnest($22::text[], $23::text[], $24::text[]) ON CONFLICT DO NOTHING), "
    + head_ctes(25, checked=True, last_expr="(SELECT pos FROM bump)")
    + " SELECT (SELECT pos FROM bump) AS last, (SELECT ok FROM head_ok) AS ok, "
    "CASE WHEN $31::text IS NOT NULL "
    "THEN pg_notify($31::text, (SELECT pos FROM bump)::text || ' ' || $25::text) END"
)

_EVENT_COLS = (
    "e.stream_ordering, e.event_id, e.json, e.redacted_json, e.rejected_reason, "
    "e.soft_failed, e.outlier, e.state_group, e.txn_id, e.txn_device_id, r.room_version"
)


def _columns(
    items: Sequence[NewEvent],
) -> tuple[list[list[Any]], list[list[str]], list[list[str]]]:
    """``items`` as parallel arrays for ``unnest``: the event columns (from
    stream_ordering on), the DAG edges and the auth edges."""
    ev_rows = []
    edge_rows: list[tuple[str, str, str]] = []
    auth_rows: list[tuple[str, str, str]] = []
    for it in items:
        e = it.event
        txn = it.txn or (None, None, None)
        ev_rows.append(
            (
                it.stream_ordering,
                e.event_id,
                e.room_id,
                e.type,
                e.state_key,
                e.sender,
                e.depth,
                e.origin_server_ts,
                it.received_ts,
                json.dumps(e.pdu),
                json.dumps(it.redacted_pdu) if it.redacted_pdu is not None else None,
                it.rejected_reason,
                it.soft_failed,
                it.outlier,
                it.state_group,
                txn[0],
                txn[1],
                txn[2],
            )
        )
        edge_rows.extend((e.event_id, p, e.room_id) for p in e.prev_events)
        auth_rows.extend((e.event_id, a, e.room_id) for a in e.auth_events)
    columns = [list(c) for c in zip(*ev_rows, strict=True)]
    edges = [list(c) for c in zip(*edge_rows, strict=True)] or [[], [], []]
    auths = [list(c) for c in zip(*auth_rows, strict=True)] or [[], [], []]
    return columns, edges, auths


class EventStore:
    """Reads and writes of the log. Events and state groups never change once
    written, so both are cached in memory without invalidation."""

    def __init__(
        self, db: Database, *, cache_size: int = 10_000, cache_factor: float = 1.0
    ) -> None:
        self._db = db
        self._events = LRU(cache_size)
        self._groups = LRU(scaled(STATE_CACHE_ENTRIES, cache_factor), weigh=len)
        # group id → chain length (never changes)
        self._chains = LRU(scaled(20_000, cache_factor))
        # event id → its auth chain (never changes), 24 MB of tables in all
        self._auth_chains = LRU(scaled(AUTH_CHAIN_BYTES, cache_factor), weigh=sys.getsizeof)
        self._room_versions: dict[str, RoomVersion] = {}

    @property
    def db(self) -> Database:
        return self._db

    def caches(self) -> dict[str, CacheFill]:
        return {
            "events": self._events.fill,
            "state_groups": self._groups.fill,
            "state_group_chain_lengths": self._chains.fill,
            "auth_chains": self._auth_chains.fill,
        }

    # ---------------------------------------------------------------- rooms
    async def create_room_row(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        version: RoomVersion,
        creator: str,
        ts: int,
    ) -> None:
        await conn.execute(
            "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES ($1,$2,$3,$4) "
            "ON CONFLICT (room_id) DO NOTHING",
            room_id,
            version.identifier,
            creator,
            ts,
        )
        self._room_versions[room_id] = version

    def _q(self, conn: asyncpg.Connection | None) -> Any:
        """Where to run a read: the caller's connection when it holds one
        (a writer under its room lock must not take a second pooled
        connection, or concurrent writers starve the pool), else the pool."""
        return conn if conn is not None else self._db.pool

    async def room_version(
        self, room_id: str, conn: asyncpg.Connection | None = None
    ) -> RoomVersion | None:
        rv = self._room_versions.get(room_id)
        if rv is None:
            ident = await self._q(conn).fetchval(
                "SELECT room_version FROM rooms WHERE room_id = $1", room_id
            )
            if ident is None:
                return None
            rv = get_room_version(ident)
            self._room_versions[room_id] = rv
        return rv

    async def room_exists(self, room_id: str) -> bool:
        return await self.room_version(room_id) is not None

    # --------------------------------------------------------------- stream
    async def reserve_positions(self, conn: asyncpg.Connection, n: int) -> list[int]:
        """Allocate ``n`` stream positions and mark them in flight.

        Runs in its own short transaction on ``conn`` (both tables are
        unlogged: no fsync). The caller must call ``release_positions`` in its
        event transaction, or ``abandon_positions`` if that fails.
        """
        rows = await conn.fetch(
            "WITH bump AS (UPDATE stream_counter SET pos = pos + $1 WHERE id = 1 RETURNING pos), "
            "ins AS (INSERT INTO stream_inflight (pos, backend_pid) "
            "  SELECT pos - $1 + 1, pg_backend_pid() FROM bump RETURNING pos) "
            "SELECT pos FROM ins",
            n,
        )
        if not rows:  # the counter row was missing (first use / after a crash)
            await self._seed_counter(conn)
            return await self.reserve_positions(conn, n)
        first = int(rows[0]["pos"])
        return list(range(first, first + n))

    async def _seed_counter(self, conn: asyncpg.Connection) -> None:
        """(Re)create the unlogged counter above every position in use: by
        events and by the other streams sharing the counter."""
        await conn.execute(
            "INSERT INTO stream_counter (id, pos) SELECT 1, GREATEST("
            "  (SELECT max(stream_ordering) FROM events), "
            "  (SELECT max(stream_ordering) FROM account_data), "
            "  (SELECT max(stream_ordering) FROM receipts), "
            "  (SELECT max(stream_ordering) FROM user_membership_stream), 0) "
            "ON CONFLICT (id) DO NOTHING"
        )

    async def writer_context(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        n: int,
        txns: Sequence[tuple[str, str, str]],
    ) -> WriterContext:
        """What a room's writer reads before building, in one statement:
        the forward extremities, which of ``txns`` (user, device, txn id)
        already made an event, whether users of other servers are joined
        (``room_stats``), and ``n`` reserved stream positions (see
        ``reserve_positions``; the caller releases or abandons them)."""
        while True:
            row = await conn.fetchrow(
                "WITH bump AS (UPDATE stream_counter SET pos = pos + $1 WHERE id = 1 RETURNING pos), "
                "ins AS (INSERT INTO stream_inflight (pos, backend_pid) "
                "  SELECT pos - $1 + 1, pg_backend_pid() FROM bump RETURNING pos) "
                "SELECT (SELECT pos FROM ins) AS first, "
                "  ARRAY(SELECT event_id FROM forward_extremities WHERE room_id = $2) AS ext, "
                "  (SELECT json_agg(json_build_array(txn_user_id, txn_device_id, txn_id, event_id)) "
                "   FROM events WHERE (txn_user_id, txn_device_id, txn_id) IN "
                "   (SELECT * FROM unnest($3::text[], $4::text[], $5::text[]))) AS txns, "
                # (counts kept with the room's state: no scan of its members)
                "  COALESCE((SELECT joined_members > local_joined FROM room_stats "
                "   WHERE room_id = $2), true) AS federated",
                n,
                room_id,
                [t[0] for t in txns],
                [t[1] for t in txns],
                [t[2] for t in txns],
            )
            assert row is not None
            if row["first"] is not None:
                break
            await self._seed_counter(conn)  # first use, or after a crash: once more
        first = int(row["first"])
        return WriterContext(
            extremities=list(row["ext"]),
            seen_txns={(u, d, t): e for u, d, t, e in row["txns"] or ()},
            positions=list(range(first, first + n)),
            federated=bool(row["federated"]),
        )

    async def write_at_new_position(self, user_id: str, sql: str, *args: Any) -> int:
        """Run ``sql`` (its last parameter: a new stream position) for data
        that is not an event but is streamed like one to ``user_id`` (account
        data, presence): the position is reserved, released and announced
        with the write, so /sync readers never pass it uncommitted."""
        async with self._db.pool.acquire() as conn:
            (pos,) = await self.reserve_positions(conn, 1)
            try:
                async with conn.transaction():
                    await conn.execute(sql, *args, pos)
                    await self.release_positions(conn, pos)
                    await conn.execute("SELECT pg_notify('hs_stream', $1)", f"{pos} - {user_id}")
            except BaseException:
                await self.abandon_positions(conn, pos)
                raise
        return pos

    async def release_positions(self, conn: asyncpg.Connection, first: int) -> None:
        await conn.execute("DELETE FROM stream_inflight WHERE pos = $1", first)

    async def abandon_positions(self, conn: asyncpg.Connection, first: int) -> None:
        await conn.execute("DELETE FROM stream_inflight WHERE pos = $1", first)

    async def current_position(self) -> int:
        """The highest position P such that every event at or below P that
        will ever exist is already visible."""
        v = await self._db.fetchval(CURRENT_POSITION_SQL)
        return int(v)

    async def clear_stale_inflight(self) -> int:
        """Positions reserved by sessions that died before committing."""
        r = await self._db.execute(
            "DELETE FROM stream_inflight WHERE backend_pid NOT IN "
            "(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)"
        )
        return int(r.split()[-1])

    # --------------------------------------------------------------- writes
    async def insert_events(
        self,
        conn: asyncpg.Connection,
        items: Sequence[NewEvent],
        *,
        release: tuple[int, str | None, str] | None = None,
        head: Sequence[Any] | None = None,
        head_locked: bool = False,
    ) -> list[StoredEvent]:
        """Insert ``items`` with their DAG edges in one statement (each round
        trip to the database counts on the write path). ``release`` =
        (first reserved position, channel, payload): drop the positions'
        in-flight mark and queue the notification in the same statement;
        both take effect when the caller's transaction commits. ``head``
        (``projections.head_args``): also move the room's extremities and
        head, failing with ``hs_require`` when the removed extremities are
        gone — the whole append of an optimistic writer as one statement.
        ``head_locked``: the caller holds the room lock and decided the head
        under it: moved without the check (one round trip less per append)."""
        columns, edges, auths = _columns(items)
        first, channel, note = release if release is not None else (None, None, None)
        args = [*columns, *edges, *auths, first, channel, note]
        if head is None:
            await conn.execute(_INSERT_EVENTS_SQL, *args)
        elif head_locked:
            await conn.execute(_INSERT_EVENTS_WITH_LOCKED_HEAD_SQL, *args, *head)
        else:
            await conn.execute(_INSERT_EVENTS_WITH_HEAD_SQL, *args, *head)
        return self._cache_new(items, [it.stream_ordering for it in items])

    async def append_allocating(
        self,
        conn: asyncpg.Connection,
        items: Sequence[NewEvent],
        head: Sequence[Any],
        channel: str | None,
    ) -> list[StoredEvent]:
        """``insert_events`` with ``head`` (checked) for a writer that
        allocates the stream positions in the same statement rather than
        reserving them first: the counter's row stays locked until the
        statement's transaction commits, and readers see the new counter and
        the events together. One round trip instead of two, at the price of
        serialising such writers on the counter — for a process with a
        single active writer. ``head[3]`` (the last position) is ignored."""
        columns, edges, auths = _columns(items)
        row = await conn.fetchrow(
            _APPEND_ALLOCATING_SQL,
            len(items),
            *columns[1:],
            *edges,
            *auths,
            head[0],
            head[1],
            head[2],
            None,
            head[4],
            head[5],
            channel,
        )
        assert row is not None and row["last"] is not None
        last = int(row["last"])
        return self._cache_new(items, list(range(last - len(items) + 1, last + 1)))

    def _cache_new(self, items: Sequence[NewEvent], positions: Sequence[int]) -> list[StoredEvent]:
        stored = []
        for it, pos in zip(items, positions, strict=True):
            se = StoredEvent(
                it.event,
                pos,
                it.rejected_reason,
                it.soft_failed,
                it.outlier,
                it.state_group,
                it.txn[2] if it.txn else None,
                it.txn[1] if it.txn else None,
            )
            self._events.put(it.event.event_id, se)
            stored.append(se)
        return stored

    async def create_state_group(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        prev_group: int | None,
        delta: Mapping[StateKey, str | None],
        full_state: Mapping[StateKey, str],
    ) -> int:
        """A new state group equal to ``full_state``: stored as ``delta``
        against ``prev_group`` unless the chain is too long (then in full).

        One round trip (``_NEW_STATE_GROUP``) when the previous group's chain
        length is known here — it is for groups this process wrote or read —
        instead of four: a createRoom writes one group per state event."""
        chain = 0
        if prev_group is not None:
            known = self._chains.get_(prev_group)
            if known is None:
                known = await conn.fetchval(
                    "SELECT chain_length FROM state_groups WHERE group_id = $1", prev_group
                )
            chain = int(known or 0)
        if prev_group is None or chain + 1 > MAX_STATE_CHAIN:
            prev_group, chain = None, 0
            entries: Iterable[tuple[StateKey, str | None]] = full_state.items()
        else:
            chain += 1
            entries = delta.items()
        rows = list(entries)
        group_id = int(
            await conn.fetchval(
                _NEW_STATE_GROUP,
                room_id,
                prev_group,
                chain,
                [t for (t, _), _ in rows],
                [sk for (_, sk), _ in rows],
                [ev for _, ev in rows],
            )
        )
        self._groups.put(group_id, dict(full_state))
        self._chains.put(group_id, chain)
        return group_id

    # ---------------------------------------------------------------- reads
    def _row_to_stored(self, row: asyncpg.Record) -> StoredEvent:
        rv = get_room_version(row["room_version"])
        pdu = json.loads(row["redacted_json"] or row["json"])
        ev = Event.from_pdu(pdu, rv, event_id=row["event_id"])
        return StoredEvent(
            ev,
            row["stream_ordering"],
            row["rejected_reason"],
            row["soft_failed"],
            row["outlier"],
            row["state_group"],
            row["txn_id"],
            row["txn_device_id"],
        )

    async def get_event(
        self, event_id: str, conn: asyncpg.Connection | None = None
    ) -> StoredEvent | None:
        got = await self.get_events([event_id], conn)
        return got.get(event_id)

    async def get_events(
        self, event_ids: Iterable[str], conn: asyncpg.Connection | None = None
    ) -> dict[str, StoredEvent]:
        out: dict[str, StoredEvent] = {}
        missing = []
        for eid in event_ids:
            hit = self._events.get_(eid)
            if hit is not None:
                out[eid] = hit
            else:
                missing.append(eid)
        if missing:
            rows = await self._q(conn).fetch(
                f"SELECT {_EVENT_COLS} FROM events e JOIN rooms r USING (room_id) "
                "WHERE e.event_id = ANY($1::text[])",
                missing,
            )
            for row in rows:
                se = self._row_to_stored(row)
                self._events.put(se.event.event_id, se)
                out[se.event.event_id] = se
        return out

    async def get_event_objs(
        self, event_ids: Iterable[str], conn: asyncpg.Connection | None = None
    ) -> dict[str, Event]:
        return {k: v.event for k, v in (await self.get_events(event_ids, conn)).items()}

    async def have_events(self, event_ids: Iterable[str]) -> set[str]:
        ids = list(event_ids)
        known = {e for e in ids if e in self._events}
        rest = [e for e in ids if e not in known]
        if rest:
            rows = await self._db.fetch(
                "SELECT event_id FROM events WHERE event_id = ANY($1::text[])", rest
            )
            known.update(r["event_id"] for r in rows)
        return known

    async def events_by_stream(
        self,
        room_ids: Sequence[str],
        after: int,
        upto: int,
        limit: int | None = None,
        *,
        newest_first: bool = False,
    ) -> list[StoredEvent]:
        """Non-outlier, non-rejected, non-soft-failed events in a stream range."""
        order = "DESC" if newest_first else "ASC"
        rows = await self._db.fetch(
            f"SELECT {_EVENT_COLS} FROM events e JOIN rooms r USING (room_id) "
            "WHERE e.room_id = ANY($1::text[]) AND e.stream_ordering > $2 "
            "AND e.stream_ordering <= $3 AND NOT e.outlier AND NOT e.soft_failed "
            "AND e.rejected_reason IS NULL "
            f"ORDER BY e.stream_ordering {order} LIMIT $4",
            list(room_ids),
            after,
            upto,
            limit,
        )
        return [self._cached(row) for row in rows]

    async def timelines(
        self, room_ids: Sequence[str], lowers: Sequence[int], upto: int, limit: int
    ) -> dict[str, list[StoredEvent]]:
        """For each room, its newest accepted events in (lower, upto], at most
        ``limit``, newest first — one query for all rooms (/sync)."""
        rows = await self._db.fetch(
            f"SELECT {_EVENT_COLS} FROM unnest($1::text[], $2::bigint[]) AS q(room_id, lower) "
            "CROSS JOIN LATERAL (SELECT * FROM events x WHERE x.room_id = q.room_id "
            "  AND x.stream_ordering > q.lower AND x.stream_ordering <= $3 AND NOT x.outlier "
            "  AND NOT x.soft_failed AND x.rejected_reason IS NULL "
            "  ORDER BY x.stream_ordering DESC LIMIT $4) e JOIN rooms r ON r.room_id = e.room_id "
            "ORDER BY e.room_id, e.stream_ordering DESC",
            list(room_ids),
            list(lowers),
            upto,
            limit,
        )
        out: dict[str, list[StoredEvent]] = {r: [] for r in room_ids}
        for row in rows:
            se = self._cached(row)
            out[se.event.room_id].append(se)
        return out

    def _cached(self, row: asyncpg.Record) -> StoredEvent:
        hit = self._events.get_(row["event_id"])
        if hit is None:
            hit = self._row_to_stored(row)
            self._events.put(row["event_id"], hit)
        return hit  # type: ignore[no-any-return]

    async def rooms_with_events_after(
        self, room_ids: Sequence[str], after: int, upto: int
    ) -> set[str]:
        rows = await self._db.fetch(
            "SELECT DISTINCT room_id FROM events WHERE room_id = ANY($1::text[]) "
            "AND stream_ordering > $2 AND stream_ordering <= $3 AND NOT outlier",
            list(room_ids),
            after,
            upto,
        )
        return {r["room_id"] for r in rows}

    async def timeline_page(
        self,
        room_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        backwards: bool,
        annotated: bool = False,
    ) -> TimelinePage:
        """A page of the timeline in stream order (which, within a room,
        follows the DAG's topological order for events we appended). With
        ``annotated``, each event's redactions and whether anything relates
        to it come in the same statement (a /messages page is one round
        trip, bundled aggregations or not)."""
        lo = after if after is not None else -(2**62)  # backfilled history is negative
        hi = before if before is not None else 2**62
        order = "DESC" if backwards else "ASC"
        extra = (
            ", (SELECT array_agg(x.redaction_id) FROM event_redactions x "
            "   WHERE x.redacted_id = e.event_id) AS redaction_ids, "
            "  EXISTS (SELECT 1 FROM event_relations x WHERE x.relates_to_id = e.event_id) "
            "   AS related "
            if annotated
            else ", NULL::text[] AS redaction_ids, false AS related "
        )
        rows = await self._db.fetch(
            f"SELECT {_EVENT_COLS}{extra}"
            "FROM events e JOIN rooms r USING (room_id) "
            "WHERE e.room_id = $1 AND e.stream_ordering > $2 AND e.stream_ordering < $3 "
            "AND NOT e.outlier AND NOT e.soft_failed AND e.rejected_reason IS NULL "
            f"ORDER BY e.stream_ordering {order} LIMIT $4",
            room_id,
            lo,
            hi,
            limit,
        )
        return TimelinePage(
            [self._cached(row) for row in rows],
            {r["event_id"]: list(r["redaction_ids"]) for r in rows if r["redaction_ids"]},
            frozenset(r["event_id"] for r in rows if r["related"]),
        )

    async def state_at_position(self, room_id: str, pos: int) -> Mapping[StateKey, str]:
        """The room's state after its last timeline event at or before
        stream position ``pos`` (empty before the room began)."""
        evs = (
            await self.timeline_page(room_id, before=pos + 1, after=None, limit=1, backwards=True)
        ).events
        return await self.state_at_group(evs[0].state_group) if evs else {}

    async def event_by_txn(
        self, user_id: str, device_id: str, txn_id: str, conn: asyncpg.Connection | None = None
    ) -> str | None:
        return await self._q(conn).fetchval(
            "SELECT event_id FROM events WHERE txn_user_id = $1 AND txn_device_id = $2 "
            "AND txn_id = $3",
            user_id,
            device_id,
            txn_id,
        )

    async def state_at_group(
        self, group_id: int | None, conn: asyncpg.Connection | None = None
    ) -> Mapping[StateKey, str]:
        """The state of a group. The mapping is shared with the cache: callers
        must copy it before changing it."""
        if group_id is None:
            return {}
        hit = self._groups.get_(group_id)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        rows = await self._q(conn).fetch(
            "WITH RECURSIVE chain(group_id, prev_group, lvl) AS ("
            "  SELECT group_id, prev_group, 0 FROM state_groups WHERE group_id = $1"
            "  UNION ALL"
            "  SELECT g.group_id, g.prev_group, c.lvl + 1 FROM state_groups g"
            "  JOIN chain c ON g.group_id = c.prev_group) "
            "SELECT DISTINCT ON (s.type, s.state_key) s.type, s.state_key, s.event_id "
            "FROM state_group_entries s JOIN chain c USING (group_id) "
            "ORDER BY s.type, s.state_key, c.lvl",
            group_id,
        )
        # Interned: the groups of a room repeat the same keys and ids, which
        # the cache would otherwise hold once per group.
        state = {
            (intern(r["type"]), intern(r["state_key"])): intern(r["event_id"])
            for r in rows
            if r["event_id"]
        }
        self._groups.put(group_id, state)
        return state

    async def state_after_event(self, event_id: str) -> Mapping[StateKey, str] | None:
        se = await self.get_event(event_id)
        if se is None or se.outlier:
            return None
        return await self.state_at_group(se.state_group)

    async def auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Every event reachable through auth_events from ``event_ids``
        (excluding the starting events themselves unless reachable)."""
        chains = await self.auth_chains(event_ids)
        return set().union(*chains.values()) if chains else set()

    async def auth_chains(
        self, event_ids: Iterable[str], conn: asyncpg.Connection | None = None
    ) -> dict[str, frozenset[str]]:
        """Each event's auth chain (what it reaches through auth_events).
        A stored event's chain never changes, so chains are cached, weighed
        by their length; a state resolution, which needs the chains of every
        event of several whole states, reads only those it has not seen.
        An event this server does not hold has no entry."""
        out: dict[str, frozenset[str]] = {}
        missing: list[str] = []
        for e in dict.fromkeys(event_ids):
            c = self._auth_chains.get_(e)
            if c is not None:
                out[e] = c
            else:
                missing.append(e)
        if not missing:
            return out
        rows = await self._q(conn).fetch(
            "WITH RECURSIVE chain(start, event_id) AS ("
            "  SELECT event_id, auth_id FROM event_auth WHERE event_id = ANY($1::text[])"
            "  UNION"
            "  SELECT c.start, a.auth_id FROM event_auth a JOIN chain c ON a.event_id = c.event_id) "
            "SELECT start, array_agg(event_id) AS chain FROM chain GROUP BY start",
            missing,
        )
        for r in rows:
            chain = frozenset(map(intern, r["chain"]))  # (chains overlap: ids shared)
            out[r["start"]] = chain
            self._auth_chains.put(r["start"], chain)
        # Events without auth events (a create event) have no rows: their
        # chain is empty when the event is known to be stored.
        bare = [e for e in missing if e not in out]
        if bare:
            for e in await self.have_events(bare):
                out[e] = frozenset()
                self._auth_chains.put(e, out[e])
        return out

    async def current_state_ids(
        self, room_id: str, conn: asyncpg.Connection | None = None
    ) -> dict[StateKey, str]:
        """The room's current state (the projection), read through ``conn``
        when a writer holds the room lock on it."""
        rows = await self._q(conn).fetch(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = $1", room_id
        )
        return {(r["type"], r["state_key"]): r["event_id"] for r in rows}

    async def is_ancestor(
        self, conn: asyncpg.Connection, ancestor: str, descendant: str, ancestor_depth: int
    ) -> bool:
        """Whether ``ancestor`` is reached from ``descendant`` through prev
        events. The walk stops at the ancestor's depth, below which it
        cannot be (depth grows along prev edges)."""
        return bool(
            await conn.fetchval(
                "WITH RECURSIVE walk(event_id) AS ("
                "  SELECT prev_event_id FROM event_edges WHERE event_id = $2"
                "  UNION"
                "  SELECT g.prev_event_id FROM walk w"
                "  JOIN events e ON e.event_id = w.event_id AND e.depth > $3"
                "  JOIN event_edges g ON g.event_id = w.event_id) "
                "SELECT EXISTS (SELECT 1 FROM walk WHERE event_id = $1)",
                ancestor,
                descendant,
                ancestor_depth,
            )
        )

    async def record_adopted(self, conn: asyncpg.Connection, room_id: str, event_id: str) -> None:
        """``event_id`` replaced the room's head (``Pending.adopt``): part of
        the log, so a rebuild derives the same extremities."""
        await conn.execute(
            "INSERT INTO adopted_heads (room_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            room_id,
            event_id,
        )

    async def record_state_reset(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        key: StateKey,
        old_event_id: str,
        new_event_id: str | None,
    ) -> None:
        await conn.execute(
            "INSERT INTO state_reset_alarms (room_id, type, state_key, old_event_id, "
            "new_event_id, ts) VALUES ($1, $2, $3, $4, $5, "
            "(extract(epoch from clock_timestamp()) * 1000)::bigint)",
            room_id,
            key[0],
            key[1],
            old_event_id,
            new_event_id,
        )

    async def state_reset_alarms(self) -> list[tuple[str, str, str, str, str | None, int]]:
        """Every recorded alarm: (room, type, state key, old, new, ts)."""
        rows = await self._db.fetch(
            "SELECT room_id, type, state_key, old_event_id, new_event_id, ts "
            "FROM state_reset_alarms ORDER BY ts"
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]

    async def closest_by_timestamp(
        self, room_id: str, ts: int, forward: bool
    ) -> tuple[str, int] | None:
        """The room's first event at or after ``ts`` (``forward``), or last
        at or before it: (event id, origin_server_ts)."""
        cmp, order = (">=", "ASC") if forward else ("<=", "DESC")
        row = await self._db.fetchrow(
            "SELECT event_id, origin_server_ts FROM events WHERE room_id = $1 "
            f"AND origin_server_ts {cmp} $2 AND NOT outlier AND NOT soft_failed "
            "AND rejected_reason IS NULL "
            f"ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT 1",
            room_id,
            ts,
        )
        return (row[0], row[1]) if row else None

    async def forward_extremities(
        self, room_id: str, conn: asyncpg.Connection | None = None
    ) -> list[str]:
        rows = await self._q(conn).fetch(
            "SELECT event_id FROM forward_extremities WHERE room_id = $1", room_id
        )
        return [r["event_id"] for r in rows]

    async def room_head(self, room_id: str) -> tuple[int, int] | None:
        """(last stream position, greatest depth) of a room."""
        row = await self._db.fetchrow(
            "SELECT stream_ordering, max_depth FROM room_heads WHERE room_id = $1", room_id
        )
        return (row[0], row[1]) if row else None

    async def max_depth(self, event_ids: Sequence[str]) -> int:
        evs = await self.get_events(event_ids)
        return max((e.event.depth for e in evs.values()), default=0)

    async def count_events(self, room_id: str) -> int:
        return int(
            await self._db.fetchval("SELECT count(*) FROM events WHERE room_id = $1", room_id) or 0
        )

    async def stream_ordering_of(self, event_id: str) -> int | None:
        se = await self.get_event(event_id)
        return se.stream_ordering if se else None


async def accepted_events(
    store: EventStore, conn: asyncpg.Connection, room_id: str
) -> list[StoredEvent]:
    """Every accepted (non-outlier, non-rejected, non-soft-failed) event of a
    room in stream order — the input of a projection rebuild."""
    rows = await conn.fetch(
        f"SELECT {_EVENT_COLS} FROM events e JOIN rooms r USING (room_id) "
        "WHERE e.room_id = $1 AND NOT e.outlier AND NOT e.soft_failed "
        "AND e.rejected_reason IS NULL ORDER BY e.stream_ordering",
        room_id,
    )
    return [store._cached(r) for r in rows]


async def all_room_ids(db: Database) -> list[str]:
    return [r["room_id"] for r in await db.fetch("SELECT room_id FROM rooms ORDER BY room_id")]
