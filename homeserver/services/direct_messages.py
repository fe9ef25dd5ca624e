"""One one-to-one room per pair of users, and upgrading it to a group.

``get_or_create`` holds a transaction-scoped advisory lock on the (sorted)
pair while it looks the room up and, if needed, creates it, so concurrent
calls from both sides end with one room. A persistent one-to-one is reopened
(the missing side re-invited), never duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from homeserver.core.ids import UserID
from homeserver.services.account_data import AccountDataService
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.locks import KeyedLocks
from homeserver.services.membership import MembershipService
from homeserver.services.messages import MessageService
from homeserver.services.profile import ProfileService
from homeserver.services.room_creation import RoomCreationService
from homeserver.services.room_state import RoomState
from homeserver.storage.database import Database
from homeserver.storage.lifecycle import LifecycleStore, pair

log = logging.getLogger(__name__)


class DirectMessageService:
    def __init__(
        self,
        db: Database,
        store: LifecycleStore,
        creation: RoomCreationService,
        membership: MembershipService,
        messages: MessageService,
        state: RoomState,
        account_data: AccountDataService,
        profiles: ProfileService,
        server_name: str,
    ) -> None:
        self._db = db
        self._store = store
        self._creation = creation
        self._membership = membership
        self._messages = messages
        self._state = state
        self._account_data = account_data
        self._profiles = profiles
        self._server_name = server_name
        self._pair_locks = KeyedLocks()

    def _local(self, user_id: str) -> bool:
        return UserID(user_id).server_name == self._server_name

    async def get_or_create(self, user_id: str, partner: str) -> dict[str, Any]:
        if partner == user_id:
            raise MatrixError(400, "M_INVALID_PARAM", "Cannot open a DM with yourself")
        if self._local(partner) and not await self._profiles.exists(partner):
            raise not_found(f"Unknown user {partner}")
        key = pair(user_id, partner)
        local = self._pair_locks(key)
        # In-process first (so waiting requests hold no database connection),
        # then across processes with the advisory lock.
        async with local, self._db.transaction() as conn:
            await self._store.lock_pair(conn, user_id, partner)
            room_id = await self._store.dm_room(conn, user_id, partner)
            created = False
            if room_id is not None:
                room_id = await self._reopen(room_id, user_id, partner)
            if room_id is None:
                room_id = await self._creation.create_room(
                    user_id,
                    {
                        "preset": "trusted_private_chat",
                        "is_direct": True,
                        "invite": [partner],
                        "creation_content": {
                            "io.homeserver.kind": "persistent",
                            "io.homeserver.one_to_one": True,
                        },
                    },
                )
                created = True
                await self._store.set_dm_room(conn, user_id, partner, room_id)
        await self._account_data.add_direct(user_id, partner, room_id)
        if self._local(partner):
            await self._account_data.add_direct(partner, user_id, room_id)
        return {"room_id": room_id, "created": created}

    async def _reopen(self, room_id: str, user_id: str, partner: str) -> str | None:
        """Make the existing one-to-one usable again; None if it is gone."""
        if not await self._state.store.room_exists(room_id):
            return None
        mine = await self._state.membership(room_id, user_id)
        theirs = await self._state.membership(room_id, partner)
        if "ban" in (mine, theirs):
            raise forbidden("One of you is banned from your one-to-one room")
        if mine != "join":
            if theirs == "join" and self._local(partner) and mine != "invite":
                await self._membership.invite(
                    partner, room_id, user_id, reason="reopening our conversation"
                )
                mine = "invite"
            if mine == "invite":
                await self._membership.join(user_id, room_id)
            else:
                return None  # nobody left to let us back in: start afresh
        if theirs not in ("join", "invite"):
            await self._membership.invite(user_id, room_id, partner, extra={"is_direct": True})
        return room_id

    async def upgrade_to_group(
        self,
        user_id: str,
        room_id: str,
        invite: Sequence[str],
        copy_history: int,
        name: str | None = None,
    ) -> dict[str, Any]:
        await self._state.require_joined(room_id, user_id)
        members = await self._state.projections.members(room_id, ["join", "invite"])
        others = [m["user_id"] for m in members if m["user_id"] != user_id]
        everyone = sorted(set(others) | set(invite) - {user_id})
        if not invite:
            raise MatrixError(400, "M_INVALID_PARAM", "invite at least one new person")
        create = await self._state.event(room_id, "m.room.create")
        body: dict[str, Any] = {
            "preset": "private_chat",
            "invite": everyone,
            "creation_content": {
                "predecessor": {"room_id": room_id},
                "io.homeserver.kind": "persistent",
            },
        }
        if name:
            body["name"] = name
        if create is not None:
            body["creation_content"]["predecessor"]["event_id"] = create.event_id
        new_room = await self._creation.create_room(user_id, body)
        copied = 0
        if copy_history > 0:
            copied = await self._copy_history(user_id, room_id, new_room, min(copy_history, 100))
        return {"room_id": new_room, "copied_messages": copied}

    async def _copy_history(self, user_id: str, old: str, new: str, n: int) -> int:
        store = self._state.store
        events = (
            await store.timeline_page(old, before=None, after=None, limit=n * 3, backwards=True)
        ).events
        msgs = [e for e in events if e.event.type == "m.room.message"][:n]
        msgs.reverse()
        count = 0
        for se in msgs:
            body = se.event.content.get("body")
            if not isinstance(body, str):
                continue
            quoted = "\n".join(f"> {line}" for line in body.splitlines() or [""])
            await self._messages.send(
                user_id,
                "history-copy",
                new,
                "m.room.message",
                {
                    "msgtype": "m.notice",
                    "body": f"{se.event.sender}:\n{quoted}",
                    "io.homeserver.copied_from": {
                        "room_id": old,
                        "event_id": se.event.event_id,
                        "sender": se.event.sender,
                        "origin_server_ts": se.event.origin_server_ts,
                    },
                },
                f"copy-{se.event.event_id}",
            )
            count += 1
        return count
