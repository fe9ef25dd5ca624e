"""Reading rooms: state, single events, members, and /messages pagination,
each filtered by history visibility for the requesting user."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from homeserver.core.events import StateKey
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.room_state import RoomState
from homeserver.services.serialize import EventSerializer
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.projections import Projections


def parse_token(token: str) -> int:
    """Stream tokens are ``s<position>`` (``t`` accepted as an alias)."""
    if len(token) > 1 and token[0] in "st":
        head = token[1:].split("_", 1)[0]
        # (negative: history backfilled over federation). ASCII digits only
        # (str.isdigit takes "²"), and few enough to fit a PostgreSQL bigint
        # (a longer number is no token of ours, and a 500 as a query argument).
        digits = head.removeprefix("-")
        if digits.isascii() and digits.isdigit() and len(digits) <= 18:
            return int(head)
    raise MatrixError(400, "M_INVALID_PARAM", f"Invalid pagination token {token!r}")


def make_token(position: int) -> str:
    return f"s{position}"


class Visibility:
    """History visibility per the Client-Server API ("History visibility")."""

    def __init__(self, store: EventStore, projections: Projections) -> None:
        self._store = store
        self._proj = projections

    async def filter(
        self, user_id: str, events: Sequence[StoredEvent], now_joined: bool | None = None
    ) -> list[StoredEvent]:
        if not events:
            return []
        if now_joined is None:
            current = await self._proj.membership(events[0].event.room_id, user_id)
            now_joined = current is not None and current[0] == "join"
        out = []
        for se in events:
            if await self._visible(se, user_id, now_joined):
                out.append(se)
        return out

    async def filter_many(self, user_id: str, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """``filter`` over events of any rooms (kept in their order)."""
        by_room: dict[str, list[StoredEvent]] = {}
        for se in events:
            by_room.setdefault(se.event.room_id, []).append(se)
        keep = {
            se.event.event_id for evs in by_room.values() for se in await self.filter(user_id, evs)
        }
        return [se for se in events if se.event.event_id in keep]

    async def _visible(self, se: StoredEvent, user_id: str, now_joined: bool) -> bool:
        ev = se.event
        if ev.type == "m.room.member" and ev.state_key == user_id:
            return True
        state: Mapping[StateKey, str] = await self._store.state_at_group(se.state_group)
        hv_id = state.get(("m.room.history_visibility", ""))
        hv = "shared"
        if hv_id is not None:
            hv_ev = await self._store.get_event(hv_id)
            if hv_ev is not None:
                hv = str(hv_ev.event.content.get("history_visibility", "shared"))
        if hv == "world_readable":
            return True
        m_id = state.get(("m.room.member", user_id))
        membership = None
        if m_id is not None:
            m_ev = await self._store.get_event(m_id)
            membership = m_ev.event.membership if m_ev else None
        if membership == "join":
            return True
        if hv == "shared":
            return now_joined
        if hv == "invited":
            return membership == "invite"
        return False


class TimelineService:
    def __init__(
        self, state: RoomState, serializer: EventSerializer, visibility: Visibility
    ) -> None:
        self._state = state
        self._store = state.store
        self._proj = state.projections
        self._ser = serializer
        self._vis = visibility
        # (room, how many more events wanted) → fetched older history? Set
        # by federation: /messages asks for history we never received.
        self.backfill: Callable[[str, int], Awaitable[bool]] | None = None

    async def require_can_read(self, room_id: str, user_id: str) -> str | None:
        """The user's membership; 403 when they may not read the room at all."""
        await self._state.require_room(room_id)
        m = await self._state.membership(room_id, user_id)
        if m == "join":
            return m
        hv = await self._state.content(room_id, "m.room.history_visibility")
        if hv.get("history_visibility") == "world_readable":
            return m
        if m in ("leave", "ban"):
            return m  # may read up to the point they left
        raise forbidden(f"User {user_id} not in room {room_id}")

    async def state(self, room_id: str, user_id: str) -> list[dict[str, Any]]:
        m = await self.require_can_read(room_id, user_id)
        if m in ("leave", "ban"):
            ids = await self._state_when_left(room_id, user_id)
        else:
            ids = await self._proj.current_state_ids(room_id)
        evs = await self._store.get_events(ids.values())
        return await self._ser.serialize(list(evs.values()), prev_content=False, bundle=False)

    async def _state_when_left(self, room_id: str, user_id: str) -> Mapping[StateKey, str]:
        m = await self._proj.membership(room_id, user_id)
        assert m is not None
        se = await self._store.get_event(m[1])
        return await self._store.state_at_group(se.state_group) if se else {}

    async def state_event(
        self, room_id: str, user_id: str, type: str, state_key: str, *, full: bool = False
    ) -> dict[str, Any]:
        m = await self.require_can_read(room_id, user_id)
        if m in ("leave", "ban"):
            eid = (await self._state_when_left(room_id, user_id)).get((type, state_key))
        else:
            eid = await self._proj.current_state_event_id(room_id, type, state_key)
        if eid is None:
            raise not_found(f"Event not found: no state {type}/{state_key}")
        se = await self._store.get_event(eid)
        if se is None:
            raise not_found("Event not found")
        d = await self._ser.serialize_one(se)
        return d if full else d["content"]

    async def event(
        self, room_id: str, user_id: str, event_id: str, device_id: str | None = None
    ) -> dict[str, Any]:
        await self._state.require_room(room_id)
        se = await self._store.get_event(event_id)
        if se is None or se.event.room_id != room_id or se.outlier or se.rejected_reason:
            raise not_found("Event not found")
        if not await self._vis.filter(user_id, [se]):
            raise not_found("Event not found")
        return await self._ser.serialize_one(se, (user_id, device_id) if device_id else None)

    async def members(
        self,
        room_id: str,
        user_id: str,
        *,
        at: str | None,
        membership: str | None,
        not_membership: str | None,
    ) -> list[dict[str, Any]]:
        m = await self.require_can_read(room_id, user_id)
        if at is not None or m in ("leave", "ban"):
            if at is not None:
                state = await self._store.state_at_position(room_id, parse_token(at))
            else:
                state = await self._state_when_left(room_id, user_id)
            ids = [v for (t, _), v in state.items() if t == "m.room.member"]
        else:
            ids = [r["event_id"] for r in await self._proj.members(room_id)]
        evs = list((await self._store.get_events(ids)).values())
        if membership:
            evs = [e for e in evs if e.event.membership == membership]
        if not_membership:
            evs = [e for e in evs if e.event.membership != not_membership]
        evs.sort(key=lambda e: e.event.state_key or "")
        return await self._ser.serialize(evs, prev_content=False, bundle=False)

    async def joined_members(self, room_id: str, user_id: str) -> dict[str, Any]:
        await self._state.require_joined(room_id, user_id)
        rows = await self._proj.members(room_id, ["join"])
        return {
            r["user_id"]: {"display_name": r["displayname"], "avatar_url": r["avatar_url"]}
            for r in rows
        }

    async def messages(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        *,
        from_token: str | None,
        to_token: str | None,
        direction: str,
        limit: int,
        filter_fn: Any = None,
    ) -> dict[str, Any]:
        m = await self.require_can_read(room_id, user_id)
        backwards = direction == "b"
        upper_limit = None
        if m in ("leave", "ban"):
            mem = await self._proj.membership(room_id, user_id)
            left = await self._store.get_event(mem[1]) if mem else None
            upper_limit = left.stream_ordering if left else None
        if from_token is not None:
            start = parse_token(from_token)
        else:
            start = await self._store.current_position() if backwards else 0
        if upper_limit is not None:
            start = min(start, upper_limit) if backwards else start
        end_bound = parse_token(to_token) if to_token else None
        collected: list[StoredEvent] = []
        redactions: dict[str, list[str]] = {}
        related: set[str] = set()
        cursor = start
        more = True
        backfilled = False
        # Fetch in rounds: visibility and filters may drop some events.
        while len(collected) < limit and more:
            want = max(limit * 2, 20)
            if backwards:
                page = await self._store.timeline_page(
                    room_id,
                    before=cursor + 1,
                    after=end_bound,
                    limit=want,
                    backwards=True,
                    annotated=True,
                )
                if len(page.events) < want and self.backfill is not None and not backfilled:
                    backfilled = True
                    if await self.backfill(room_id, want - len(page.events)):
                        continue
            else:
                hi = end_bound + 1 if end_bound is not None else None
                if upper_limit is not None:
                    hi = min(hi or upper_limit + 1, upper_limit + 1)
                page = await self._store.timeline_page(
                    room_id, before=hi, after=cursor, limit=want, backwards=False, annotated=True
                )
            batch = page.events
            redactions.update(page.redactions)
            related |= page.related
            more = len(batch) == want
            visible = await self._vis.filter(user_id, batch, now_joined=m == "join")
            if filter_fn is not None:
                visible = [e for e in visible if filter_fn(e.event)]
            keep = {e.event.event_id for e in visible}
            for e in batch:
                if len(collected) >= limit:
                    more = True
                    break
                cursor = e.stream_ordering - 1 if backwards else e.stream_ordering
                if e.event.event_id in keep:
                    collected.append(e)
        page_ids = {e.event.event_id for e in collected}
        chunk = await self._ser.serialize(
            collected,
            viewer=(user_id, device_id),
            redactions=redactions,
            redactions_cover=page_ids,
            relations_cover=page_ids - related,
        )
        out: dict[str, Any] = {"start": make_token(start), "chunk": chunk}
        if more:
            out["end"] = make_token(cursor)
        # Lazy-loaded members: the senders' member events.
        senders = {e.event.sender for e in collected}
        if filter_fn is not None and getattr(filter_fn, "lazy_load_members", False) and senders:
            ids = await self._proj.current_state_ids(room_id)
            mids = [ids[("m.room.member", s)] for s in senders if ("m.room.member", s) in ids]
            evs = await self._store.get_events(mids)
            out["state"] = await self._ser.serialize(
                list(evs.values()), prev_content=False, bundle=False
            )
        return out

    async def joined_rooms(self, user_id: str) -> list[str]:
        return sorted(await self._proj.rooms_for_user(user_id, ["join"]))


def check_direction(direction: str) -> str:
    if direction not in ("b", "f"):
        raise MatrixError(400, "M_INVALID_PARAM", "dir must be 'b' or 'f'")
    return direction
