"""Invite rejections owed to servers that could not be reached (table
federation_pending_rejections): written when a rejection is made locally,
claimed by one process when due (a claim pushes ``retry_after_ts`` ahead, so
two processes sharing the database do not send the same rejection), removed
once sent or no longer wanted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database

CLAIM_MS = 120_000


@dataclass(frozen=True, slots=True)
class PendingRejection:
    user_id: str
    room_id: str
    leave_event_id: str  # our local (out-of-band) leave
    servers: tuple[str, ...]
    content: dict[str, Any]
    attempts: int
    created_ts: int


class RejectionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        user_id: str,
        room_id: str,
        leave_event_id: str,
        servers: Sequence[str],
        content: dict[str, Any],
        retry_after_ts: int,
        now: int,
    ) -> None:
        await self._db.execute(
            "INSERT INTO federation_pending_rejections (user_id, room_id, leave_event_id, "
            "servers, content, retry_after_ts, created_ts) VALUES ($1,$2,$3,$4,$5,$6,$7) "
            "ON CONFLICT (user_id, room_id) DO UPDATE SET leave_event_id = EXCLUDED.leave_event_id, "
            "servers = EXCLUDED.servers, content = EXCLUDED.content, attempts = 0, "
            "retry_after_ts = EXCLUDED.retry_after_ts, created_ts = EXCLUDED.created_ts",
            user_id,
            room_id,
            leave_event_id,
            list(servers),
            json.dumps(content),
            retry_after_ts,
            now,
        )

    async def claim_due(self, now: int, limit: int = 20) -> list[PendingRejection]:
        """The rejections due at ``now``, claimed for ``CLAIM_MS``."""
        rows = await self._db.fetch(
            "UPDATE federation_pending_rejections p SET retry_after_ts = $2 "
            "FROM (SELECT user_id, room_id FROM federation_pending_rejections "
            "      WHERE retry_after_ts <= $1 ORDER BY retry_after_ts LIMIT $3 "
            "      FOR UPDATE SKIP LOCKED) due "
            "WHERE p.user_id = due.user_id AND p.room_id = due.room_id "
            "RETURNING p.user_id, p.room_id, p.leave_event_id, p.servers, p.content, "
            "p.attempts, p.created_ts",
            now,
            now + CLAIM_MS,
            limit,
        )
        return [
            PendingRejection(
                r["user_id"],
                r["room_id"],
                r["leave_event_id"],
                tuple(r["servers"]),
                json.loads(r["content"]),
                r["attempts"],
                r["created_ts"],
            )
            for r in rows
        ]

    async def next_due(self) -> int | None:
        v = await self._db.fetchval("SELECT min(retry_after_ts) FROM federation_pending_rejections")
        return int(v) if v is not None else None

    async def due_now_via(self, server: str, now: int) -> bool:
        """``server`` is back: its rejections are due now. True if it has any."""
        done = await self._db.execute(
            "UPDATE federation_pending_rejections SET retry_after_ts = $2 "
            "WHERE $1 = ANY(servers) AND retry_after_ts > $2",
            server,
            now,
        )
        return done != "UPDATE 0"

    async def postpone(self, p: PendingRejection, retry_after_ts: int) -> None:
        await self._db.execute(
            "UPDATE federation_pending_rejections SET attempts = attempts + 1, "
            "retry_after_ts = $3 WHERE user_id = $1 AND room_id = $2",
            p.user_id,
            p.room_id,
            retry_after_ts,
        )

    async def remove(self, p: PendingRejection) -> None:
        await self._db.execute(
            "DELETE FROM federation_pending_rejections "
            "WHERE user_id = $1 AND room_id = $2 AND leave_event_id = $3",
            p.user_id,
            p.room_id,
            p.leave_event_id,
        )
