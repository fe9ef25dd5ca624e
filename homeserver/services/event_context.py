"""``GET /rooms/{roomId}/context/{eventId}``: an event with the events
before and after it and the room state at the last one returned
(Client-Server API "Event context").

The two sides are /messages pages starting at the event (so visibility,
filters, backfill and tokens behave exactly as there); ``limit`` is shared
between them as Synapse does (half before, rounded down, the rest after).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from homeserver.core.events import StateKey
from homeserver.services.filters import EventFilter
from homeserver.services.relations import RelationsService
from homeserver.services.serialize import EventSerializer
from homeserver.services.timeline import TimelineService, make_token
from homeserver.storage.events import EventStore


class ContextService:
    def __init__(
        self,
        timeline: TimelineService,
        relations: RelationsService,
        store: EventStore,
        serializer: EventSerializer,
    ) -> None:
        self._timeline = timeline
        self._relations = relations
        self._store = store
        self._ser = serializer

    async def context(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        event_id: str,
        *,
        limit: int,
        event_filter: EventFilter | None,
    ) -> dict[str, Any]:
        se = await self._relations.visible_event(room_id, user_id, event_id)
        pos = se.stream_ordering
        before_limit = limit // 2
        after_limit = limit - before_limit
        before = await self._side(
            room_id, user_id, device_id, pos - 1, "b", before_limit, event_filter
        )
        after = await self._side(room_id, user_id, device_id, pos, "f", after_limit, event_filter)
        returned = [*before["chunk"], *after["chunk"]]
        ends = await self._store.get_events(
            [e["event_id"] for e in (before["chunk"][-1:] + after["chunk"][-1:])]
        )
        first = ends.get(before["chunk"][-1]["event_id"]) if before["chunk"] else None
        last = ends.get(after["chunk"][-1]["event_id"]) if after["chunk"] else None
        state = await self._store.state_at_group((last or se).state_group)
        if event_filter is not None and event_filter.lazy_load_members:
            senders = {se.event.sender} | {e["sender"] for e in returned}
            state = _members_of(state, senders)
        state_events = await self._store.get_events(state.values())
        return {
            "event": await self._ser.serialize_one(se, (user_id, device_id)),
            "events_before": before["chunk"],
            "events_after": after["chunk"],
            # (without more on a side: the token just past what was returned)
            "start": before.get("end", make_token((first or se).stream_ordering - 1)),
            "end": after.get("end", make_token((last or se).stream_ordering)),
            "state": await self._ser.serialize(
                list(state_events.values()), prev_content=False, bundle=False
            ),
        }

    async def _side(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        from_position: int,
        direction: str,
        limit: int,
        event_filter: EventFilter | None,
    ) -> dict[str, Any]:
        if limit <= 0:
            return {"chunk": []}
        # (the members of lazy loading are those of both sides: added above)
        flt = replace(event_filter, lazy_load_members=False) if event_filter else None
        return await self._timeline.messages(
            room_id,
            user_id,
            device_id,
            from_token=make_token(from_position),
            to_token=None,
            direction=direction,
            limit=limit,
            filter_fn=flt,
        )


def _members_of(state: Mapping[StateKey, str], senders: set[str]) -> dict[StateKey, str]:
    """``state`` with only the member events of ``senders`` (lazy loading)."""
    return {k: v for k, v in state.items() if k[0] != "m.room.member" or k[1] in senders}
