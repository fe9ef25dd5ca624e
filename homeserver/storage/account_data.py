"""Account data, global and per room (table account_data). Each write takes a
stream position so /sync can return what changed since a token."""

from __future__ import annotations

from typing import Any

from homeserver.storage.database import Database
from homeserver.storage.events import EventStore


class AccountDataStore:
    def __init__(self, db: Database, events: EventStore) -> None:
        self._db = db
        self._events = events

    async def put(self, user_id: str, room_id: str, type: str, content: dict[str, Any]) -> int:
        async with self._db.pool.acquire() as conn:
            (pos,) = await self._events.reserve_positions(conn, 1)
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO account_data (user_id, room_id, type, content, stream_ordering) "
                        "VALUES ($1,$2,$3,$4,$5) ON CONFLICT (user_id, room_id, type) DO UPDATE "
                        "SET content = EXCLUDED.content, stream_ordering = EXCLUDED.stream_ordering",
                        user_id,
                        room_id,
                        type,
                        content,
                        pos,
                    )
                    await self._events.release_positions(conn, pos)
                    await conn.execute("SELECT pg_notify('hs_stream', $1)", f"{pos} - {user_id}")
            except BaseException:
                await self._events.abandon_positions(conn, pos)
                raise
        return pos

    async def get(self, user_id: str, room_id: str, type: str) -> dict[str, Any] | None:
        v = await self._db.fetchval(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
            user_id,
            room_id,
            type,
        )
        return v  # type: ignore[no-any-return]

    async def changed(
        self, user_id: str, after: int, upto: int
    ) -> list[tuple[str, str, dict[str, Any]]]:
        rows = await self._db.fetch(
            "SELECT room_id, type, content FROM account_data WHERE user_id = $1 "
            "AND stream_ordering > $2 AND stream_ordering <= $3 ORDER BY stream_ordering",
            user_id,
            after,
            upto,
        )
        return [(r["room_id"], r["type"], r["content"]) for r in rows]

    async def users_with_type(self, type: str) -> list[tuple[str, dict[str, Any]]]:
        rows = await self._db.fetch(
            "SELECT user_id, content FROM account_data WHERE room_id = '' AND type = $1", type
        )
        return [(r["user_id"], r["content"]) for r in rows]
