"""Room kinds and invitations over time: invite expiry, pending invites,
archived rooms, the purge of transient rooms, and the room's configuration
under the names multi-user chat users know (members-only, moderated, ...).

Room kinds live in the create event's content as ``io.homeserver.kind``
(``transient``, ``persistent``, ``public``, ``conference``); limits in the state event
``io.homeserver.room.limits``. Standard clients ignore both and keep working.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from homeserver.core.auth import AuthError
from homeserver.services.clock import now_ms
from homeserver.services.errors import MatrixError, forbidden, log_background_failure
from homeserver.services.event_creator import Draft, EventCreator, remove_member
from homeserver.services.membership import MembershipService
from homeserver.services.room_creation import admin_level
from homeserver.services.room_state import RoomState
from homeserver.storage.database import Database
from homeserver.storage.lifecycle import LifecycleStore
from homeserver.storage.purge import purge_room
from homeserver.storage.rooms import RoomStore

log = logging.getLogger(__name__)

MAX_INVITE_EXPIRY_MS = 365 * 24 * 3600 * 1000


class RoomLifecycleService:
    def __init__(
        self,
        db: Database,
        store: LifecycleStore,
        creator: EventCreator,
        membership: MembershipService,
        state: RoomState,
        rooms: RoomStore,
        transient_purge_after_ms: int,
    ) -> None:
        self._db = db
        self._store = store
        self._creator = creator
        self._membership = membership
        self._state = state
        self._rooms = rooms
        self._purge_after = transient_purge_after_ms
        self._wake = asyncio.Event()
        self.active = True  # runs the passes (the lifecycle lease, storage/leases.py)

    # ------------------------------------------------------------ invites
    async def invite(
        self, sender: str, room_id: str, target: str, reason: str | None, expires_in_ms: int | None
    ) -> None:
        if expires_in_ms is not None and not 0 < expires_in_ms <= MAX_INVITE_EXPIRY_MS:
            raise MatrixError(400, "M_INVALID_PARAM", "expires_in_ms out of range")
        ev = await self._membership.invite(sender, room_id, target, reason)
        if expires_in_ms is not None:
            await self._store.set_invite_expiry(
                room_id, target, sender, ev.event_id, now_ms() + expires_in_ms
            )
            self._wake.set()

    async def expire_due_invites(self) -> int:
        """Withdraw every invite whose time has passed (reason "invite expired")."""
        done = 0
        for row in await self._store.due_invites(now_ms()):
            m = await self._state.projections.membership(row["room_id"], row["user_id"])
            if m is not None and m[0] == "invite" and m[1] == row["event_id"]:
                await self._withdraw(row["room_id"], row["user_id"], row["inviter"])
                done += 1
            await self._store.clear_invite_expiry(row["room_id"], row["user_id"])
        return done

    async def _withdraw(self, room_id: str, user_id: str, inviter: str) -> None:
        # The inviter kicks; failing that the invitee "declines".
        if not await remove_member(
            self._creator, room_id, user_id, "invite expired", senders=(inviter, user_id)
        ):
            log.warning("could not withdraw expired invite of %s to %s", user_id, room_id)

    async def pending_invites(self, user_id: str) -> list[dict[str, Any]]:
        expiries = await self._store.invite_expiries(user_id)
        now = now_ms()
        out = []
        for r in await self._store.pending_invites(user_id):
            content = json.loads(r["json"]).get("content", {})
            entry: dict[str, Any] = {
                "room_id": r["room_id"],
                "inviter": r["inviter"],
                "event_id": r["event_id"],
                "name": r["name"],
                "topic": r["topic"],
                "avatar_url": r["avatar_url"],
                "member_count": r["joined_members"] or 0,
                "age_ms": max(0, now - r["origin_server_ts"]),
                "reason": content.get("reason"),
                "is_direct": content.get("is_direct") is True,
            }
            if r["room_id"] in expiries:
                entry["expires_ts"] = expiries[r["room_id"]]
            out.append(entry)
        return out

    # ----------------------------------------------------------- archived
    async def archived_rooms(self, user_id: str) -> list[dict[str, Any]]:
        out = []
        for r in await self._store.left_rooms(user_id):
            if r["blocked"] or r["kind"] == "transient":
                continue
            out.append(
                {
                    "room_id": r["room_id"],
                    "name": r["name"],
                    "topic": r["topic"],
                    "canonical_alias": r["canonical_alias"],
                    "kind": r["kind"] or "persistent",
                    "joined_members": r["joined_members"] or 0,
                    "last_activity_ts": r["last_event_ts"],
                    "can_rejoin": r["join_rule"] == "public",
                }
            )
        return out

    # ------------------------------------------------------------ transient
    async def purge_transient_rooms(self) -> list[str]:
        purged = []
        for room_id in await self._store.transient_rooms_to_purge(now_ms() - self._purge_after):
            n = await purge_room(
                self._db, room_id, by="server", reason="transient room emptied", now_ms=now_ms()
            )
            log.info("purged transient room %s (%d events)", room_id, n)
            purged.append(room_id)
        return purged

    async def run(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Background loop: expire invites and purge emptied transient rooms
        (while this process holds the lifecycle duty: ``active``)."""
        while not stop.is_set():
            try:
                if self.active:
                    await self.expire_due_invites()
                    await self.purge_transient_rooms()
            except Exception as e:
                log_background_failure(log, "room lifecycle pass failed", e)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), interval_s)
            except TimeoutError:
                pass

    # -------------------------------------------------------------- config
    async def config(self, user_id: str, room_id: str) -> dict[str, Any]:
        """The room's settings under multi-user-chat names."""
        m = await self._state.membership(room_id, user_id)
        if m not in ("join", "invite"):
            await self._state.require_joined(room_id, user_id)
        jr = await self._state.content(room_id, "m.room.join_rules")
        pl = await self._state.content(room_id, "m.room.power_levels")
        create = await self._state.content(room_id, "m.room.create")
        limits = await self._state.content(room_id, "io.homeserver.room.limits")
        hv = await self._state.content(room_id, "m.room.history_visibility")
        join_rule = jr.get("join_rule", "invite")
        users_default = _int(pl.get("users_default"), 0)
        events: dict[str, Any] = pl.get("events") or {}
        if not isinstance(events, dict):
            events = {}
        speak = _int(events.get("m.room.message"), _int(pl.get("events_default"), 0))
        kind = create.get("io.homeserver.kind") or "persistent"
        invite_level = _int(pl.get("invite"), 0)
        return {
            "members_only": join_rule != "public",
            "allow_invites": invite_level <= users_default,
            "moderated": speak > users_default,
            "public": join_rule == "public",
            "published": await self._rooms.get_visibility(room_id) == "public",
            "persistent": kind != "transient",
            "kind": kind,
            "max_members": limits.get("max_members"),
            "join_rule": join_rule,
            "history_visibility": hv.get("history_visibility", "shared"),
            "voice_level": speak,
            "invite_level": invite_level,
            "owner_bound": create.get("io.homeserver.owner_bound") is True,
        }

    async def set_config(
        self, user_id: str, room_id: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        """Translate members-only / allow-invites / moderated / public /
        max_members into join rules, power levels and the limits state event.

        ``allow_invites`` (MUC's ``allowinvites``) is the ``invite`` power
        level, so other servers enforce it too: on, any member may invite
        (``users_default``); off, only the room's admin level may. Turning
        ``members_only`` on turns ``allow_invites`` off unless the request
        sets it too (MUC: "only members may join, only admins can invite");
        a request that leaves both out changes neither."""
        await self._state.require_joined(room_id, user_id)
        drafts: list[Draft] = []
        jr = dict(await self._state.content(room_id, "m.room.join_rules"))
        pl = dict(await self._state.content(room_id, "m.room.power_levels"))
        pl_changed = False
        allow_invites = changes.get("allow_invites")
        if "allow_invites" in changes and not isinstance(allow_invites, bool):
            raise MatrixError(400, "M_BAD_JSON", "allow_invites must be a boolean")
        if "public" in changes or "members_only" in changes:
            public = changes.get("public", not changes.get("members_only", True))
            if not isinstance(public, bool):
                raise MatrixError(400, "M_BAD_JSON", "public/members_only must be booleans")
            jr["join_rule"] = "public" if public else "invite"
            drafts.append(Draft("m.room.join_rules", user_id, jr, state_key=""))
            if not public and allow_invites is None:
                allow_invites = False
        if allow_invites is not None:
            users_default = _int(pl.get("users_default"), 0)
            level = users_default if allow_invites else admin_level(pl)
            # Unchanged, no event: a member who may change the join rules but
            # not the power levels can still make the room members-only.
            if _int(pl.get("invite"), 0) != level:
                pl["invite"] = level
                pl_changed = True
        if "moderated" in changes:
            if not isinstance(changes["moderated"], bool):
                raise MatrixError(400, "M_BAD_JSON", "moderated must be a boolean")
            events = dict(pl.get("events") or {})
            if changes["moderated"]:
                events["m.room.message"] = max(_int(pl.get("users_default"), 0) + 1, 10)
            else:
                events.pop("m.room.message", None)
            pl["events"] = events
            pl_changed = True
        if pl_changed:
            drafts.append(Draft("m.room.power_levels", user_id, pl, state_key=""))
        if "max_members" in changes:
            cap = changes["max_members"]
            if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
                raise MatrixError(400, "M_BAD_JSON", "max_members must be a positive integer")
            drafts.append(
                Draft(
                    "io.homeserver.room.limits",
                    user_id,
                    {"max_members": cap} if cap else {},
                    state_key="",
                )
            )
        if drafts:
            try:
                await self._creator.send(room_id, drafts)
            except AuthError as e:
                raise forbidden(str(e)) from e
        return await self.config(user_id, room_id)


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default
