"""Jumping to a date: the event closest to a timestamp in a room
(Client-Server API ``/timestamp_to_event``, and the federation endpoint of
the same name for servers in the room)."""

from __future__ import annotations

from typing import Any

from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.room_state import RoomState
from homeserver.storage.events import EventStore

MAX_TS = 2**62


def parse_query(query: Any) -> tuple[int, bool]:
    """``ts`` and ``dir`` (f or b) from a query string."""
    raw_ts, direction = query.get("ts"), query.get("dir")
    if raw_ts is None or direction is None:
        raise MatrixError(400, "M_MISSING_PARAM", "ts and dir are required")
    if not (raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 18):
        raise MatrixError(400, "M_INVALID_PARAM", "ts must be a non-negative integer")
    if direction not in ("f", "b"):
        raise MatrixError(400, "M_INVALID_PARAM", "dir must be 'f' or 'b'")
    return int(raw_ts), direction == "f"


class TimestampService:
    def __init__(self, store: EventStore, state: RoomState) -> None:
        self._store = store
        self._state = state

    async def closest(self, room_id: str, ts: int, forward: bool) -> dict[str, Any]:
        found = await self._store.closest_by_timestamp(room_id, ts, forward)
        if found is None:
            raise not_found(f"No event {'after' if forward else 'before'} {ts} in {room_id}")
        return {"event_id": found[0], "origin_server_ts": found[1]}

    async def for_user(self, user_id: str, room_id: str, ts: int, forward: bool) -> dict[str, Any]:
        """For a member of the room (or anyone, in a world-readable room)."""
        await self._state.require_room(room_id)
        if await self._state.membership(room_id, user_id) != "join":
            hv = await self._state.content(room_id, "m.room.history_visibility")
            if hv.get("history_visibility") != "world_readable":
                raise forbidden(f"User {user_id} not in room {room_id}")
        return await self.closest(room_id, ts, forward)
