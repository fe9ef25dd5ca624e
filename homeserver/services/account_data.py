"""Account data (global and per room) and the direct-message lookup.

``m.direct`` is the client-maintained map of DM partners; the server also
keeps it current when a DM is created through createRoom ``is_direct`` (for
the inviter when creating, and for the invitee when they join), so the DM
lookup works for clients that never write ``m.direct`` themselves.
"""

from __future__ import annotations

from typing import Any

from homeserver.core.events import Event
from homeserver.services.errors import MatrixError, forbidden
from homeserver.services.notifier import Notifier
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.projections import Projections

# Types the server manages itself and clients may not set (spec: 405 M_BAD_JSON).
_SERVER_MANAGED = {"m.fully_read", "m.push_rules"}
MAX_TAG_BYTES = 255


class AccountDataService:
    def __init__(
        self, store: AccountDataStore, projections: Projections, notifier: Notifier
    ) -> None:
        self._store = store
        self._proj = projections
        self._notifier = notifier

    async def put(
        self,
        requester: str,
        user_id: str,
        room_id: str,
        type: str,
        content: dict[str, Any],
        *,
        internal: bool = False,
    ) -> None:
        if requester != user_id:
            raise forbidden("Cannot add account data for other users.")
        if not internal and type in _SERVER_MANAGED:
            raise MatrixError(405, "M_BAD_JSON", f"Cannot set {type} through this API")
        pos = await self._store.put(user_id, room_id, type, content)
        self._notifier.local_notify(pos, None, [user_id])

    async def get(self, requester: str, user_id: str, room_id: str, type: str) -> dict[str, Any]:
        if requester != user_id:
            raise forbidden("Cannot get account data for other users.")
        content = await self._store.get(user_id, room_id, type)
        if content is None:
            raise MatrixError(404, "M_NOT_FOUND", "Account data not found")
        return content

    async def tags(self, requester: str, user_id: str, room_id: str) -> dict[str, Any]:
        """The room's ``m.tag`` tags (Client-Server API "Room tagging")."""
        if requester != user_id:
            raise forbidden("Cannot get tags for other users.")
        content = await self._store.get(user_id, room_id, "m.tag") or {}
        tags = content.get("tags")
        return dict(tags) if isinstance(tags, dict) else {}

    async def set_tag(
        self,
        requester: str,
        user_id: str,
        room_id: str,
        tag: str,
        content: dict[str, Any] | None,
    ) -> None:
        """Add or (``content`` None) remove one tag; the ``m.tag`` account
        data changes with it, and /sync reports it."""
        if requester != user_id:
            raise forbidden("Cannot set tags for other users.")
        if not tag or len(tag.encode()) > MAX_TAG_BYTES:
            raise MatrixError(400, "M_INVALID_PARAM", f"A tag is 1 to {MAX_TAG_BYTES} bytes")
        if content is not None:
            order = content.get("order")
            if order is not None and (
                isinstance(order, bool)
                or not isinstance(order, (int, float))
                or not 0 <= order <= 1
            ):
                raise MatrixError(400, "M_INVALID_PARAM", "order must be a number from 0 to 1")
        pos = await self._store.set_tag(user_id, room_id, tag, content)
        self._notifier.local_notify(pos, None, [user_id])

    async def add_direct(self, user_id: str, partner: str, room_id: str) -> None:
        content = await self._store.get(user_id, "", "m.direct") or {}
        rooms = list(content.get(partner, []))
        if room_id in rooms:
            return
        content = dict(content)
        content[partner] = [*rooms, room_id]
        await self.put(user_id, user_id, "", "m.direct", content, internal=True)

    async def on_invite(self, ev: Event) -> None:
        """createRoom/invite with is_direct: record the DM for the inviter."""
        if ev.content.get("is_direct") is True and ev.state_key:
            await self.add_direct(ev.sender, ev.state_key, ev.room_id)

    async def dm_rooms(self, user_id: str, partner: str) -> list[str]:
        """DM rooms with ``partner`` that ``user_id`` is still in or invited to."""
        content = await self._store.get(user_id, "", "m.direct") or {}
        candidates = [r for r in content.get(partner, []) if isinstance(r, str)]
        mine = await self._proj.rooms_for_user(user_id, ["join", "invite"])
        # Also rooms whose member events carry is_direct between the two.
        rows = await self._proj.direct_rooms_between(user_id, partner)
        for r in rows:
            if r not in candidates:
                candidates.append(r)
        return [r for r in candidates if r in mine]
