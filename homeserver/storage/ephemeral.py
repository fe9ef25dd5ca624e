"""Receipts, typing notifications and stored filters (tables receipts,
typing, user_filters). Receipts and typing take stream positions from the
shared counter so one /sync token covers them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from homeserver.storage.database import Database
from homeserver.storage.events import EventStore


class EphemeralStore:
    def __init__(self, db: Database, events: EventStore) -> None:
        self._db = db
        self._events = events

    async def _write(self, sql: str, *args: Any, notify_room: str) -> int:
        async with self._db.pool.acquire() as conn:
            (pos,) = await self._events.reserve_positions(conn, 1)
            try:
                async with conn.transaction():
                    await conn.execute(sql, *args, pos)
                    await self._events.release_positions(conn, pos)
                    await conn.execute("SELECT pg_notify('hs_stream', $1)", f"{pos} {notify_room}")
            except BaseException:
                await self._events.abandon_positions(conn, pos)
                raise
        return pos

    async def put_receipt(
        self, room_id: str, receipt_type: str, user_id: str, thread_id: str, event_id: str, ts: int
    ) -> int:
        return await self._write(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, "
            "stream_ordering) VALUES ($1,$2,$3,$4,$5,$6,$7) "
            "ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET "
            "event_id = EXCLUDED.event_id, ts = EXCLUDED.ts, "
            "stream_ordering = EXCLUDED.stream_ordering",
            room_id,
            receipt_type,
            user_id,
            thread_id,
            event_id,
            ts,
            notify_room=room_id,
        )

    async def receipts(
        self, room_ids: Sequence[str], after: int, upto: int
    ) -> list[dict[str, Any]]:
        rows = await self._db.fetch(
            "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts "
            "WHERE room_id = ANY($1::text[]) AND stream_ordering > $2 AND stream_ordering <= $3",
            list(room_ids),
            after,
            upto,
        )
        return [dict(r) for r in rows]

    async def receipt_of(self, room_id: str, user_id: str, receipt_type: str) -> str | None:
        return await self._db.fetchval(
            "SELECT event_id FROM receipts WHERE room_id = $1 AND user_id = $2 "
            "AND receipt_type = $3 ORDER BY ts DESC LIMIT 1",
            room_id,
            user_id,
            receipt_type,
        )

    async def set_typing(self, room_id: str, user_id: str, expires_ts: int | None) -> int:
        if expires_ts is None:
            return await self._write(
                "UPDATE typing SET expires_ts = 0, stream_ordering = $3 "
                "WHERE room_id = $1 AND user_id = $2",
                room_id,
                user_id,
                notify_room=room_id,
            )
        return await self._write(
            "INSERT INTO typing (room_id, user_id, expires_ts, stream_ordering) "
            "VALUES ($1,$2,$3,$4) ON CONFLICT (room_id, user_id) DO UPDATE SET "
            "expires_ts = EXCLUDED.expires_ts, stream_ordering = EXCLUDED.stream_ordering",
            room_id,
            user_id,
            expires_ts,
            notify_room=room_id,
        )

    # --------------------------------------------------------------- filters
    async def put_filter(self, user_id: str, flt: dict[str, Any]) -> int:
        return int(
            await self._db.fetchval(
                "INSERT INTO user_filters (user_id, filter) VALUES ($1, $2) RETURNING filter_id",
                user_id,
                flt,
            )
        )

    async def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        return await self._db.fetchval(  # type: ignore[no-any-return]
            "SELECT filter FROM user_filters WHERE user_id = $1 AND filter_id = $2",
            user_id,
            filter_id,
        )

    async def invite_state(self, room_id: str, user_id: str) -> list[dict[str, Any]] | None:
        return await self._db.fetchval(  # type: ignore[no-any-return]
            "SELECT events FROM invite_room_state WHERE room_id = $1 AND user_id = $2",
            room_id,
            user_id,
        )

    async def put_invite_state(
        self, room_id: str, user_id: str, events: list[dict[str, Any]]
    ) -> None:
        await self._db.execute(
            "INSERT INTO invite_room_state (room_id, user_id, events) VALUES ($1,$2,$3) "
            "ON CONFLICT (room_id, user_id) DO UPDATE SET events = EXCLUDED.events",
            room_id,
            user_id,
            events,
        )
