"""Full-text search over room events (PostgreSQL text search).

An expression index on the log (``events_fulltext`` in schema.sql) covers the
searchable keys of the spec — ``content.body`` of messages, ``content.name``
and ``content.topic`` of the room's name and topic — so nothing is written on
the send path beyond the index entry, and nothing needs rebuilding. Redacted
events are never matched (their original text is still in the log).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from homeserver.storage.database import Database

# The searchable key of each type (the spec's keys) and the document indexed.
KEY_TYPES = {
    "content.body": "m.room.message",
    "content.name": "m.room.name",
    "content.topic": "m.room.topic",
}
DOCUMENT = (
    "to_tsvector('english'::regconfig, COALESCE((e.json::jsonb)->'content'->>'body', '') "
    "|| ' ' || COALESCE((e.json::jsonb)->'content'->>'name', '') || ' ' "
    "|| COALESCE((e.json::jsonb)->'content'->>'topic', ''))"
)
_SEARCHABLE = (
    "e.type IN ('m.room.message', 'm.room.name', 'm.room.topic') AND NOT e.outlier "
    "AND NOT e.soft_failed AND e.rejected_reason IS NULL"
)


@dataclass(frozen=True, slots=True)
class Hit:
    event_id: str
    room_id: str
    stream_ordering: int
    rank: float


class SearchStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(
        self,
        term: str,
        rooms: Sequence[str],
        types: Sequence[str],
        senders: Sequence[str] | None,
        not_senders: Sequence[str],
        *,
        by_rank: bool,
        limit: int,
        offset: int,
        before: int | None,
    ) -> tuple[list[Hit], int]:
        """A page of matches (``limit`` + 1 fetched to tell whether more
        follow) and how many match in all. ``by_rank``: best first, paged by
        ``offset``; else newest first, paged by stream position ``before``."""
        where = (
            f"e.room_id = ANY($2::text[]) AND {_SEARCHABLE} AND e.type = ANY($3::text[]) "
            f"AND {DOCUMENT} @@ q "
            "AND ($4::text[] IS NULL OR e.sender = ANY($4::text[])) "
            "AND NOT (e.sender = ANY($5::text[])) "
            "AND NOT EXISTS (SELECT 1 FROM event_redactions r WHERE r.redacted_id = e.event_id)"
        )
        args = [
            term,
            list(rooms),
            list(types),
            None if senders is None else list(senders),
            list(not_senders),
        ]
        query = "websearch_to_tsquery('english'::regconfig, $1)"
        count = await self._db.fetchval(
            f"SELECT count(*) FROM events e, {query} q WHERE {where}", *args
        )
        extra: list[int | None]
        if by_rank:
            order, page, extra = "rank DESC, e.stream_ordering DESC", "OFFSET $7", [offset]
        else:
            order, page, extra = "e.stream_ordering DESC", "", [before]
            where += " AND ($7::bigint IS NULL OR e.stream_ordering < $7)"
        rows = await self._db.fetch(
            f"SELECT e.event_id, e.room_id, e.stream_ordering, ts_rank({DOCUMENT}, q) AS rank "
            f"FROM events e, {query} q WHERE {where} ORDER BY {order} LIMIT $6 {page}",
            *args,
            limit + 1,
            *extra,
        )
        return [Hit(r[0], r[1], r[2], float(r[3])) for r in rows], int(count or 0)
