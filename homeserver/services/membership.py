"""Membership changes by local users: join, leave, invite, kick, ban, unban,
knock, forget — and revoking an invite (a kick of an invited user).

Each becomes one ``m.room.member`` event checked by the authorization rules;
this module adds only what the rules cannot know (profiles for the member
event, blocked rooms, a friendlier refusal) and the federation hand-off for
rooms and users on other servers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from homeserver.core.auth import AuthError
from homeserver.core.events import Event
from homeserver.core.ids import ServerName, UserID
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.event_creator import (
    Draft,
    EventCreator,
    PreconditionFailed,
    RoomNotFound,
)
from homeserver.services.profile import ProfileService
from homeserver.services.room_state import RoomState
from homeserver.storage.rooms import RoomStore


class RemoteMembership(Protocol):
    """What federation provides for membership across servers."""

    async def join_remote(
        self, user_id: str, room_id: str, servers: Sequence[str], content: dict[str, Any]
    ) -> str: ...

    async def leave_remote(self, user_id: str, room_id: str, content: dict[str, Any]) -> str: ...

    async def knock_remote(
        self, user_id: str, room_id: str, servers: Sequence[str], content: dict[str, Any]
    ) -> str: ...

    async def send_invite(self, event: Event) -> Event: ...


class MembershipService:
    def __init__(
        self,
        creator: EventCreator,
        state: RoomState,
        rooms: RoomStore,
        profiles: ProfileService,
        server_name: str,
    ) -> None:
        self._creator = creator
        self._state = state
        self._rooms = rooms
        self._profiles = profiles
        self._server_name = server_name
        self.remote: RemoteMembership | None = None
        # Called after a local user is invited (DM bookkeeping, expiry, ...).
        self.invite_hooks: list[Callable[[Event], Awaitable[None]]] = []
        # Called before a joined member leaves, with (room, user, reason); True
        # when it handled the leave itself (an owner-bound room's owner: the
        # room is closed, which includes the owner's leave).
        self.owner_exit: Callable[[str, str, str | None], Awaitable[bool]] | None = None

    @property
    def room_state(self) -> RoomState:
        return self._state

    def is_local(self, user_id: str) -> bool:
        return UserID(user_id).server_name == self._server_name

    async def _member_content(
        self, user_id: str, membership: str, reason: str | None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        content: dict[str, Any] = {"membership": membership}
        if membership in ("join", "invite", "knock"):
            p = await self._profiles.get_if_exists(user_id) if self.is_local(user_id) else None
            if p is not None and p.displayname is not None:
                content["displayname"] = p.displayname
            if p is not None and p.avatar_url is not None:
                content["avatar_url"] = p.avatar_url
        if reason is not None:
            content["reason"] = reason
        if extra:
            content.update(extra)
        return content

    async def _send(
        self,
        room_id: str,
        sender: str,
        target: str,
        content: dict[str, Any],
        require: tuple[str, str] | None = None,
    ) -> Event:
        with _refusals_as_matrix_errors():
            (ev,) = await self._creator.send(
                room_id,
                [
                    Draft(
                        "m.room.member",
                        sender,
                        content,
                        state_key=target,
                        require_membership=require,
                    )
                ],
            )
        return ev

    # ---------------------------------------------------------------- join
    async def join(
        self,
        user_id: str,
        room_id: str,
        servers: Sequence[str] = (),
        reason: str | None = None,
        extra: Mapping[str, Any] | None = None,
        *,
        ratelimit: Callable[[bool], None] | None = None,
    ) -> str:
        """Join ``room_id``; ``extra`` keys go into the member content.
        ``ratelimit(remote)`` is called once it is known whether the join is
        local or through a resident server, before any work (it may raise)."""
        if await self._rooms.is_blocked(room_id):
            raise forbidden("This room has been blocked on this server")
        content = await self._member_content(user_id, "join", reason, dict(extra or {}))
        if not await self._state.store.room_exists(room_id) or (
            await self._state.membership(room_id, user_id) in (None, "invite", "leave", "ban")
            and await self._only_remote_members(room_id)
        ):
            if self.remote is None:
                raise not_found("No known servers for this room")
            if ratelimit is not None:
                ratelimit(True)
            # (With no server given, federation also tries the inviter's.)
            via = list(servers) or [s for s in [_server_of(room_id)] if s]
            return await self.remote.join_remote(user_id, room_id, via, content)
        current = await self._state.membership(room_id, user_id)
        if current == "join":
            # Joining again is a no-op (but refresh profile fields).
            return room_id
        if ratelimit is not None:
            ratelimit(False)
        await self._check_capacity(room_id)
        if current != "invite":
            await self._maybe_authorise_restricted(room_id, user_id, content)
        await self._send(room_id, user_id, user_id, content)
        return room_id

    async def _only_remote_members(self, room_id: str) -> bool:
        servers = await self._state.projections.room_servers(room_id)
        if self._server_name in servers:
            return False
        if servers:
            return True
        # Nobody joined: remote unless we hold the room itself (not just an
        # invite or knock received over federation).
        return self.remote is not None and await self._state.event(room_id, "m.room.create") is None

    async def _check_capacity(self, room_id: str) -> None:
        limits = await self._state.content(room_id, "io.homeserver.room.limits")
        cap = limits.get("max_members")
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            stats = await self._state.projections.room_stats(room_id)
            if stats and stats["joined_members"] >= cap:
                raise MatrixError(
                    403, "IO.HOMESERVER.ROOM_FULL", f"This room is full ({cap} members)"
                )

    async def _maybe_authorise_restricted(
        self, room_id: str, user_id: str, content: dict[str, Any]
    ) -> None:
        """For restricted rooms: name a local user with invite power who can
        vouch for the join (join_authorised_via_users_server)."""
        jr = await self._state.content(room_id, "m.room.join_rules")
        if jr.get("join_rule") not in ("restricted", "knock_restricted"):
            return
        allowed = False
        for rule in jr.get("allow", []) or []:
            if isinstance(rule, dict) and rule.get("type") == "m.room_membership":
                other = rule.get("room_id")
                if (
                    isinstance(other, str)
                    and await self._state.membership(other, user_id) == "join"
                ):
                    allowed = True
        if not allowed:
            return
        from homeserver.core.auth import get_named_level, get_user_power_level

        pl = await self._state.event(room_id, "m.room.power_levels")
        create = await self._state.event(room_id, "m.room.create")
        need = get_named_level(pl, "invite")
        for m in await self._state.projections.members(room_id, ["join"]):
            if (
                self.is_local(m["user_id"])
                and get_user_power_level(m["user_id"], pl, create) >= need
            ):
                content["join_authorised_via_users_server"] = m["user_id"]
                return

    # --------------------------------------------------------------- leave
    async def leave(self, user_id: str, room_id: str, reason: str | None = None) -> None:
        current = await self._state.membership(room_id, user_id)
        if current is None:
            if not await self._state.store.room_exists(room_id):
                raise not_found("Unknown room")
            raise forbidden("You are not a member of this room")
        if current in ("leave", "ban"):
            return  # already out: leaving again is a no-op, as Synapse does
        if (
            current == "join"
            and self.owner_exit is not None
            and await self.owner_exit(room_id, user_id, reason)
        ):
            return
        content = await self._member_content(user_id, "leave", reason)
        if current in ("invite", "knock") and self.remote is not None:
            inviter_local = await self._local_room_participation(room_id)
            if not inviter_local:
                await self.remote.leave_remote(user_id, room_id, content)
                return
        await self._send(room_id, user_id, user_id, content)

    async def _local_room_participation(self, room_id: str) -> bool:
        servers = await self._state.projections.room_servers(room_id)
        return self._server_name in servers

    async def forget(self, user_id: str, room_id: str) -> None:
        current = await self._state.membership(room_id, user_id)
        if current in ("join", "invite", "knock"):
            raise MatrixError(400, "M_UNKNOWN", "You must leave the room before forgetting it")
        if current is None and not await self._state.store.room_exists(room_id):
            raise not_found("Unknown room")
        await self._rooms.forget(user_id, room_id)

    # -------------------------------------------------------------- invite
    async def invite(
        self,
        sender: str,
        room_id: str,
        target: str,
        reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Event:
        await self._state.require_joined(room_id, sender)
        current = await self._state.membership(room_id, target)
        if current == "ban":
            raise forbidden(f"{target} is banned from the room")
        if current == "join":
            raise forbidden(f"{target} is already in the room")
        if self.is_local(target) and not await self._profiles.exists(target):
            raise not_found(f"Unknown user {target}")
        content = await self._member_content(target, "invite", reason, extra)
        if not self.is_local(target):
            if self.remote is None:
                raise MatrixError(403, "M_FORBIDDEN", "Federation is not available")
            content.pop("displayname", None)
        ev = await self._send_invite(room_id, sender, target, content)
        await self.after_local_invites(room_id, [ev])
        return ev

    async def _send_invite(
        self, room_id: str, sender: str, target: str, content: dict[str, Any]
    ) -> Event:
        if self.is_local(target) or self.remote is None:
            return await self._send(room_id, sender, target, content)
        # Remote invitee: its server must counter-sign before we append.
        with _refusals_as_matrix_errors():
            return await self._creator.send_with_countersign(
                room_id,
                Draft("m.room.member", sender, content, state_key=target),
                self.remote.send_invite,
            )

    async def after_local_invites(self, room_id: str, invites: Sequence[Event]) -> None:
        for ev in invites:
            for hook in self.invite_hooks:
                await hook(ev)

    # ------------------------------------------------ kick / ban / unban
    async def kick(self, sender: str, room_id: str, target: str, reason: str | None = None) -> None:
        await self._state.require_joined(room_id, sender)
        current = await self._state.membership(room_id, target)
        if current not in ("join", "invite", "knock"):
            raise forbidden(f"{target} is not in the room")
        content = await self._member_content(target, "leave", reason)
        await self._send(room_id, sender, target, content)

    async def revoke_invite(
        self, sender: str, room_id: str, target: str, reason: str | None = None
    ) -> None:
        """Withdraw a pending invite; refuses when the user already joined."""
        await self._state.require_joined(room_id, sender)
        current = await self._state.membership(room_id, target)
        if current != "invite":
            raise MatrixError(
                403,
                "M_BAD_STATE" if current else "M_FORBIDDEN",
                f"{target} has no pending invite (membership: {current})",
            )
        content = await self._member_content(target, "leave", reason)
        # Checked again under the room lock: a join in between wins.
        await self._send(room_id, sender, target, content, require=(target, "invite"))

    async def ban(self, sender: str, room_id: str, target: str, reason: str | None = None) -> None:
        await self._state.require_joined(room_id, sender)
        content: dict[str, Any] = {"membership": "ban"}
        if reason is not None:
            content["reason"] = reason
        await self._send(room_id, sender, target, content)

    async def unban(
        self, sender: str, room_id: str, target: str, reason: str | None = None
    ) -> None:
        await self._state.require_joined(room_id, sender)
        if await self._state.membership(room_id, target) != "ban":
            raise MatrixError(403, "M_BAD_STATE", f"{target} is not banned")
        content: dict[str, Any] = {"membership": "leave"}
        if reason is not None:
            content["reason"] = reason
        await self._send(room_id, sender, target, content)

    # --------------------------------------------------------------- knock
    async def knock(
        self, user_id: str, room_id: str, servers: Sequence[str] = (), reason: str | None = None
    ) -> str:
        content = await self._member_content(user_id, "knock", reason)
        if not await self._state.store.room_exists(room_id) or await self._only_remote_members(
            room_id
        ):
            if self.remote is None:
                raise not_found("Unknown room")
            via = list(servers) or [s for s in [_server_of(room_id)] if s]
            return await self.remote.knock_remote(user_id, room_id, via, content)
        current = await self._state.membership(room_id, user_id)
        if current == "join":
            raise forbidden("You are already in the room")
        if current == "ban":
            raise forbidden("You are banned from this room")
        await self._send(room_id, user_id, user_id, content)
        return room_id

    # ------------------------------------------------------ nickname/profile
    async def set_member_profile(
        self, user_id: str, room_id: str, displayname: str | None, avatar_url: str | None
    ) -> Event:
        """A per-room nickname: the same membership with a new displayname."""
        member = await self._state.event(room_id, "m.room.member", user_id)
        if member is None or member.membership != "join":
            raise forbidden("You are not in this room")
        content = dict(member.content)
        for k, v in (("displayname", displayname), ("avatar_url", avatar_url)):
            if v is None:
                content.pop(k, None)
            else:
                content[k] = v
        content.pop("reason", None)
        return await self._send(room_id, user_id, user_id, content)


@contextmanager
def _refusals_as_matrix_errors() -> Iterator[None]:
    """The event creator's refusals as the client's errors (a 403 when the
    authorization rules say no, on every way a member event is sent)."""
    try:
        yield
    except PreconditionFailed as e:
        raise MatrixError(403, "M_BAD_STATE", str(e)) from e
    except AuthError as e:
        raise forbidden(str(e)) from e
    except RoomNotFound as e:
        raise not_found("Unknown room") from e


def _server_of(room_id: str) -> str | None:
    _, sep, server = room_id.partition(":")
    if not sep:
        return None
    try:
        return ServerName.parse(server)
    except ValueError:
        return None
