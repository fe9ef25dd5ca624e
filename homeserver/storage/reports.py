"""Reports of rooms and events by users, for the operator (table reports)."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class Report:
    id: int
    ts: int
    room_id: str
    event_id: str | None
    reporter: str
    reason: str | None
    score: int | None


class ReportStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        ts: int,
        room_id: str,
        event_id: str | None,
        reporter: str,
        reason: str | None,
        score: int | None,
    ) -> int:
        return int(
            await self._db.fetchval(
                "INSERT INTO reports (ts, room_id, event_id, reporter, reason, score) "
                "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                ts,
                room_id,
                event_id,
                reporter,
                reason,
                score,
            )
        )

    async def list(self, offset: int, limit: int) -> tuple[list[Report], int]:
        rows = await self._db.fetch(
            "SELECT id, ts, room_id, event_id, reporter, reason, score FROM reports "
            "ORDER BY id DESC OFFSET $1 LIMIT $2",
            offset,
            limit,
        )
        total = await self._db.fetchval("SELECT count(*) FROM reports")
        return [Report(*r) for r in rows], int(total or 0)

    async def get(self, report_id: int) -> Report | None:
        row = await self._db.fetchrow(
            "SELECT id, ts, room_id, event_id, reporter, reason, score FROM reports WHERE id = $1",
            report_id,
        )
        return Report(*row) if row else None
