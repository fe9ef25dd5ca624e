"""Server-local bookkeeping for room kinds: one-to-one pairs, invite expiry,
transient rooms awaiting purge, and the operator audit log (tables dm_pairs,
invite_expiry, admin_audit)."""

from __future__ import annotations

from typing import Any

import asyncpg

from homeserver.storage.database import Database


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


class LifecycleStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------- dm pairs
    async def lock_pair(self, conn: asyncpg.Connection, a: str, b: str) -> None:
        x, y = pair(a, b)
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", x, y)

    async def dm_room(self, conn: asyncpg.Connection, a: str, b: str) -> str | None:
        x, y = pair(a, b)
        return await conn.fetchval(
            "SELECT room_id FROM dm_pairs WHERE user_a = $1 AND user_b = $2", x, y
        )

    async def set_dm_room(self, conn: asyncpg.Connection, a: str, b: str, room_id: str) -> None:
        x, y = pair(a, b)
        await conn.execute(
            "INSERT INTO dm_pairs (user_a, user_b, room_id) VALUES ($1,$2,$3) "
            "ON CONFLICT (user_a, user_b) DO UPDATE SET room_id = EXCLUDED.room_id",
            x,
            y,
            room_id,
        )

    # -------------------------------------------------------- invite expiry
    async def set_invite_expiry(
        self, room_id: str, user_id: str, inviter: str, event_id: str, expires_ts: int
    ) -> None:
        await self._db.execute(
            "INSERT INTO invite_expiry (room_id, user_id, inviter, event_id, expires_ts) "
            "VALUES ($1,$2,$3,$4,$5) ON CONFLICT (room_id, user_id) DO UPDATE SET "
            "inviter = EXCLUDED.inviter, event_id = EXCLUDED.event_id, "
            "expires_ts = EXCLUDED.expires_ts",
            room_id,
            user_id,
            inviter,
            event_id,
            expires_ts,
        )

    async def due_invites(self, now: int) -> list[dict[str, Any]]:
        rows = await self._db.fetch(
            "SELECT room_id, user_id, inviter, event_id, expires_ts FROM invite_expiry "
            "WHERE expires_ts <= $1 ORDER BY expires_ts LIMIT 100",
            now,
        )
        return [dict(r) for r in rows]

    async def invite_expiries(self, user_id: str) -> dict[str, int]:
        rows = await self._db.fetch(
            "SELECT room_id, expires_ts FROM invite_expiry WHERE user_id = $1", user_id
        )
        return {r["room_id"]: r["expires_ts"] for r in rows}

    async def clear_invite_expiry(self, room_id: str, user_id: str) -> None:
        await self._db.execute(
            "DELETE FROM invite_expiry WHERE room_id = $1 AND user_id = $2", room_id, user_id
        )

    async def next_invite_expiry(self) -> int | None:
        return await self._db.fetchval("SELECT min(expires_ts) FROM invite_expiry")

    # --------------------------------------------------------- transient
    async def transient_rooms_to_purge(self, older_than_ts: int) -> list[str]:
        """Transient rooms with no local member left whose last local leave
        happened before ``older_than_ts``."""
        rows = await self._db.fetch(
            "SELECT s.room_id FROM room_stats s WHERE s.kind = 'transient' "
            "AND s.local_joined = 0 AND EXISTS (SELECT 1 FROM events e WHERE e.room_id = s.room_id) "
            "AND (SELECT max(e.origin_server_ts) FROM events e WHERE e.room_id = s.room_id "
            "     AND e.type = 'm.room.member') <= $1",
            older_than_ts,
        )
        return [r["room_id"] for r in rows]

    # ---------------------------------------------------------- archived
    async def left_rooms(self, user_id: str) -> list[dict[str, Any]]:
        rows = await self._db.fetch(
            "SELECT m.room_id, m.membership, m.sender, m.event_id, s.name, s.topic, "
            "s.canonical_alias, s.join_rule, s.kind, s.joined_members, s.last_event_ts, "
            "(b.room_id IS NOT NULL) AS blocked FROM room_members m "
            "LEFT JOIN room_stats s USING (room_id) LEFT JOIN blocked_rooms b USING (room_id) "
            "LEFT JOIN forgotten_rooms f ON f.room_id = m.room_id AND f.user_id = m.user_id "
            "WHERE m.user_id = $1 AND m.membership = 'leave' AND f.room_id IS NULL "
            "AND EXISTS (SELECT 1 FROM events e WHERE e.room_id = m.room_id) "
            "ORDER BY s.last_event_ts DESC NULLS LAST",
            user_id,
        )
        return [dict(r) for r in rows]

    async def pending_invites(self, user_id: str) -> list[dict[str, Any]]:
        rows = await self._db.fetch(
            "SELECT m.room_id, m.sender AS inviter, m.event_id, s.name, s.topic, s.avatar_url, "
            "s.joined_members, e.origin_server_ts, e.json FROM room_members m "
            "LEFT JOIN room_stats s USING (room_id) JOIN events e ON e.event_id = m.event_id "
            "WHERE m.user_id = $1 AND m.membership = 'invite' ORDER BY e.origin_server_ts DESC",
            user_id,
        )
        return [dict(r) for r in rows]

    # ------------------------------------------------------------- audit
    async def audit(
        self, ts: int, admin: str, action: str, target: str | None, details: dict[str, Any]
    ) -> None:
        await self._db.execute(
            "INSERT INTO admin_audit (ts, admin, action, target, details) VALUES ($1,$2,$3,$4,$5)",
            ts,
            admin,
            action,
            target,
            details,
        )

    async def audit_log(self, limit: int) -> list[dict[str, Any]]:
        rows = await self._db.fetch(
            "SELECT id, ts, admin, action, target, details FROM admin_audit "
            "ORDER BY id DESC LIMIT $1",
            limit,
        )
        return [dict(r) for r in rows]
