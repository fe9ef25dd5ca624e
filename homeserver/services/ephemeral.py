"""Typing notifications, read receipts and read markers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.services.account_data import AccountDataService
from homeserver.services.clock import now_ms
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.room_state import RoomState
from homeserver.storage.ephemeral import EphemeralStore

MAX_TYPING_MS = 120_000
RECEIPT_TYPES = ("m.read", "m.read.private")


class EphemeralService:
    def __init__(
        self, store: EphemeralStore, state: RoomState, account_data: AccountDataService
    ) -> None:
        self._store = store
        self._state = state
        self._account_data = account_data
        # Told of local typing and public receipts: (EDU type, room, content)
        # — federation sends them on to the room's other servers.
        self.on_local_edu: list[Callable[[str, str, dict[str, Any]], Awaitable[None]]] = []

    async def _tell(self, edu_type: str, room_id: str, content: dict[str, Any]) -> None:
        for hook in self.on_local_edu:
            await hook(edu_type, room_id, content)

    async def set_typing(
        self, requester: str, room_id: str, user_id: str, typing: bool, timeout_ms: int | None
    ) -> None:
        if requester != user_id:
            raise forbidden("Cannot set typing state for another user")
        await self._state.require_joined(room_id, user_id)
        if typing:
            timeout = min(max(timeout_ms or 30_000, 0), MAX_TYPING_MS)
            await self._store.set_typing(room_id, user_id, now_ms() + timeout)
        else:
            await self._store.set_typing(room_id, user_id, None)
        edu: dict[str, Any] = {"room_id": room_id, "user_id": user_id, "typing": typing}
        if typing:
            edu["timeout"] = timeout
        await self._tell("m.typing", room_id, edu)

    async def receipt(
        self,
        user_id: str,
        room_id: str,
        receipt_type: str,
        event_id: str,
        thread_id: str | None = None,
    ) -> None:
        if receipt_type == "m.fully_read":
            await self.read_marker(user_id, room_id, event_id)
            return
        if receipt_type not in RECEIPT_TYPES:
            raise MatrixError(400, "M_INVALID_PARAM", f"Unknown receipt type {receipt_type}")
        await self._state.require_joined(room_id, user_id)
        await self._require_event(room_id, event_id)
        ts = now_ms()
        await self._store.put_receipt(room_id, receipt_type, user_id, thread_id or "", event_id, ts)
        if receipt_type == "m.read":
            data: dict[str, Any] = {"ts": ts}
            if thread_id:
                data["thread_id"] = thread_id
            await self._tell(
                "m.receipt",
                room_id,
                {room_id: {"m.read": {user_id: {"event_ids": [event_id], "data": data}}}},
            )

    async def read_marker(self, user_id: str, room_id: str, event_id: str) -> None:
        await self._state.require_joined(room_id, user_id)
        await self._require_event(room_id, event_id)
        await self._account_data.put(
            user_id, user_id, room_id, "m.fully_read", {"event_id": event_id}, internal=True
        )

    async def _require_event(self, room_id: str, event_id: str) -> None:
        se = await self._state.store.get_event(event_id)
        if se is None or se.event.room_id != room_id:
            raise not_found("Event not found")
