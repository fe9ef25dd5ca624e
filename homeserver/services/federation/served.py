"""What this server answers to other servers about rooms and users:
events, state, auth chains, backfill, missing events, directory and profile
queries.

Room reads are refused (403) to servers with no joined member in the room,
and events a server may not see under the room's history visibility are
served redacted (Server-Server API; visibility as for the server's users:
``world_readable`` and ``shared`` histories are visible, ``invited`` and
``joined`` ones only where one of the server's users was invited or joined
at the event).

Depends on: EventStore, Projections, FederationStore, Ingest (state
resolution), DirectoryService, ProfileService.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from homeserver.core.canonical import redact
from homeserver.core.events import StateKey
from homeserver.core.ids import InvalidID, RoomAlias, UserID
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.federation.ingest import Ingest
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.federation import FederationStore
from homeserver.storage.projections import Projections

MAX_BACKFILL = 100
MAX_MISSING = 100


def pdu_of(se: StoredEvent) -> dict[str, Any]:
    return dict(se.event.pdu)


class FederationServer:
    def __init__(
        self,
        store: EventStore,
        projections: Projections,
        fstore: FederationStore,
        ingest: Ingest,
        server_name: str,
        directory: Any,
        profiles: Any,
    ) -> None:
        self._store = store
        self._proj = projections
        self._fstore = fstore
        self._ingest = ingest
        self._server_name = server_name
        self._directory = directory
        self._profiles = profiles

    # ------------------------------------------------------------ access
    async def require_server_in_room(self, origin: str, room_id: str) -> None:
        if await self._store.room_version(room_id) is None:
            raise not_found("Unknown room")
        if origin not in await self._fstore.joined_servers(None, room_id):
            raise forbidden(f"{origin} is not in room {room_id}")

    async def _room_event(self, room_id: str, event_id: str) -> StoredEvent:
        se = await self._store.get_event(event_id)
        if se is None or se.event.room_id != room_id:
            raise not_found("Unknown event")
        return se

    async def can_see(self, origin: str, se: StoredEvent) -> bool:
        if se.outlier or se.state_group is None:
            return True  # auth and state events: needed to validate the room
        state = await self._store.state_at_group(se.state_group)
        hv_id = state.get(("m.room.history_visibility", ""))
        hv = "shared"
        if hv_id is not None:
            hv_ev = await self._store.get_event(hv_id)
            if hv_ev is not None:
                hv = str(hv_ev.event.content.get("history_visibility", "shared"))
        if hv not in ("invited", "joined"):
            return True
        suffix = ":" + origin
        ids = [v for (t, sk), v in state.items() if t == "m.room.member" and sk.endswith(suffix)]
        for m in (await self._store.get_event_objs(ids)).values():
            if m.membership == "join" or (hv == "invited" and m.membership == "invite"):
                return True
        return False

    async def _visible_pdus(
        self, origin: str, events: Iterable[StoredEvent]
    ) -> list[dict[str, Any]]:
        out = []
        for se in events:
            pdu = pdu_of(se)
            if not await self.can_see(origin, se):
                pdu = redact(pdu, se.event.room_version)
            out.append(pdu)
        return out

    # ------------------------------------------------------------ events
    async def event(self, origin: str, event_id: str) -> dict[str, Any]:
        se = await self._store.get_event(event_id)
        if se is None:
            raise not_found("Unknown event")
        await self.require_server_in_room(origin, se.event.room_id)
        (pdu,) = await self._visible_pdus(origin, [se])
        return {"origin": self._server_name, "origin_server_ts": _now(), "pdus": [pdu]}

    async def state_before(self, se: StoredEvent) -> dict[StateKey, str]:
        """The room state before ``se`` (what /state and /state_ids serve)."""
        ev = se.event
        after = await self._store.state_at_group(se.state_group) if se.state_group else {}
        if not ev.is_state or se.rejected_reason or after.get(ev.state_tuple) != ev.event_id:
            return dict(after)
        group = await self._fstore.state_before_group(ev.event_id)
        if group is not None:
            return dict(await self._store.state_at_group(group))
        prevs = await self._store.get_events(ev.prev_events)
        states = [
            dict(await self._store.state_at_group(p.state_group))
            for p in prevs.values()
            if not p.outlier
        ]
        if states and len(states) == len(set(ev.prev_events)):
            if all(s == states[0] for s in states[1:]):
                return states[0]
            return await self._ingest.resolve(ev.room_version, ev.room_id, states)
        out = dict(after)
        del out[ev.state_tuple]
        return out

    async def _state_at(
        self, origin: str, room_id: str, event_id: str
    ) -> tuple[dict[StateKey, str], StoredEvent]:
        await self.require_server_in_room(origin, room_id)
        se = await self._room_event(room_id, event_id)
        if se.outlier:
            raise not_found("No state known at that event")
        if not await self.can_see(origin, se):
            raise forbidden("You may not see the state at that event")
        return await self.state_before(se), se

    async def state_ids(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        state, _ = await self._state_at(origin, room_id, event_id)
        ids = list(state.values())
        chain = await self._store.auth_chain_ids(ids)
        return {"pdu_ids": ids, "auth_chain_ids": sorted(chain)}

    async def state(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        state, _ = await self._state_at(origin, room_id, event_id)
        ids = list(state.values())
        chain = await self._store.auth_chain_ids(ids)
        evs = await self._store.get_events([*ids, *chain])
        return {
            "pdus": [pdu_of(evs[i]) for i in ids if i in evs],
            "auth_chain": [pdu_of(evs[i]) for i in sorted(chain) if i in evs],
        }

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        await self.require_server_in_room(origin, room_id)
        await self._room_event(room_id, event_id)
        chain = await self._store.auth_chain_ids([event_id])
        evs = await self._store.get_events(chain)
        ordered = sorted(evs.values(), key=lambda s: (s.event.depth, s.event.event_id))
        return {"auth_chain": [pdu_of(s) for s in ordered]}

    async def auth_chain_pdus(self, event_ids: Iterable[str]) -> list[dict[str, Any]]:
        chain = await self._store.auth_chain_ids(event_ids)
        evs = await self._store.get_events(chain)
        ordered = sorted(evs.values(), key=lambda s: (s.event.depth, s.event.event_id))
        return [pdu_of(s) for s in ordered]

    async def state_pdus(self, state: Mapping[StateKey, str]) -> list[dict[str, Any]]:
        evs = await self._store.get_events(state.values())
        return [pdu_of(evs[i]) for i in state.values() if i in evs]

    # ----------------------------------------------------------- history
    async def backfill(
        self, origin: str, room_id: str, v: Sequence[str], limit: int
    ) -> dict[str, Any]:
        await self.require_server_in_room(origin, room_id)
        limit = max(1, min(limit, MAX_BACKFILL))
        ids = await self._fstore.events_for_backfill(room_id, list(v), limit)
        evs = await self._store.get_events(ids)
        ordered = [evs[i] for i in ids if i in evs]
        return {
            "origin": self._server_name,
            "origin_server_ts": _now(),
            "pdus": await self._visible_pdus(origin, ordered),
        }

    async def get_missing_events(
        self,
        origin: str,
        room_id: str,
        earliest: Sequence[str],
        latest: Sequence[str],
        limit: int,
        min_depth: int,
    ) -> dict[str, Any]:
        """Events before ``latest`` back to (excluding) ``earliest``, breadth
        first, oldest first in the answer."""
        await self.require_server_in_room(origin, room_id)
        limit = max(0, min(limit, MAX_MISSING))
        seen = set(earliest) | set(latest)
        frontier = list(latest)
        found: list[StoredEvent] = []
        while frontier and len(found) < limit:
            evs = await self._store.get_events(frontier)
            nxt: list[str] = []
            for eid in frontier:
                se = evs.get(eid)
                if se is None or se.event.room_id != room_id:
                    continue
                for p in se.event.prev_events:
                    if p not in seen:
                        seen.add(p)
                        nxt.append(p)
            prevs = await self._store.get_events(nxt)
            for p in nxt:
                se = prevs.get(p)
                if (
                    se is not None
                    and not se.outlier
                    and se.event.room_id == room_id
                    and se.event.depth >= min_depth
                    and len(found) < limit
                ):
                    found.append(se)
            frontier = [p for p in nxt if p in prevs and not prevs[p].outlier]
        found.sort(key=lambda s: (s.event.depth, s.stream_ordering))
        return {"events": await self._visible_pdus(origin, found)}

    # ------------------------------------------------------------ queries
    async def query_directory(self, alias: str) -> dict[str, Any]:
        try:
            parsed = RoomAlias.parse(alias)
        except InvalidID as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from e
        if parsed.server_name != self._server_name:
            raise not_found("Room alias not found")
        room_id, servers = await self._directory.resolve(parsed)
        return {"room_id": room_id, "servers": servers}

    async def query_profile(self, user_id: str, field: str | None) -> dict[str, Any]:
        try:
            uid = UserID.parse(user_id)
        except InvalidID as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from e
        if uid.server_name != self._server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "User is not on this server")
        if field is not None and field not in ("displayname", "avatar_url"):
            raise MatrixError(400, "M_INVALID_PARAM", f"Unknown profile field {field}")
        p = await self._profiles.get_if_exists(uid)
        if p is None:
            raise not_found("Profile not found")
        out: dict[str, Any] = {}
        if p.displayname is not None:
            out["displayname"] = p.displayname
        if p.avatar_url is not None:
            out["avatar_url"] = p.avatar_url
        if field is not None:
            out = {k: v for k, v in out.items() if k == field}
        return out


def _now() -> int:
    from homeserver.services.clock import now_ms

    return now_ms()
