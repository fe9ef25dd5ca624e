"""Presence (Client-Server API "Presence", Server-Server API "Presence").

A user's presence is ``online``, ``unavailable`` or ``offline`` with an
optional status message. Clients set their own (``PUT /presence``, or
``set_presence`` on /sync); the users who share a room with them see it, in
/sync and through ``GET /presence``; other servers with members in those
rooms get ``m.presence`` EDUs, and theirs are taken for their own users only.

Depends on: PresenceStore, Notifier (waking long-polls), and a hook to send
EDUs (set by federation).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from homeserver.services.clock import now_ms
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.notifier import Notifier
from homeserver.storage.presence import Presence, PresenceStore

log = logging.getLogger(__name__)

STATES = ("online", "unavailable", "offline")
MAX_STATUS = 1000
# How long a client's "online" on /sync counts as currently active.
ACTIVE_WINDOW_MS = 60_000

SendEdu = Callable[[set[str], str, dict[str, Any]], Awaitable[None]]


def presence_content(p: Presence, now: int) -> dict[str, Any]:
    content: dict[str, Any] = {
        "presence": p.state,
        "last_active_ago": max(0, now - p.last_active_ts),
        "currently_active": p.currently_active,
    }
    if p.status_msg is not None:
        content["status_msg"] = p.status_msg
    return content


class PresenceService:
    def __init__(self, store: PresenceStore, notifier: Notifier, server_name: str) -> None:
        self._store = store
        self._notifier = notifier
        self._name = server_name
        self.send_edu: SendEdu | None = None
        # user → (state, last active) as this process last wrote or read it
        self._synced: dict[str, tuple[str, int]] = {}
        self.exists: Callable[[str], Awaitable[bool]] | None = None

    async def set_status(self, requester: str, user_id: str, state: Any, status_msg: Any) -> None:
        if requester != user_id:
            raise forbidden("You can only set your own presence")
        if state not in STATES:
            raise MatrixError(
                400, "M_INVALID_PARAM", f"presence must be one of {', '.join(STATES)}"
            )
        if status_msg is not None and (
            not isinstance(status_msg, str) or len(status_msg) > MAX_STATUS
        ):
            raise MatrixError(400, "M_INVALID_PARAM", "status_msg must be a string (at most 1000)")
        await self._set(user_id, state, status_msg, keep_status=False)

    async def from_sync(self, user_id: str, state: str) -> None:
        """``set_presence`` on /sync (``offline``: leave presence alone, as
        Synapse). Written only when it changes something or an ``online``
        grows stale: a long-polling client repeats it every request, and the
        answer is remembered so that repeating costs no database read."""
        if state == "offline":
            return
        now = now_ms()
        seen = self._synced.get(user_id)
        if seen is not None and seen[0] == state and now - seen[1] < ACTIVE_WINDOW_MS // 2:
            return
        current = await self._store.get(user_id)
        if (
            current is None
            or current.state != state
            or now - current.last_active_ts >= ACTIVE_WINDOW_MS // 2
        ):
            await self._set(user_id, state, None, keep_status=True)
            current = await self._store.get(user_id)
        if len(self._synced) > 100_000:
            self._synced.clear()
        if current is not None:
            self._synced[user_id] = (current.state, current.last_active_ts)

    async def _set(
        self, user_id: str, state: str, status: str | None, *, keep_status: bool
    ) -> None:
        now = now_ms()
        active = state == "online"
        pos = await self._store.put(user_id, state, status, now, active, keep_status)
        watchers = await self._store.watchers(user_id)
        self._notifier.local_notify(pos, None, [user_id, *watchers])
        if self.send_edu is not None:
            servers = await self._store.servers_sharing(user_id)
            servers.discard(self._name)
            p = await self._store.get(user_id)
            if servers and p is not None:
                content = {"push": [{"user_id": user_id, **presence_content(p, now)}]}
                await self.send_edu(servers, "m.presence", content)

    async def get_status(self, requester: str, user_id: str) -> dict[str, Any]:
        if requester != user_id and not await self._store.share_a_room(requester, user_id):
            local = user_id.endswith(":" + self._name)
            if local and self.exists is not None and not await self.exists(user_id):
                raise not_found(f"Unknown user {user_id}")
            raise forbidden("You do not share a room with this user")
        p = await self._store.get(user_id)
        if p is None:
            return {"presence": "offline"}
        return presence_content(p, now_ms())

    async def events_since(self, viewer: str, after: int, upto: int) -> list[dict[str, Any]]:
        """``m.presence`` events for /sync."""
        now = now_ms()
        return [
            {"type": "m.presence", "sender": p.user_id, "content": presence_content(p, now)}
            for p in await self._store.changed_for(viewer, after, upto)
        ]

    async def receive_edu(self, origin: str, content: Mapping[str, Any]) -> None:
        """An ``m.presence`` EDU: each update of a user of ``origin`` who
        shares a room with one of ours."""
        push = content.get("push")
        for item in push if isinstance(push, list) else []:
            if not isinstance(item, Mapping):
                continue
            user_id, state = item.get("user_id"), item.get("presence")
            if not isinstance(user_id, str) or user_id.split(":", 1)[-1] != origin:
                continue
            if state not in STATES:
                continue
            ago = item.get("last_active_ago")
            ago = ago if isinstance(ago, int) and not isinstance(ago, bool) and ago >= 0 else 0
            status = item.get("status_msg")
            status = status[:MAX_STATUS] if isinstance(status, str) else None
            watchers = await self._store.watchers(user_id)
            if not watchers:
                continue  # nobody here shares a room with them
            pos = await self._store.put(
                user_id, str(state), status, now_ms() - ago, item.get("currently_active") is True
            )
            self._notifier.local_notify(pos, None, watchers)
