"""Space hierarchies (Client-Server API ``/hierarchy``, Server-Server API
``/hierarchy``).

A space lists its children as ``m.space.child`` state events (state key: the
child's room id, ``via``: servers to reach it). The walk is breadth-first
from the requested room, children ordered by their ``order`` key (the spec's
rule: valid orders first, by code points), then by the child event's
timestamp, then room id. A room is shown when the asker may see it: joined
or invited, a public, knockable or world-readable room, or a restricted room
whose allowed rooms the user is in. Rooms this server is not in are asked
of the servers their ``via`` names, over federation.

Pages are stateless: ``next_batch`` is the number of rooms already given, and
the walk is made again (bounded by ``MAX_ROOMS``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.services.directory import room_summary
from homeserver.services.errors import MatrixError, forbidden
from homeserver.services.room_state import RoomState
from homeserver.storage.events import EventStore
from homeserver.storage.projections import Projections

log = logging.getLogger(__name__)

MAX_ROOMS = 1000
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
CHILD = "m.space.child"
OPEN_RULES = ("public", "knock", "knock_restricted")

# (server, room id, suggested only) → the federation /hierarchy answer or None
RemoteHierarchy = Callable[[str, str, bool], Awaitable[Mapping[str, Any] | None]]


@dataclass
class _Node:
    summary: dict[str, Any]
    children: list[tuple[str, list[str]]]  # (child room, via)
    stats: Mapping[str, Any] | None = None  # the room_stats row (local rooms)


def _order_key(ev: Mapping[str, Any]) -> tuple[int, str, int, str]:
    order = ev.get("content", {}).get("order")
    valid = (
        isinstance(order, str) and len(order) <= 50 and all(0x20 <= ord(c) <= 0x7E for c in order)
    )
    return (
        0 if valid else 1,
        order if valid else "",
        int(ev.get("origin_server_ts", 0)),
        str(ev.get("state_key", "")),
    )


def _children(
    children_state: list[dict[str, Any]], suggested_only: bool
) -> list[tuple[str, list[str]]]:
    out = []
    for ev in sorted(children_state, key=_order_key):
        content = ev.get("content", {})
        via = content.get("via") if isinstance(content, Mapping) else None
        if not isinstance(via, list) or not via:
            continue  # no via: not a child (spec)
        if suggested_only and content.get("suggested") is not True:
            continue
        out.append((str(ev["state_key"]), [s for s in via if isinstance(s, str)]))
    return out


class HierarchyService:
    def __init__(self, projections: Projections, state: RoomState, store: EventStore) -> None:
        self._proj = projections
        self._state = state
        self._store = store
        self.remote: RemoteHierarchy | None = None  # set by app.py with federation

    # ------------------------------------------------------------ local view
    async def children_state(self, room_id: str) -> list[dict[str, Any]]:
        """The room's ``m.space.child`` events, stripped (with their ts)."""
        ids = await self._proj.state_ids_of_type(room_id, CHILD)
        evs = await self._store.get_event_objs(ids.values())
        out = []
        for key, eid in ids.items():
            ev = evs.get(eid)
            if ev is None:
                raise LookupError(f"state event {eid} of {room_id} is not stored")
            if ev.content:  # an emptied child event removes the child
                out.append(
                    {
                        "type": CHILD,
                        "state_key": key,
                        "content": dict(ev.content),
                        "sender": ev.sender,
                        "origin_server_ts": ev.origin_server_ts,
                    }
                )
        return out

    async def _user_may_see(self, user_id: str, room_id: str, stats: Mapping[str, Any]) -> bool:
        if await self._state.membership(room_id, user_id) in ("join", "invite"):
            return True
        if (
            stats.get("join_rule") in OPEN_RULES
            or stats.get("history_visibility") == "world_readable"
        ):
            return True
        if stats.get("join_rule") == "restricted":
            rules = await self._state.content(room_id, "m.room.join_rules")
            for allow in rules.get("allow", []) if isinstance(rules.get("allow"), list) else []:
                other = allow.get("room_id") if isinstance(allow, Mapping) else None
                if (
                    isinstance(other, str)
                    and await self._state.membership(other, user_id) == "join"
                ):
                    return True
        return False

    async def server_may_see(self, origin: str, room_id: str, stats: Mapping[str, Any]) -> bool:
        if stats.get("join_rule") in (*OPEN_RULES, "restricted"):
            return True
        if stats.get("history_visibility") == "world_readable":
            return True
        members = await self._proj.members(room_id, ("join",))
        return any(m["user_id"].endswith(":" + origin) for m in members)

    async def _local(self, room_id: str, suggested_only: bool) -> _Node | None:
        stats = await self._proj.room_stats(room_id)
        if stats is None or not await self._state.store.room_exists(room_id):
            return None
        summary = room_summary(stats)
        state = await self.children_state(room_id)
        summary["children_state"] = state
        return _Node(summary, _children(state, suggested_only), stats)

    # ------------------------------------------------------------ the walk
    async def hierarchy(
        self,
        user_id: str,
        room_id: str,
        *,
        suggested_only: bool,
        limit: int | None,
        max_depth: int | None,
        from_token: str | None,
    ) -> dict[str, Any]:
        page = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        if limit is not None and limit < 1:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must be positive")
        if max_depth is not None and max_depth < 0:
            raise MatrixError(400, "M_INVALID_PARAM", "max_depth must not be negative")
        skip = _parse_token(from_token)
        root = await self._local(room_id, suggested_only)
        if root is None or not await self._user_may_see(user_id, room_id, root.stats or {}):
            raise forbidden("You cannot see this room's hierarchy")
        rooms: list[dict[str, Any]] = []
        queue: list[tuple[str, list[str], int]] = [(room_id, [], 0)]
        remote_cache: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        while queue and len(rooms) < skip + page and len(seen) < MAX_ROOMS:
            rid, via, depth = queue.pop(0)
            if rid in seen:
                continue
            seen.add(rid)
            node = await self._visible_node(user_id, rid, via, suggested_only, remote_cache)
            if node is None:
                continue
            rooms.append(node.summary)
            if max_depth is None or depth < max_depth:
                queue.extend((c, v, depth + 1) for c, v in node.children if c not in seen)
        out: dict[str, Any] = {"rooms": rooms[skip : skip + page]}
        if queue and len(rooms) >= skip + page:
            out["next_batch"] = f"h{skip + page}"
        return out

    async def _visible_node(
        self,
        user_id: str,
        room_id: str,
        via: list[str],
        suggested_only: bool,
        remote_cache: dict[str, dict[str, Any]],
    ) -> _Node | None:
        node = await self._local(room_id, suggested_only)
        if node is not None:
            return node if await self._user_may_see(user_id, room_id, node.stats or {}) else None
        summary = remote_cache.get(room_id)
        if summary is None:
            summary = await self._ask_remote(room_id, via, suggested_only, remote_cache)
        if summary is None:
            return None
        state = summary.get("children_state")
        children = _children(state, suggested_only) if isinstance(state, list) else []
        return _Node(summary, children)

    async def _ask_remote(
        self,
        room_id: str,
        via: list[str],
        suggested_only: bool,
        remote_cache: dict[str, dict[str, Any]],
    ) -> dict[str, Any] | None:
        if self.remote is None:
            return None
        for server in via[:3]:
            try:
                answer = await self.remote(server, room_id, suggested_only)
            except Exception as e:  # a server down or refusing: try the next
                log.info("hierarchy of %s from %s failed: %s", room_id, server, e)
                continue
            if not isinstance(answer, Mapping):
                continue
            room = answer.get("room")
            if not isinstance(room, dict) or room.get("room_id") != room_id:
                continue
            for child in (
                answer.get("children", []) if isinstance(answer.get("children"), list) else []
            ):
                if isinstance(child, dict) and isinstance(child.get("room_id"), str):
                    remote_cache.setdefault(child["room_id"], child)
            return room
        return None

    # ------------------------------------------------------------ federation
    async def for_server(self, origin: str, room_id: str, suggested_only: bool) -> dict[str, Any]:
        """The federation answer: the room, its accessible children we
        know, and the children we know but may not show."""
        stats = await self._proj.room_stats(room_id)
        node = await self._local(room_id, suggested_only)
        if stats is None or node is None or not await self.server_may_see(origin, room_id, stats):
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room or not accessible")
        children, inaccessible = [], []
        for child, _via in node.children:
            cstats = await self._proj.room_stats(child)
            cnode = await self._local(child, suggested_only)
            if cstats is None or cnode is None:
                continue
            if await self.server_may_see(origin, child, cstats):
                children.append(cnode.summary)
            else:
                inaccessible.append(child)
        return {"room": node.summary, "children": children, "inaccessible_children": inaccessible}


def _parse_token(token: str | None) -> int:
    if token is None:
        return 0
    digits = token[1:]
    if not token.startswith("h") or not (digits.isascii() and digits.isdigit() and len(digits) < 7):
        raise MatrixError(400, "M_INVALID_PARAM", "Invalid from token")
    return int(digits)
