"""Sending events: messages, state, redactions (with transaction ids)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.core.auth import AuthError, get_named_level, get_user_power_level
from homeserver.core.events import Event
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.event_creator import Draft, EventCreator, RoomNotFound
from homeserver.services.room_state import RoomState

# Types a client may not set through /send or /state directly: membership has
# its own endpoints (and rules), create can never be sent twice.
_STATE_VIA_MEMBERSHIP = {"m.room.member"}


class MessageService:
    def __init__(self, creator: EventCreator, state: RoomState) -> None:
        self._creator = creator
        self._state = state

    async def _append(self, room_id: str, draft: Draft) -> Event:
        try:
            (ev,) = await self._creator.send(room_id, [draft])
        except AuthError as e:
            raise forbidden(str(e)) from e
        except RoomNotFound as e:
            # As for any room the sender is not in: no hint that it exists.
            raise forbidden(f"User {draft.sender} not in room {room_id}") from e
        except ValueError as e:
            too_large = "too large" in str(e).lower()
            raise MatrixError(
                413 if too_large else 400, "M_TOO_LARGE" if too_large else "M_BAD_JSON", str(e)
            ) from e
        return ev

    async def send(
        self,
        user_id: str,
        device_id: str,
        room_id: str,
        type: str,
        content: Mapping[str, Any],
        txn_id: str,
    ) -> str:
        # Membership and transaction-id reuse are both checked by the room's
        # writer under its lock (auth rule 5 refuses non-members).
        if type == "m.room.redaction":
            redacts = content.get("redacts")
            if not isinstance(redacts, str):
                raise MatrixError(400, "M_BAD_JSON", "m.room.redaction needs content.redacts")
            return await self.redact(user_id, device_id, room_id, redacts, dict(content), txn_id)
        ev = await self._append(
            room_id, Draft(type, user_id, content, txn=(user_id, device_id, txn_id))
        )
        return ev.event_id

    async def send_state(
        self, user_id: str, room_id: str, type: str, state_key: str, content: Mapping[str, Any]
    ) -> str:
        await self._state.require_joined(room_id, user_id)
        if type in _STATE_VIA_MEMBERSHIP:
            member = content.get("membership")
            current = await self._state.membership(room_id, state_key)
            if state_key != user_id or member != current:
                raise forbidden("Use the membership endpoints to change membership")
        if type == "m.room.create":
            raise forbidden("m.room.create cannot be sent again")
        if type == "m.room.canonical_alias":
            await self._check_canonical_alias(room_id, content)
        ev = await self._append(room_id, Draft(type, user_id, content, state_key=state_key))
        return ev.event_id

    async def _check_canonical_alias(self, room_id: str, content: Mapping[str, Any]) -> None:
        aliases = []
        if content.get("alias") is not None:
            aliases.append(content.get("alias"))
        alt = content.get("alt_aliases", [])
        if not isinstance(alt, list):
            raise MatrixError(400, "M_BAD_JSON", "alt_aliases must be an array")
        aliases.extend(alt)
        rooms = self._creator.store.db
        for a in aliases:
            if not isinstance(a, str):
                raise MatrixError(400, "M_BAD_JSON", "aliases must be strings")
            row = await rooms.fetchval("SELECT room_id FROM room_aliases WHERE alias = $1", a)
            if row is not None and row != room_id:
                raise MatrixError(400, "M_BAD_ALIAS", f"{a} points to another room")

    async def redact(
        self,
        user_id: str,
        device_id: str,
        room_id: str,
        event_id: str,
        content: dict[str, Any],
        txn_id: str,
    ) -> str:
        existing = await self._creator.store.event_by_txn(user_id, device_id, txn_id)
        if existing is not None:
            return existing
        await self._state.require_joined(room_id, user_id)
        target = await self._creator.store.get_event(event_id)
        if target is None or target.event.room_id != room_id:
            raise not_found("Event not found")
        if target.event.sender != user_id:
            pl = await self._state.event(room_id, "m.room.power_levels")
            create = await self._state.event(room_id, "m.room.create")
            if get_user_power_level(user_id, pl, create) < get_named_level(pl, "redact"):
                raise forbidden("You don't have permission to redact other users' events")
        rv = target.event.room_version
        body = dict(content)
        body.pop("redacts", None)
        if rv.redacts_in_content:
            body["redacts"] = event_id
        ev = await self._append(
            room_id,
            Draft(
                "m.room.redaction",
                user_id,
                body,
                redacts=event_id,
                txn=(user_id, device_id, txn_id),
            ),
        )
        return ev.event_id
