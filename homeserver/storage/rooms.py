"""Server-local room data that is not part of any room's log: aliases,
directory visibility, blocked rooms, forgotten rooms (tables room_aliases,
room_directory, blocked_rooms, forgotten_rooms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from homeserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class AliasRecord:
    alias: str
    room_id: str
    creator: str


class AliasExists(Exception):
    pass


class RoomStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --------------------------------------------------------------- aliases
    async def create_alias(self, alias: str, room_id: str, creator: str) -> None:
        try:
            await self._db.execute(
                "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)",
                alias,
                room_id,
                creator,
            )
        except asyncpg.UniqueViolationError as e:
            raise AliasExists(alias) from e

    async def get_alias(self, alias: str) -> AliasRecord | None:
        row = await self._db.fetchrow(
            "SELECT alias, room_id, creator FROM room_aliases WHERE alias = $1", alias
        )
        return AliasRecord(**dict(row)) if row else None

    async def delete_alias(self, alias: str) -> bool:
        r = await self._db.execute("DELETE FROM room_aliases WHERE alias = $1", alias)
        return r.endswith(" 1")

    async def aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self._db.fetch(
            "SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias", room_id
        )
        return [r["alias"] for r in rows]

    async def delete_room_aliases(self, room_id: str) -> list[str]:
        rows = await self._db.fetch(
            "DELETE FROM room_aliases WHERE room_id = $1 RETURNING alias", room_id
        )
        return [r["alias"] for r in rows]

    # ------------------------------------------------------------- directory
    async def set_visibility(self, room_id: str, visibility: str) -> None:
        await self._db.execute(
            "INSERT INTO room_directory (room_id, visibility) VALUES ($1, $2) "
            "ON CONFLICT (room_id) DO UPDATE SET visibility = EXCLUDED.visibility",
            room_id,
            visibility,
        )

    async def get_visibility(self, room_id: str) -> str:
        v = await self._db.fetchval(
            "SELECT visibility FROM room_directory WHERE room_id = $1", room_id
        )
        return v or "private"

    async def public_rooms(
        self, search: str | None, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Published rooms with their stats, most members first."""
        where = "d.visibility = 'public' AND b.room_id IS NULL"
        args: list[Any] = []
        if search:
            args.append(f"%{search.lower()}%")
            where += (
                " AND (lower(coalesce(s.name,'')) LIKE $1 OR lower(coalesce(s.topic,'')) "
                "LIKE $1 OR lower(coalesce(s.canonical_alias,'')) LIKE $1)"
            )
        total = await self._db.fetchval(
            "SELECT count(*) FROM room_directory d JOIN room_stats s USING (room_id) "
            f"LEFT JOIN blocked_rooms b USING (room_id) WHERE {where}",
            *args,
        )
        args += [limit, offset]
        n = len(args)
        rows = await self._db.fetch(
            "SELECT s.*, r.room_version FROM room_directory d JOIN room_stats s USING (room_id) "
            "JOIN rooms r USING (room_id) LEFT JOIN blocked_rooms b USING (room_id) "
            f"WHERE {where} ORDER BY s.joined_members DESC, s.room_id LIMIT ${n - 1} OFFSET ${n}",
            *args,
        )
        return [dict(r) for r in rows], int(total or 0)

    # --------------------------------------------------------------- blocks
    async def block(self, room_id: str, by: str, ts: int) -> None:
        await self._db.execute(
            "INSERT INTO blocked_rooms (room_id, blocked_by, blocked_ts) VALUES ($1,$2,$3) "
            "ON CONFLICT DO NOTHING",
            room_id,
            by,
            ts,
        )

    async def is_blocked(self, room_id: str) -> bool:
        return bool(
            await self._db.fetchval("SELECT 1 FROM blocked_rooms WHERE room_id = $1", room_id)
        )

    # --------------------------------------------------------------- forget
    async def forget(self, user_id: str, room_id: str) -> None:
        await self._db.execute(
            "INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            user_id,
            room_id,
        )

    async def unforget(self, user_id: str, room_id: str) -> None:
        await self._db.execute(
            "DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2", user_id, room_id
        )

    async def forgotten(self, user_id: str) -> set[str]:
        rows = await self._db.fetch(
            "SELECT room_id FROM forgotten_rooms WHERE user_id = $1", user_id
        )
        return {r["room_id"] for r in rows}
