"""Profiles (display name, avatar) and their propagation into rooms.

A profile change is copied as a new ``m.room.member`` event (same
membership, new fields) into every room the user has joined, as the
specification recommends and clients expect.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from homeserver.core.auth import AuthError
from homeserver.services.errors import not_found
from homeserver.services.event_creator import Draft, EventCreator, RoomNotFound
from homeserver.storage.accounts import AccountStore, Profile
from homeserver.storage.projections import Projections

log = logging.getLogger(__name__)

MAX_DISPLAYNAME = 256
MAX_AVATAR_URL = 1000


class ProfileService:
    def __init__(self, accounts: AccountStore, projections: Projections) -> None:
        self._accounts = accounts
        self._projections = projections
        self.creator: EventCreator | None = None  # set by app.py (creator needs no profiles)

    async def get(self, user_id: str) -> Profile:
        p = await self._accounts.get_profile(user_id)
        return p or Profile(None, None)

    async def get_if_exists(self, user_id: str) -> Profile | None:
        return await self._accounts.get_profile(user_id)

    async def get_many(self, user_ids: Sequence[str]) -> dict[str, Profile]:
        """Profiles of the existing users among ``user_ids`` (one round trip,
        not one per user: createRoom's invite list)."""
        return await self._accounts.get_profiles(user_ids) if user_ids else {}

    async def exists(self, user_id: str) -> bool:
        return await self._accounts.user_exists(user_id)

    async def require(self, user_id: str) -> Profile:
        p = await self._accounts.get_profile(user_id)
        if p is None:
            raise not_found("Profile not found")
        return p

    async def set_field(self, user_id: str, field: str, value: str | None) -> None:
        await self._accounts.set_profile_field(user_id, field, value)
        await self._propagate(user_id, field, value)

    async def _propagate(self, user_id: str, field: str, value: str | None) -> None:
        if self.creator is None:
            return
        rooms = await self._projections.rooms_for_user(user_id, ["join"])
        for room_id in rooms:
            m = await self._projections.membership(room_id, user_id)
            if m is None:
                continue
            stored = await self.creator.store.get_event(m[1])
            if stored is None:
                continue
            content = dict(stored.event.content)
            content.pop("reason", None)
            if value is None:
                content.pop(field, None)
            else:
                content[field] = value
            if content == dict(stored.event.content):
                continue
            try:
                await self.creator.send(
                    room_id, [Draft("m.room.member", user_id, content, state_key=user_id)]
                )
            except (AuthError, RoomNotFound):
                log.info("could not update %s's profile in %s", user_id, room_id)
