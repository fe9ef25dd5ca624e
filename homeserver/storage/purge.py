"""The one way rows leave the event log: a whole-room purge, audited.

The append-only triggers allow DELETE only for the room named in the
transaction-local setting ``homeserver.purging_room``; this function sets it,
deletes the room's log and projections, and records who did it.
"""

from __future__ import annotations

from homeserver.storage.database import Database

_LOG_TABLES = ("event_edges", "event_auth", "state_group_entries", "state_groups", "events")
_DERIVED = (
    "current_state",
    "room_members",
    "forward_extremities",
    "room_heads",
    "room_stats",
    "user_membership_stream",
    "event_redactions",
    "event_relations",
    "room_aliases",
    "room_directory",
    "account_data",
    "push_actions",
    "push_evaluated",
    "push_summary",
)


async def purge_room(
    db: Database, room_id: str, *, by: str, reason: str | None, now_ms: int
) -> int:
    """Delete every event and projection row of ``room_id``; returns the
    number of events removed. The room stays known (its ``rooms`` row and
    any block) so it cannot be recreated under the same id by accident."""
    async with db.transaction() as conn:
        await conn.execute("SELECT set_config('homeserver.purging_room', $1, true)", room_id)
        count = int(
            await conn.fetchval("SELECT count(*) FROM events WHERE room_id = $1", room_id) or 0
        )
        for table in _DERIVED:
            await conn.execute(f"DELETE FROM {table} WHERE room_id = $1", room_id)
        for table in _LOG_TABLES:
            await conn.execute(f"DELETE FROM {table} WHERE room_id = $1", room_id)
        await conn.execute(
            "INSERT INTO purge_audit (room_id, purged_ts, purged_by, reason, event_count) "
            "VALUES ($1, $2, $3, $4, $5)",
            room_id,
            now_ms,
            by,
            reason,
            count,
        )
    return count
