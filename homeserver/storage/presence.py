"""Presence: the latest state of each user (table presence). Each change
takes a stream position (like account data), so /sync can ask what changed
since a token."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database
from homeserver.storage.events import EventStore


@dataclass(frozen=True, slots=True)
class Presence:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int
    currently_active: bool
    stream_ordering: int


_COLS = "user_id, state, status_msg, last_active_ts, currently_active, stream_ordering"


class PresenceStore:
    def __init__(self, db: Database, events: EventStore) -> None:
        self._db = db
        self._events = events

    async def put(
        self,
        user_id: str,
        state: str,
        status_msg: str | None,
        last_active_ts: int,
        currently_active: bool,
        keep_status: bool = False,
    ) -> int:
        """Store a user's presence at a new stream position (returned).
        ``keep_status``: leave the status message as it is."""
        return await self._events.write_at_new_position(
            user_id,
            "INSERT INTO presence (user_id, state, status_msg, last_active_ts, "
            "currently_active, stream_ordering) VALUES ($1, $2, $3, $4, $5, $7) "
            "ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, "
            "status_msg = CASE WHEN $6 THEN presence.status_msg ELSE EXCLUDED.status_msg END, "
            "last_active_ts = EXCLUDED.last_active_ts, "
            "currently_active = EXCLUDED.currently_active, "
            "stream_ordering = EXCLUDED.stream_ordering",
            user_id,
            state,
            status_msg,
            last_active_ts,
            currently_active,
            keep_status,
        )

    async def get(self, user_id: str) -> Presence | None:
        row = await self._db.fetchrow(f"SELECT {_COLS} FROM presence WHERE user_id = $1", user_id)
        return Presence(*row) if row else None

    async def changed_for(self, viewer: str, after: int, upto: int) -> list[Presence]:
        """Presence of the users sharing a room with ``viewer`` (and the
        viewer's own) that changed in (after, upto]."""
        rows = await self._db.fetch(
            f"SELECT {_COLS} FROM presence p WHERE p.stream_ordering > $2 "
            "AND p.stream_ordering <= $3 AND (p.user_id = $1 OR EXISTS ("
            "  SELECT 1 FROM room_members a JOIN room_members b USING (room_id) "
            "  WHERE a.user_id = $1 AND a.membership = 'join' "
            "  AND b.user_id = p.user_id AND b.membership = 'join')) "
            "ORDER BY p.stream_ordering",
            viewer,
            after,
            upto,
        )
        return [Presence(*r) for r in rows]

    async def share_a_room(self, a: str, b: str) -> bool:
        return bool(
            await self._db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM room_members x JOIN room_members y "
                "USING (room_id) WHERE x.user_id = $1 AND x.membership = 'join' "
                "AND y.user_id = $2 AND y.membership = 'join')",
                a,
                b,
            )
        )

    async def watchers(self, user_id: str) -> list[str]:
        """Users sharing a room with ``user_id`` (whom a change concerns)."""
        rows = await self._db.fetch(
            "SELECT DISTINCT b.user_id FROM room_members a JOIN room_members b USING (room_id) "
            "WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'",
            user_id,
        )
        return [r[0] for r in rows]

    async def servers_sharing(self, user_id: str) -> set[str]:
        """Servers with a joined member in a room ``user_id`` is joined to."""
        rows = await self._db.fetch(
            "SELECT DISTINCT substr(b.user_id, strpos(b.user_id, ':') + 1) "
            "FROM room_members a JOIN room_members b USING (room_id) "
            "WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'",
            user_id,
        )
        return {str(r[0]) for r in rows}
