"""Server-side search (Client-Server API "Server Side Search").

Searches the rooms the user is joined to, over the spec's keys, best match
first (``rank``) or newest first (``recent``); every result passes history
visibility like any other read. ``next_batch`` is opaque to clients: ``r<offset>``
for rank order, ``s<position>`` for recent order.

Depends on: SearchStore, EventStore, Projections, Visibility, EventSerializer,
ProfileService.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.services.errors import MatrixError
from homeserver.services.filters import EventFilter
from homeserver.services.profile import ProfileService
from homeserver.services.serialize import EventSerializer
from homeserver.services.timeline import Visibility
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.projections import Projections
from homeserver.storage.search import KEY_TYPES, Hit, SearchStore

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_CONTEXT = 20
MAX_TERM = 1000
_WORD = re.compile(r"\w+", re.UNICODE)


def _bad(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


def _int_in(raw: Mapping[str, Any], key: str, default: int, top: int) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _bad(f"{key} must be a non-negative integer")
    return min(v, top)


class SearchService:
    def __init__(
        self,
        store: SearchStore,
        events: EventStore,
        projections: Projections,
        visibility: Visibility,
        serializer: EventSerializer,
        profiles: ProfileService,
    ) -> None:
        self._store = store
        self._events = events
        self._proj = projections
        self._vis = visibility
        self._ser = serializer
        self._profiles = profiles

    async def search(
        self, user_id: str, device_id: str, body: Mapping[str, Any], next_batch: str | None
    ) -> dict[str, Any]:
        cats = body.get("search_categories")
        if not isinstance(cats, Mapping):
            raise _bad("search_categories must be an object")
        crit = cats.get("room_events")
        if crit is None:
            return {"search_categories": {}}
        if not isinstance(crit, Mapping):
            raise _bad("room_events must be an object")
        term = crit.get("search_term")
        if not isinstance(term, str) or not term.strip():
            raise MatrixError(400, "M_MISSING_PARAM", "search_term is required")
        if len(term) > MAX_TERM:
            raise MatrixError(400, "M_INVALID_PARAM", "search_term is too long")
        keys = crit.get("keys", list(KEY_TYPES))
        if not isinstance(keys, list) or not keys or any(k not in KEY_TYPES for k in keys):
            raise _bad(f"keys must be a non-empty list of {', '.join(KEY_TYPES)}")
        raw_filter = crit.get("filter") or {}
        if not isinstance(raw_filter, Mapping):
            raise _bad("filter must be an object")
        flt = EventFilter.from_json(raw_filter)
        order = crit.get("order_by", "rank")
        if order not in ("rank", "recent"):
            raise _bad("order_by must be 'rank' or 'recent'")
        context = crit.get("event_context")
        if context is not None and not isinstance(context, Mapping):
            raise _bad("event_context must be an object")
        include_state = crit.get("include_state", False) is True
        group_by = _group_keys(crit.get("groupings"))
        limit = min(max(flt.limit or DEFAULT_LIMIT, 1), MAX_LIMIT)
        by_rank = order == "rank"
        offset, before = _parse_batch(next_batch, by_rank)

        joined = await self._proj.rooms_for_user(user_id, ("join",))
        rooms = sorted(r for r in joined if flt.allows_room(r))
        types = [KEY_TYPES[k] for k in dict.fromkeys(keys)]
        if flt.types is not None:
            types = [t for t in types if t in flt.types]
        types = [t for t in types if t not in flt.not_types]
        hits, count = await self._store.search(
            term,
            rooms,
            types,
            flt.senders,
            flt.not_senders,
            by_rank=by_rank,
            limit=limit,
            offset=offset,
            before=before,
        )
        more = len(hits) > limit
        hits = hits[:limit]
        visible = await self._visible(user_id, hits)
        serialized = await self._ser.serialize(
            [se for _, se in visible], viewer=(user_id, device_id)
        )
        results = []
        for (hit, se), ev in zip(visible, serialized, strict=True):
            one: dict[str, Any] = {"rank": hit.rank, "result": ev}
            if context is not None:
                one["context"] = await self._context(user_id, device_id, se, context)
            results.append(one)
        out: dict[str, Any] = {
            "results": results,
            "count": count,
            "highlights": sorted({w.lower() for w in _WORD.findall(term)}),
        }
        if more:
            out["next_batch"] = f"r{offset + limit}" if by_rank else f"s{hits[-1].stream_ordering}"
        if group_by:
            out["groups"] = _groups(group_by, visible)
        if include_state:
            out["state"] = {
                r: await self._ser.serialize(
                    list(
                        (
                            await self._events.get_events(
                                (await self._proj.current_state_ids(r)).values()
                            )
                        ).values()
                    ),
                    prev_content=False,
                )
                for r in {h.room_id for h, _ in visible}
            }
        return {"search_categories": {"room_events": out}}

    async def _visible(self, user_id: str, hits: Sequence[Hit]) -> list[tuple[Hit, StoredEvent]]:
        """The hits the user may see (history visibility), in order."""
        stored = await self._events.get_events(h.event_id for h in hits)
        by_room: dict[str, list[StoredEvent]] = {}
        for h in hits:
            se = stored.get(h.event_id)
            if se is not None:
                by_room.setdefault(h.room_id, []).append(se)
        allowed: set[str] = set()
        for evs in by_room.values():
            allowed |= {se.event.event_id for se in await self._vis.filter(user_id, evs, True)}
        return [(h, stored[h.event_id]) for h in hits if h.event_id in allowed]

    async def _context(
        self, user_id: str, device_id: str, se: StoredEvent, raw: Mapping[str, Any]
    ) -> dict[str, Any]:
        before_n = _int_in(raw, "before_limit", 5, MAX_CONTEXT)
        after_n = _int_in(raw, "after_limit", 5, MAX_CONTEXT)
        room = se.event.room_id
        pos = se.stream_ordering
        older = (
            await self._events.timeline_page(
                room, before=pos, after=None, limit=before_n, backwards=True
            )
        ).events
        newer = (
            await self._events.timeline_page(
                room, before=None, after=pos, limit=after_n, backwards=False
            )
        ).events
        older = await self._vis.filter(user_id, older, True)
        newer = await self._vis.filter(user_id, newer, True)
        viewer = (user_id, device_id)
        out: dict[str, Any] = {
            "events_before": await self._ser.serialize(older, viewer=viewer),
            "events_after": await self._ser.serialize(newer, viewer=viewer),
            "start": f"s{older[-1].stream_ordering - 1 if older else pos - 1}",
            "end": f"s{newer[-1].stream_ordering if newer else pos}",
        }
        if raw.get("include_profile") is True:
            senders = {e.event.sender for e in [se, *older, *newer]}
            info = {}
            for s in sorted(senders):
                p = await self._profiles.get(s)
                info[s] = {
                    k: v
                    for k, v in (("displayname", p.displayname), ("avatar_url", p.avatar_url))
                    if v is not None
                }
            out["profile_info"] = info
        return out


def _parse_batch(token: str | None, by_rank: bool) -> tuple[int, int | None]:
    if token is None:
        return 0, None
    kind, digits = token[:1], token[1:]
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
        raise MatrixError(400, "M_INVALID_PARAM", "Invalid next_batch")
    if by_rank and kind == "r":
        return int(digits), None
    if not by_rank and kind == "s":
        return 0, int(digits)
    raise MatrixError(400, "M_INVALID_PARAM", "next_batch is for another order")


def _group_keys(raw: Any) -> list[str]:
    if raw is None:
        return []
    groups = raw.get("group_by") if isinstance(raw, Mapping) else None
    if not isinstance(groups, list):
        raise _bad("groupings.group_by must be a list")
    keys = []
    for g in groups:
        key = g.get("key") if isinstance(g, Mapping) else None
        if key not in ("room_id", "sender"):
            raise _bad("a grouping key is 'room_id' or 'sender'")
        keys.append(str(key))
    return keys


def _groups(keys: Sequence[str], visible: Sequence[tuple[Hit, StoredEvent]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        groups: dict[str, dict[str, Any]] = {}
        for _, se in visible:
            value = se.event.room_id if key == "room_id" else se.event.sender
            g = groups.setdefault(value, {"results": [], "order": len(groups) + 1})
            g["results"].append(se.event.event_id)
        out[key] = groups
    return out
