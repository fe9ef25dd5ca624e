"""Deleting rooms (operators and room owners), the operator's view of rooms,
and rooms an operator creates for others.

Deleting a room: remove its aliases and directory entry, kick every local
member with a reason, block it so nobody on this server can rejoin, and
optionally purge its history. An owner-bound room (creation content
``io.homeserver.owner_bound``) is deleted the same way when its owner leaves.

Creating a room for others (IPCortex ``api_chat``: "create rooms without
needing to be a participant"): the server's system user
(``@_homeserver:<server>``, a name nobody can register) creates it, naming
the requested owner (``io.homeserver.owner``; a creator in room v12, the admin
level before), invites the members, joins those to be added, then steps down
— drops its own power level where it has one (v10/v11) — and leaves. The
operator never becomes a member.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from homeserver.core.auth import get_required_level, get_user_power_level
from homeserver.core.ids import UserID
from homeserver.services.accounts import SYSTEM_LOCALPART
from homeserver.services.clock import now_ms
from homeserver.services.errors import MatrixError, forbidden, invalid_param, not_found
from homeserver.services.event_creator import Draft, EventCreator, remove_member
from homeserver.services.membership import MembershipService
from homeserver.services.room_creation import (
    KIND,
    KINDS,
    OWNER_BOUND,
    RoomCreationService,
    owner_of,
)
from homeserver.services.room_state import RoomState
from homeserver.storage.database import Database
from homeserver.storage.lifecycle import LifecycleStore
from homeserver.storage.purge import purge_room
from homeserver.storage.rooms import RoomStore

log = logging.getLogger(__name__)

# The state events whose power defines who may end a room.
_OWNER_EVENTS = ("m.room.tombstone", "m.room.power_levels")

OWNER_LEFT = "The room's owner left, so the room is closed"


@dataclass(frozen=True, slots=True)
class OperatorRoom:
    """A room an operator creates for others: ``owner`` must be one of
    ``invite`` (invited) or ``add`` (joined at once)."""

    owner: UserID
    kind: str = "persistent"
    name: str | None = None
    topic: str | None = None
    invite: tuple[UserID, ...] = ()
    add: tuple[UserID, ...] = ()
    room_version: str | None = None


class RoomAdminService:
    def __init__(
        self,
        db: Database,
        creator: EventCreator,
        state: RoomState,
        rooms: RoomStore,
        server_name: str,
        audit: LifecycleStore,
        creation: RoomCreationService,
        membership: MembershipService,
    ) -> None:
        self._audit_store = audit
        self._db = db
        self._creator = creator
        self._state = state
        self._rooms = rooms
        self._server_name = server_name
        self._creation = creation
        self._membership = membership
        self.system_user = UserID.create(SYSTEM_LOCALPART, server_name)

    async def audit(
        self, admin: str, action: str, target: str | None = None, **details: Any
    ) -> None:
        """Record an operator action (table admin_audit) and log it."""
        log.info("admin %s: %s %s %s", admin, action, target or "", details or "")
        await self._audit_store.audit(now_ms(), admin, action, target, details)

    async def check_owner(self, room_id: str, user_id: str) -> None:
        """A user may delete a room only if the room's own rules would let
        them end it: their power level in its m.room.power_levels suffices
        to send both m.room.tombstone and m.room.power_levels. Who else is
        present does not matter — a newcomer in an abandoned room is not its
        owner because the admins left."""
        await self._state.require_joined(room_id, user_id)
        pl = await self._state.event(room_id, "m.room.power_levels")
        create = await self._state.event(room_id, "m.room.create")
        mine = get_user_power_level(user_id, pl, create)
        needed = max(get_required_level(t, True, pl) for t in _OWNER_EVENTS)
        if mine < needed:
            raise forbidden(
                "Only a user allowed to send m.room.tombstone and m.room.power_levels "
                "may delete this room"
            )

    async def delete_room(
        self,
        room_id: str,
        by: str,
        *,
        reason: str | None = None,
        purge: bool = False,
        block: bool = True,
    ) -> dict[str, Any]:
        if not await self._state.store.room_exists(room_id):
            raise not_found("Unknown room")
        log.info("room %s deleted by %s (purge=%s, block=%s)", room_id, by, purge, block)
        if block:
            await self._rooms.block(room_id, by, now_ms())
        aliases = await self._rooms.delete_room_aliases(room_id)
        await self._rooms.set_visibility(room_id, "private")
        kicked = []
        why = reason or "This room has been deleted"
        members = await self._state.projections.members(room_id, ["join", "invite", "knock"])
        local = [m["user_id"] for m in members if m["user_id"].endswith(":" + self._server_name)]
        # Kick others first, using the deleter's power if they are a member;
        # members we cannot kick leave on their own (the server acts for them).
        # Others first, with the deleter's power; a member we cannot kick
        # leaves on their own (the server acts for its users). The deleter last.
        for user in [u for u in local if u != by] + ([by] if by in local else []):
            if await remove_member(self._creator, room_id, user, why, senders=(by, user)):
                kicked.append(user)
            else:
                log.warning("could not remove %s from %s", user, room_id)
        purged = 0
        if purge:
            purged = await purge_room(self._db, room_id, by=by, reason=reason, now_ms=now_ms())
        return {
            "kicked_users": kicked,
            "removed_aliases": aliases,
            "purged_events": purged,
            "blocked": block,
        }

    async def close_if_owner_bound(self, room_id: str, user_id: str, reason: str | None) -> bool:
        """OpenSER IMC "exit": when the owner of an owner-bound room leaves,
        the room is destroyed as the owner's delete would (members removed
        with a reason, aliases dropped, the room blocked) — the owner's own
        leave included. False (nothing done) for anyone else or another room."""
        create = await self._state.event(room_id, "m.room.create")
        if create is None or create.content.get(OWNER_BOUND) is not True:
            return False
        if UserID(create.sender).server_name != self._server_name:
            # Only our own rooms: another server could name one of our users
            # the owner and so have us evict every local member and block it.
            return False
        if owner_of(create) != user_id:
            return False
        await self.delete_room(room_id, user_id, reason=reason or OWNER_LEFT)
        return True

    async def create_for_others(self, operator: str, spec: OperatorRoom) -> dict[str, Any]:
        """Create a room for others without joining it (see the module doc);
        audited with the new room's id, or with the error when refused."""
        details: dict[str, Any] = {
            "owner": spec.owner,
            "kind": spec.kind,
            "name": spec.name,
            "invite": list(spec.invite),
            "add": list(spec.add),
        }
        try:
            out = await self._create_for_others(spec)
        except MatrixError as e:
            await self.audit(operator, "create_room", None, **details, error=e.errcode)
            raise
        await self.audit(operator, "create_room", out["room_id"], **details)
        return out

    async def _create_for_others(self, spec: OperatorRoom) -> dict[str, Any]:
        if spec.kind not in KINDS:
            raise MatrixError(400, "M_BAD_JSON", f"kind must be one of {', '.join(KINDS)}")
        members = set(spec.invite) | set(spec.add)
        if spec.owner not in members:
            raise invalid_param("owner must be one of the members to invite or add")
        if set(spec.invite) & set(spec.add):
            raise invalid_param("a user is either invited or added, not both")
        if spec.owner.server_name != self._server_name:
            raise invalid_param("the owner must be a local user")
        for user in spec.add:
            if user.server_name != self._server_name:
                raise invalid_param(f"only local users can be added: {user}")
        if self.system_user in members:
            raise invalid_param("the system user cannot be a member")
        body: dict[str, Any] = {
            "preset": "public_chat" if spec.kind == "public" else "private_chat",
            "invite": sorted(members),
            "creation_content": {KIND: spec.kind},
        }
        for key, value in (
            ("name", spec.name),
            ("topic", spec.topic),
            ("room_version", spec.room_version),
        ):
            if value is not None:
                body[key] = value
        system = str(self.system_user)
        room_id = await self._creation.create_room(system, body, owner=spec.owner, capped=False)
        for user in sorted(spec.add):
            await self._membership.join(user, room_id)
        await self._step_down(room_id, system)
        return {
            "room_id": room_id,
            "owner": spec.owner,
            "invited": sorted(spec.invite),
            "added": sorted(spec.add),
            "created_by": system,
        }

    async def _step_down(self, room_id: str, system: str) -> None:
        """The system user gives up what it holds: its power level entry
        (v10/v11; in v12 the create event's sender stays a creator, with no
        membership) and then its membership."""
        pl = dict(await self._state.content(room_id, "m.room.power_levels"))
        users = dict(pl.get("users") or {})
        if system in users:
            del users[system]
            pl["users"] = users
            await self._creator.send(
                room_id, [Draft("m.room.power_levels", system, pl, state_key="")]
            )
        await self._membership.leave(system, room_id)

    async def list_rooms(
        self, *, search: str | None, order_by: str, direction: str, offset: int, limit: int
    ) -> dict[str, Any]:
        columns = {
            "name": "s.name",
            "joined_members": "s.joined_members",
            "last_activity": "s.last_event_ts",
            "room_id": "r.room_id",
            "created": "r.created_ts",
        }
        if order_by not in columns:
            raise MatrixError(400, "M_INVALID_PARAM", f"order_by must be one of {sorted(columns)}")
        if direction not in ("f", "b"):
            raise MatrixError(400, "M_INVALID_PARAM", "dir must be f or b")
        rows, total = await self._rooms_page(
            search, columns[order_by], "ASC" if direction == "f" else "DESC", offset, limit
        )
        out: dict[str, Any] = {"rooms": rows, "offset": offset, "total_rooms": total}
        if offset + len(rows) < total:
            out["next_batch"] = offset + len(rows)
        return out

    async def _rooms_page(
        self, search: str | None, col: str, order: str, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        args: list[Any] = []
        where = "TRUE"
        if search:
            args.append(f"%{search.lower()}%")
            where = (
                "(lower(coalesce(s.name,'')) LIKE $1 OR lower(r.room_id) LIKE $1 "
                "OR lower(coalesce(s.canonical_alias,'')) LIKE $1)"
            )
        total = await self._db.fetchval(
            f"SELECT count(*) FROM rooms r LEFT JOIN room_stats s USING (room_id) WHERE {where}",
            *args,
        )
        n = len(args)
        rows = await self._db.fetch(
            "SELECT r.room_id, r.room_version, r.creator, r.created_ts, s.name, s.topic, "
            "s.canonical_alias, s.join_rule, s.kind, s.joined_members, s.invited_members, "
            "s.local_joined, s.last_event_ts, (b.room_id IS NOT NULL) AS blocked, "
            "coalesce(d.visibility, 'private') AS visibility "
            "FROM rooms r LEFT JOIN room_stats s USING (room_id) "
            "LEFT JOIN blocked_rooms b USING (room_id) LEFT JOIN room_directory d USING (room_id) "
            f"WHERE {where} ORDER BY {col} {order} NULLS LAST, r.room_id "
            f"LIMIT ${n + 1} OFFSET ${n + 2}",
            *args,
            limit,
            offset,
        )
        return [dict(r) for r in rows], int(total or 0)

    async def room_details(self, room_id: str) -> dict[str, Any]:
        row = await self._db.fetchrow(
            "SELECT r.room_id, r.room_version, r.creator, r.created_ts, s.*, "
            "(b.room_id IS NOT NULL) AS blocked FROM rooms r "
            "LEFT JOIN room_stats s USING (room_id) LEFT JOIN blocked_rooms b USING (room_id) "
            "WHERE r.room_id = $1",
            room_id,
        )
        if row is None:
            raise not_found("Unknown room")
        out = dict(row)
        out["aliases"] = await self._rooms.aliases_for_room(room_id)
        return out

    async def members(self, room_id: str) -> list[dict[str, Any]]:
        await self._state.require_room(room_id)
        rows = await self._state.projections.members(room_id)
        return [
            {
                "user_id": r["user_id"],
                "membership": r["membership"],
                "displayname": r["displayname"],
            }
            for r in rows
        ]

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        await self._state.require_room(room_id)
        return [e.client_dict() for e in await self._state.all_events(room_id)]

    async def add_user(self, room_id: str, user_id: str, by: str) -> None:
        """Operator action: put a local user into a local room (an invite from
        a member with invite power, then the join; public rooms join directly)."""
        await self._state.require_room(room_id)
        if await self._state.membership(room_id, user_id) == "join":
            return
        jr = await self._state.content(room_id, "m.room.join_rules")
        if jr.get("join_rule") != "public":
            pl = await self._state.event(room_id, "m.room.power_levels")
            create = await self._state.event(room_id, "m.room.create")
            members = await self._state.projections.members(room_id, ["join"])
            local = [
                m["user_id"] for m in members if m["user_id"].endswith(":" + self._server_name)
            ]
            if not local:
                raise MatrixError(400, "M_UNKNOWN", "No local member can invite into this room")
            inviter = max(local, key=lambda u: get_user_power_level(u, pl, create))
            await self._creator.send(
                room_id,
                [
                    Draft(
                        "m.room.member",
                        inviter,
                        {"membership": "invite", "reason": f"added by {by}"},
                        state_key=user_id,
                    )
                ],
            )
        await self._creator.send(
            room_id, [Draft("m.room.member", user_id, {"membership": "join"}, state_key=user_id)]
        )
