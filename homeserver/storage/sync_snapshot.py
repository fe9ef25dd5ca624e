"""Everything one ``/sync`` response reads, in one statement.

A long-poll woken by a new message has to answer fast, and on loopback each
round trip to PostgreSQL costs more than the query behind it. So the stream
position, the user's memberships and membership changes, the account data,
receipts and typing changes, the newest timeline entries of every joined
room (ids only: bodies come from the event cache), their redactions and
which of them anything relates to, and the
summary and counts of the rooms where something happened
are read together. One statement also means one snapshot: everything read
is consistent with the position it reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homeserver.storage.database import Database
from homeserver.storage.events import CURRENT_POSITION_SQL

_SNAPSHOT_SQL = f"""
WITH pos AS ({CURRENT_POSITION_SQL} AS upto),
mem AS (
    SELECT room_id, membership FROM room_members
    WHERE user_id = $1 AND membership IN ('join', 'invite', 'knock', 'leave', 'ban')
),
joined AS (SELECT room_id FROM mem WHERE membership = 'join'),
tl AS (
    SELECT x.room_id, x.event_id, x.stream_ordering FROM joined j
    CROSS JOIN LATERAL (
        SELECT e.room_id, e.event_id, e.stream_ordering FROM events e
        WHERE e.room_id = j.room_id AND e.stream_ordering > $2
          AND e.stream_ordering <= (SELECT upto FROM pos)
          AND NOT e.outlier AND NOT e.soft_failed AND e.rejected_reason IS NULL
        ORDER BY e.stream_ordering DESC LIMIT $3
    ) x
),
rc AS (
    -- (others' private receipts are theirs alone: not sent, and no reason
    -- for the room to be in this response)
    SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts
    WHERE room_id IN (SELECT room_id FROM joined) AND stream_ordering > $2
      AND stream_ordering <= (SELECT upto FROM pos)
      AND (receipt_type <> 'm.read.private' OR user_id = $1)
),
ty AS (
    SELECT DISTINCT room_id FROM typing
    WHERE room_id IN (SELECT room_id FROM joined) AND stream_ordering > $2
      AND stream_ordering <= (SELECT upto FROM pos)
),
typers AS (
    SELECT room_id, array_agg(user_id ORDER BY user_id) AS users FROM typing
    WHERE expires_ts > $5 AND room_id IN (SELECT room_id FROM joined)
      AND ($4 OR room_id IN (SELECT room_id FROM ty))
    GROUP BY room_id
),
ad AS (
    SELECT room_id, type, content, stream_ordering FROM account_data
    WHERE user_id = $1 AND stream_ordering > $2 AND stream_ordering <= (SELECT upto FROM pos)
),
active AS (
    SELECT room_id FROM joined
    WHERE $4 OR room_id IN (SELECT room_id FROM tl) OR room_id IN (SELECT room_id FROM rc)
       OR room_id IN (SELECT room_id FROM ty) OR room_id IN (SELECT room_id FROM ad)
)
SELECT
  (SELECT upto FROM pos) AS upto,
  (SELECT json_agg(json_build_array(room_id, membership)) FROM mem) AS memberships,
  (SELECT json_agg(json_build_array(room_id, stream_ordering, membership, event_id)
                   ORDER BY stream_ordering)
     FROM user_membership_stream
    WHERE user_id = $1 AND stream_ordering > $2
      AND stream_ordering <= (SELECT upto FROM pos)) AS changes,
  (SELECT json_agg(json_build_array(room_id, event_id, stream_ordering)
                   ORDER BY room_id, stream_ordering DESC) FROM tl) AS timeline,
  (SELECT json_agg(json_build_array(r.redacted_id, r.redaction_id)) FROM event_redactions r
    WHERE r.redacted_id IN (SELECT event_id FROM tl)) AS redactions,
  (SELECT array_agg(DISTINCT x.relates_to_id) FROM event_relations x
    WHERE x.relates_to_id IN (SELECT event_id FROM tl)) AS related,
  (SELECT json_agg(rc) FROM rc) AS receipts,
  (SELECT array_agg(room_id) FROM ty) AS typing,
  (SELECT json_object_agg(room_id, users) FROM typers) AS typers,
  (SELECT json_agg(json_build_array(room_id, type, content) ORDER BY stream_ordering)
     FROM ad) AS account_data,
  (SELECT json_object_agg(a.room_id, json_build_object(
      'name', s.name,
      'canonical_alias', s.canonical_alias,
      'joined_members', COALESCE(s.joined_members, 0),
      'invited_members', COALESCE(s.invited_members, 0),
      'heroes', CASE WHEN COALESCE(s.name, '') = '' AND COALESCE(s.canonical_alias, '') = ''
          THEN
          (SELECT COALESCE(json_agg(h.user_id), '[]'::json) FROM (
              SELECT m.user_id FROM room_members m
              WHERE m.room_id = a.room_id AND m.user_id <> $1
                AND m.membership IN ('join', 'invite')
              ORDER BY m.stream_ordering LIMIT 5) h) END))
     FROM active a LEFT JOIN room_stats s ON s.room_id = a.room_id) AS rooms
"""


@dataclass
class SyncSnapshot:
    """What one statement told us; see the module docstring."""

    upto: int
    memberships: dict[str, str]
    # (room, position, membership, event id), oldest first
    changes: list[tuple[str, int, str, str]]
    # room → [(event id, position)], newest first, at most ``limit`` each
    timeline: dict[str, list[tuple[str, int]]]
    redactions: dict[str, list[str]]
    # the timeline events something relates to (the others have no
    # aggregations to look up)
    related: set[str]
    receipts: dict[str, list[dict[str, Any]]]
    typing: set[str]
    # room → who is typing now, for the rooms in ``typing`` (every joined
    # room when ``all_rooms``) where anyone is
    typers: dict[str, list[str]]
    account_data: list[tuple[str, str, dict[str, Any]]]
    # room → name, canonical_alias, joined_members, invited_members, heroes
    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)


class SyncSnapshots:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def read(
        self, user_id: str, since: int, limit: int, *, all_rooms: bool, now_ms: int
    ) -> SyncSnapshot:
        """The user's view after ``since``: timelines hold at most ``limit``
        newest events per joined room; ``rooms`` covers every joined room
        when ``all_rooms`` (initial sync), else those where something
        happened. Typing notifications count as current when they expire
        after ``now_ms``."""
        row = await self._db.fetchrow(_SNAPSHOT_SQL, user_id, since, limit, all_rooms, now_ms)
        assert row is not None
        timeline: dict[str, list[tuple[str, int]]] = {}
        for room_id, event_id, pos in row["timeline"] or ():
            timeline.setdefault(room_id, []).append((event_id, pos))
        redactions: dict[str, list[str]] = {}
        for redacted, redaction in row["redactions"] or ():
            redactions.setdefault(redacted, []).append(redaction)
        receipts: dict[str, list[dict[str, Any]]] = {}
        for rc in row["receipts"] or ():
            receipts.setdefault(rc["room_id"], []).append(rc)
        return SyncSnapshot(
            upto=int(row["upto"]),
            memberships={r: m for r, m in row["memberships"] or ()},
            changes=[(r, int(p), m, e) for r, p, m, e in row["changes"] or ()],
            timeline=timeline,
            redactions=redactions,
            related=set(row["related"] or ()),
            receipts=receipts,
            typing=set(row["typing"] or ()),
            typers=dict(row["typers"] or {}),
            account_data=[(r, t, c) for r, t, c in row["account_data"] or ()],
            rooms=dict(row["rooms"] or {}),
        )
