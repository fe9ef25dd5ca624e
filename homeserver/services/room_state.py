"""Reading a room's current state as events, for the services that decide
what a user may do (the authorization rules still have the last word)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from homeserver.core.events import Event, StateKey
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.storage.events import EventStore
from homeserver.storage.projections import Projections


class RoomState:
    def __init__(self, store: EventStore, projections: Projections) -> None:
        self.store = store
        self.projections = projections

    async def event(self, room_id: str, type: str, state_key: str = "") -> Event | None:
        eid = await self.projections.current_state_event_id(room_id, type, state_key)
        if eid is None:
            return None
        se = await self.store.get_event(eid)
        return se.event if se else None

    async def events(self, room_id: str, keys: Iterable[StateKey]) -> dict[StateKey, Event]:
        ids = await self.projections.current_state_ids(room_id)
        wanted = {k: ids[k] for k in keys if k in ids}
        evs = await self.store.get_event_objs(wanted.values())
        return {k: evs[v] for k, v in wanted.items() if v in evs}

    async def all_events(self, room_id: str) -> list[Event]:
        ids = await self.projections.current_state_ids(room_id)
        evs = await self.store.get_event_objs(ids.values())
        return [evs[v] for v in ids.values() if v in evs]

    async def membership(self, room_id: str, user_id: str) -> str | None:
        m = await self.projections.membership(room_id, user_id)
        return m[0] if m else None

    async def require_room(self, room_id: str) -> None:
        if not await self.store.room_exists(room_id):
            raise not_found("Unknown room")

    async def require_joined(self, room_id: str, user_id: str) -> None:
        """403 unless ``user_id`` is joined (404 for rooms we do not know)."""
        m = await self.membership(room_id, user_id)
        if m != "join":
            if m is None and not await self.store.room_exists(room_id):
                raise forbidden("You are not in this room (or it does not exist)")
            raise forbidden(f"User {user_id} not in room {room_id}")

    async def content(self, room_id: str, type: str, state_key: str = "") -> Mapping[str, Any]:
        ev = await self.event(room_id, type, state_key)
        return ev.content if ev else {}


def auth_error_to_matrix(e: Exception) -> MatrixError:
    return forbidden(str(e) or "Forbidden by the room's authorization rules")
