"""Users reporting rooms and events to the server's operators (Client-Server
API "Reporting content"); operators read them through the admin API.

A user may report only an event they can see (else 404, as for reading it),
so reports reveal nothing about rooms the reporter cannot read.
"""

from __future__ import annotations

from typing import Any

from homeserver.services.clock import now_ms
from homeserver.services.errors import MatrixError
from homeserver.services.room_state import RoomState
from homeserver.services.timeline import TimelineService
from homeserver.storage.reports import Report, ReportStore

MAX_REASON = 1000


class ReportService:
    def __init__(self, store: ReportStore, timeline: TimelineService, state: RoomState) -> None:
        self._store = store
        self._timeline = timeline
        self._state = state

    async def report_event(
        self, reporter: str, room_id: str, event_id: str, reason: Any, score: Any
    ) -> None:
        reason = _reason(reason)
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, int) or not -100 <= score <= 0
        ):
            raise MatrixError(400, "M_INVALID_PARAM", "score must be an integer from -100 to 0")
        await self._timeline.event(room_id, reporter, event_id)  # 404 unless visible
        await self._store.add(now_ms(), room_id, event_id, reporter, reason, score)

    async def report_room(self, reporter: str, room_id: str, reason: Any) -> None:
        reason = _reason(reason)
        await self._state.require_room(room_id)
        await self._store.add(now_ms(), room_id, None, reporter, reason, None)

    async def list(self, offset: int, limit: int) -> tuple[list[Report], int]:
        return await self._store.list(offset, limit)


def _reason(reason: Any) -> str | None:
    if reason is not None and not isinstance(reason, str):
        raise MatrixError(400, "M_BAD_JSON", "reason must be a string")
    if reason is not None and len(reason) > MAX_REASON:
        raise MatrixError(400, "M_INVALID_PARAM", "reason is too long")
    return reason
