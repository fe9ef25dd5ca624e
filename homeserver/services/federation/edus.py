"""EDUs: typing notifications, read receipts and presence, in and out.

Inbound, an EDU about a user is accepted only from that user's server and
only for a room the user is joined to (Server-Server API, "Typing
Notifications", "Receipts"). Outbound, local typing and public read
receipts go to every other server with a joined member in the room.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from homeserver.services.clock import now_ms
from homeserver.services.federation.sender import FederationSender
from homeserver.storage.ephemeral import EphemeralStore
from homeserver.storage.federation import FederationStore
from homeserver.storage.projections import Projections

log = logging.getLogger(__name__)

DEFAULT_TYPING_MS = 30_000
MAX_TYPING_MS = 120_000


def _server(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


class Edus:
    def __init__(
        self,
        ephemeral: EphemeralStore,
        projections: Projections,
        fstore: FederationStore,
        sender: FederationSender,
        server_name: str,
    ) -> None:
        self._eph = ephemeral
        self._proj = projections
        self._fstore = fstore
        self._sender = sender
        self._name = server_name
        # m.presence EDUs go to the presence service (set by app.py).
        self.on_presence: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None

    async def _joined(self, room_id: str, user_id: str) -> bool:
        m = await self._proj.membership(room_id, user_id)
        return m is not None and m[0] == "join"

    # ---------------------------------------------------------------- in
    async def receive(self, origin: str, edu: Any) -> None:
        if not isinstance(edu, Mapping):
            return
        kind, content = edu.get("edu_type"), edu.get("content")
        if not isinstance(content, Mapping):
            return
        try:
            if kind == "m.typing":
                await self._typing(origin, content)
            elif kind == "m.receipt":
                await self._receipts(origin, content)
            elif kind == "m.presence" and self.on_presence is not None:
                await self.on_presence(origin, content)
        except Exception:
            log.exception("EDU %s from %s failed", kind, origin)

    async def _typing(self, origin: str, c: Mapping[str, Any]) -> None:
        room_id, user_id, typing = c.get("room_id"), c.get("user_id"), c.get("typing")
        if not isinstance(room_id, str) or not isinstance(user_id, str):
            return
        if _server(user_id) != origin or not await self._joined(room_id, user_id):
            return
        if typing is True:
            timeout = c.get("timeout")
            ms = timeout if isinstance(timeout, int) and timeout > 0 else DEFAULT_TYPING_MS
            await self._eph.set_typing(room_id, user_id, now_ms() + min(ms, MAX_TYPING_MS))
        else:
            await self._eph.set_typing(room_id, user_id, None)

    async def _receipts(self, origin: str, c: Mapping[str, Any]) -> None:
        for room_id, by_type in c.items():
            if not isinstance(by_type, Mapping):
                continue
            reads = by_type.get("m.read")
            if not isinstance(reads, Mapping):
                continue
            for user_id, r in reads.items():
                if not isinstance(r, Mapping) or not isinstance(user_id, str):
                    continue
                if not isinstance(room_id, str) or _server(user_id) != origin:
                    continue
                if not await self._joined(room_id, user_id):
                    continue
                ids = r.get("event_ids")
                raw = r.get("data")
                data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
                raw_ts, raw_thread = data.get("ts"), data.get("thread_id")
                ts = (
                    raw_ts if isinstance(raw_ts, int) and not isinstance(raw_ts, bool) else now_ms()
                )
                thread = raw_thread if isinstance(raw_thread, str) else ""
                for eid in ids if isinstance(ids, list) else []:
                    if isinstance(eid, str):
                        await self._eph.put_receipt(room_id, "m.read", user_id, thread, eid, ts)

    # --------------------------------------------------------------- out
    async def local_change(self, edu_type: str, room_id: str, content: dict[str, Any]) -> None:
        """EphemeralService hook: a local user typed or read."""
        servers = await self._fstore.joined_servers(None, room_id)
        servers.discard(self._name)
        if servers:
            await self._sender.send_edu(servers, edu_type, content)
