"""Reading relations: ``GET /relations`` (the children of an event, in its
three forms, paginated both ways, optionally recursive) and ``GET /threads``
(thread roots by latest activity). Bundled aggregations are added by the
serialiser on every path that returns events (services/serialize.py).

Tokens are the stream tokens of /messages and /sync (``s<position>``): a
token stands between ``position`` and the next, so going backwards from it
yields positions up to and including ``position``, forwards those after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from homeserver.services.errors import not_found
from homeserver.services.serialize import EventSerializer
from homeserver.services.timeline import TimelineService, Visibility, make_token, parse_token
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.relations import RECURSION_DEPTH, RelationStore

# Beyond every position, backfilled (negative) history included.
_FAR = 2**62


class RelationsService:
    def __init__(
        self,
        timeline: TimelineService,
        store: EventStore,
        relations: RelationStore,
        visibility: Visibility,
        serializer: EventSerializer,
    ) -> None:
        self._timeline = timeline
        self._store = store
        self._rel = relations
        self._vis = visibility
        self._ser = serializer

    async def visible_event(self, room_id: str, user_id: str, event_id: str) -> StoredEvent:
        """The event, if the user may read the room and see it; 404 otherwise
        (as for an event that does not exist: no hint it does)."""
        await self._timeline.require_can_read(room_id, user_id)
        se = await self._store.get_event(event_id)
        if (
            se is None
            or se.event.room_id != room_id
            or se.outlier
            or se.rejected_reason
            or se.soft_failed
            or not await self._vis.filter(user_id, [se])
        ):
            raise not_found("Event not found")
        return se

    async def relations(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        event_id: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        from_token: str | None,
        to_token: str | None,
        backwards: bool,
        limit: int,
        recurse: bool | None,
    ) -> dict[str, Any]:
        """One page of the events relating to ``event_id`` that the user may
        see; ``recurse`` None when the client did not ask (then the response
        has no ``recursion_depth``)."""
        await self.visible_event(room_id, user_id, event_id)
        start = parse_token(from_token) if from_token else None
        stop = parse_token(to_token) if to_token else None
        # (after, upto]: from `from` back to `to`, or from `from` on to `to`.
        newest, oldest = (start, stop) if backwards else (stop, start)
        after = oldest if oldest is not None else -_FAR
        upto = newest if newest is not None else _FAR
        page = await self._rel.relations(
            room_id,
            event_id,
            rel_type=rel_type,
            event_type=event_type,
            recurse=bool(recurse),
            after=after,
            upto=upto,
            limit=limit,
            backwards=backwards,
        )
        events = await self._ordered([r.event_id for r in page])
        visible = await self._vis.filter(user_id, events)
        out: dict[str, Any] = {
            "chunk": await self._ser.serialize(visible, viewer=(user_id, device_id))
        }
        if len(page) == limit:
            last = page[-1].stream_ordering
            out["next_batch"] = make_token(last - 1 if backwards else last)
        if from_token:
            out["prev_batch"] = from_token
        if recurse is not None:
            out["recursion_depth"] = RECURSION_DEPTH if recurse else 1
        return out

    async def threads(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        *,
        participated: bool,
        from_token: str | None,
        limit: int,
    ) -> dict[str, Any]:
        """Thread roots the user may see, the most recently active first,
        each with its m.thread summary bundled."""
        await self._timeline.require_can_read(room_id, user_id)
        upto = parse_token(from_token) if from_token else _FAR
        roots = await self._rel.thread_roots(
            room_id, upto=upto, participant=user_id if participated else None, limit=limit
        )
        events = [
            se
            for se in await self._ordered([r.event_id for r in roots])
            if not (se.outlier or se.rejected_reason or se.soft_failed)
        ]
        visible = await self._vis.filter(user_id, events)
        out: dict[str, Any] = {
            "chunk": await self._ser.serialize(visible, viewer=(user_id, device_id))
        }
        if len(roots) == limit:
            out["next_batch"] = make_token(roots[-1].latest - 1)
        return out

    async def _ordered(self, event_ids: Sequence[str]) -> list[StoredEvent]:
        """The events of ``event_ids`` in that order."""
        found = await self._store.get_events(event_ids)
        return [found[e] for e in event_ids if e in found]
