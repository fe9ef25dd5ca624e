"""Event relations (Client-Server API "Event relationships"): the
``event_relations`` projection and the reads over it.

Table owned: event_relations. Its rows are derived from the log by the
``events_relations`` trigger (schema.sql) in the transaction of every append,
whichever write path appends; ``derive_relations`` recomputes a room's rows
from the same view for ``homeserver rebuild``/``verify``. A relation whose
event was redacted keeps its row (rows never change) and is left out here,
by ``event_redactions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from homeserver.core.events import Event
from homeserver.storage.database import Database

# How deep /relations?recurse=true follows relations of relations (the
# specification asks for at least 3).
RECURSION_DEPTH = 3

_NOT_REDACTED = "NOT EXISTS (SELECT 1 FROM event_redactions x WHERE x.redacted_id = {r}.event_id)"


@dataclass(frozen=True, slots=True)
class Summary:
    """The aggregation of one relation type of one parent event: how many,
    the latest (by stream order; for m.replace the latest valid edit by
    origin_server_ts then event id), whether the reader sent one, and the
    ids in stream order (m.reference only)."""

    parent: str
    rel_type: str
    count: int
    latest: str
    participated: bool
    ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Related:
    """One event of a /relations page."""

    event_id: str
    stream_ordering: int
    depth: int


@dataclass(frozen=True, slots=True)
class ThreadRoot:
    """A thread root with the position of its latest reply (the /threads order)."""

    event_id: str
    latest: int


# One statement for a whole page of parents: threads and references are
# grouped; edits count only when they have the parent's sender and type and
# the parent is no state event (Client-Server API "Validity of replacement
# events"), the latest by origin_server_ts then event id. Each parent is
# looked up by its own index scan (the LATERAL parts aggregate or limit, so
# the planner cannot turn them into a join over every relation of the table).
_AGGREGATIONS_SQL = (
    "WITH p AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
    "  $5::boolean[]) AS p(event_id, room_id, sender, type, is_state)) "
    "SELECT p.event_id AS parent, a.rel_type, a.n, a.latest, a.mine, a.ids "
    "FROM p, LATERAL (SELECT r.rel_type, count(*) AS n, "
    "  (array_agg(r.event_id ORDER BY r.stream_ordering DESC))[1] AS latest, "
    "  COALESCE(bool_or(r.sender = $6), false) AS mine, "
    "  array_agg(r.event_id ORDER BY r.stream_ordering) "
    "    FILTER (WHERE r.rel_type = 'm.reference') AS ids "
    "  FROM event_relations r WHERE r.relates_to_id = p.event_id AND r.room_id = p.room_id "
    "  AND r.rel_type IN ('m.thread', 'm.reference') AND "
    + _NOT_REDACTED.format(r="r")
    + "  GROUP BY r.rel_type) a "
    "UNION ALL "
    "SELECT p.event_id, 'm.replace', 1, e.event_id, false, NULL::text[] "
    "FROM p, LATERAL (SELECT r.event_id FROM event_relations r "
    "  WHERE r.relates_to_id = p.event_id AND r.room_id = p.room_id "
    "  AND r.rel_type = 'm.replace' AND r.sender = p.sender AND r.type = p.type "
    "  AND NOT p.is_state AND "
    + _NOT_REDACTED.format(r="r")
    + "  ORDER BY r.origin_server_ts DESC, r.event_id DESC LIMIT 1) e"
)

# $1 room, $2 parent, $3 rel_type or NULL, $4 event type or NULL, $5 depth,
# $6 lower bound (exclusive), $7 upper bound (inclusive), $8 limit.
_RELATIONS_SQL = (
    "WITH RECURSIVE tree AS ("
    "  SELECT r.event_id, r.rel_type, r.type, r.stream_ordering, 1 AS depth "
    "  FROM event_relations r WHERE r.relates_to_id = $2 AND r.room_id = $1 "
    "  UNION "
    "  SELECT c.event_id, c.rel_type, c.type, c.stream_ordering, t.depth + 1 "
    "  FROM tree t JOIN event_relations c ON c.relates_to_id = t.event_id AND c.room_id = $1 "
    "  WHERE t.depth < $5) "
    "SELECT DISTINCT ON (t.stream_ordering) t.event_id, t.stream_ordering, t.depth FROM tree t "
    "WHERE ($3::text IS NULL OR t.rel_type = $3) AND ($4::text IS NULL OR t.type = $4) "
    "  AND t.stream_ordering > $6 AND t.stream_ordering <= $7 AND "
    + _NOT_REDACTED.format(r="t")
    + " ORDER BY t.stream_ordering {order} LIMIT $8"
)

# $1 room, $2 upper bound of the latest reply (inclusive), $3 reader or NULL
# (NULL: every thread; else those the reader started or replied to), $4 limit.
_THREADS_SQL = (
    "SELECT r.relates_to_id, max(r.stream_ordering) AS latest "
    "FROM event_relations r JOIN events root ON root.event_id = r.relates_to_id "
    "  AND root.room_id = r.room_id "
    "WHERE r.room_id = $1 AND r.rel_type = 'm.thread' AND "
    + _NOT_REDACTED.format(r="r")
    + " GROUP BY r.relates_to_id, root.sender "
    "HAVING max(r.stream_ordering) <= $2 "
    "  AND ($3::text IS NULL OR root.sender = $3 OR bool_or(r.sender = $3)) "
    "ORDER BY latest DESC LIMIT $4"
)


class RelationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def aggregations(self, parents: Sequence[Event], reader: str | None) -> list[Summary]:
        """The m.thread, m.reference and m.replace summaries of every event of
        ``parents`` that has any, in one query."""
        if not parents:
            return []
        rows = await self._db.fetch(
            _AGGREGATIONS_SQL,
            [e.event_id for e in parents],
            [e.room_id for e in parents],
            [e.sender for e in parents],
            [e.type for e in parents],
            [e.is_state for e in parents],
            reader,
        )
        return [
            Summary(
                r["parent"],
                r["rel_type"],
                int(r["n"]),
                r["latest"],
                bool(r["mine"]),
                tuple(r["ids"] or ()),
            )
            for r in rows
        ]

    async def relations(
        self,
        room_id: str,
        parent: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        recurse: bool,
        after: int,
        upto: int,
        limit: int,
        backwards: bool,
    ) -> list[Related]:
        """Events relating to ``parent`` (directly, or through up to
        ``RECURSION_DEPTH`` relations when ``recurse``) with a stream position
        in (``after``, ``upto``], newest first when ``backwards``."""
        sql = _RELATIONS_SQL.format(order="DESC" if backwards else "ASC")
        rows = await self._db.fetch(
            sql,
            room_id,
            parent,
            rel_type,
            event_type,
            RECURSION_DEPTH if recurse else 1,
            after,
            upto,
            limit,
        )
        return [Related(r["event_id"], r["stream_ordering"], r["depth"]) for r in rows]

    async def thread_roots(
        self, room_id: str, *, upto: int, participant: str | None, limit: int
    ) -> list[ThreadRoot]:
        """Thread roots of the room by their latest reply, newest first."""
        rows = await self._db.fetch(_THREADS_SQL, room_id, upto, participant, limit)
        return [ThreadRoot(r["relates_to_id"], r["latest"]) for r in rows]


async def derive_relations(conn: asyncpg.Connection, room_id: str) -> None:
    """Write a room's relation rows again from the log (its rows were cleared
    with the other projections): the rebuild side of the trigger."""
    await conn.execute(
        "INSERT INTO event_relations SELECT * FROM event_relations_derived WHERE room_id = $1 "
        "ON CONFLICT DO NOTHING",
        room_id,
    )
