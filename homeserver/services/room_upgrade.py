"""``POST /rooms/{roomId}/upgrade`` (Client-Server API "Room Upgrades",
server behaviour), numbered like the specification:

1. The user must be allowed to send ``m.room.tombstone`` in the old room.
2. A replacement room of the requested version, whose ``m.room.create``
   names the old room as ``predecessor`` (and keeps its ``type``).
3. Transferable state copied: the old power levels (the upgrader raised
   for the time of the copy when needed, then the exact levels restored),
   join rules, history visibility, guest access, name, topic, avatar,
   encryption, server ACLs, the canonical alias, space children; bans carry
   over, and the old room's local members are invited (as Synapse does:
   membership itself cannot be transferred by a server).
4. Local aliases move to the new room, and with them the directory listing.
5. An ``m.room.tombstone`` in the old room points at the replacement.
6. The old room's power levels are restricted where the user may change
   them: ``events_default`` and ``invite`` raised to the greater of 50 and
   ``users_default + 1``; its canonical alias event is emptied.

As in Synapse, upgrades of one room run one at a time (in this process), and
a user asking again within five minutes (a client retrying) gets the room
already made rather than a second one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.core.auth import creators, get_required_level, get_user_power_level
from homeserver.core.events import Event, StateKey
from homeserver.core.ids import InvalidID, UserID
from homeserver.core.room_versions import RoomVersion, UnsupportedRoomVersion, get_room_version
from homeserver.services.errors import MatrixError, forbidden, invalid_param
from homeserver.services.event_creator import Draft, EventCreator
from homeserver.services.locks import KeyedLocks
from homeserver.services.membership import MembershipService
from homeserver.services.messages import MessageService
from homeserver.services.profile import ProfileService
from homeserver.services.room_state import RoomState
from homeserver.storage.rooms import RoomStore

# Step 3: copied as they are (state key ""), after the power levels.
TRANSFERRED = (
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.canonical_alias",
)
# Every state key of these is copied too.
TRANSFERRED_ALL_KEYS = ("m.space.child",)
# Keys of the old create event that do not describe the room's nature.
_CREATE_KEYS_NOT_COPIED = ("creator", "room_version", "predecessor", "additional_creators")
# How long a repeated request of the same user gets the same answer.
REPEAT_WINDOW_S = 300.0


class RoomUpgradeService:
    def __init__(
        self,
        creator: EventCreator,
        state: RoomState,
        membership: MembershipService,
        messages: MessageService,
        profiles: ProfileService,
        rooms: RoomStore,
        server_name: str,
    ) -> None:
        self._creator = creator
        self._state = state
        self._membership = membership
        self._messages = messages
        self._profiles = profiles
        self._rooms = rooms
        self._server_name = server_name
        self._locks = KeyedLocks()
        self._recent: dict[tuple[str, str], tuple[float, str]] = {}

    async def upgrade(
        self,
        user_id: str,
        room_id: str,
        new_version: str,
        additional_creators: Sequence[str] = (),
    ) -> str:
        """The new room's id."""
        lock = self._locks(room_id)
        async with lock:
            now = time.monotonic()
            self._recent = {k: v for k, v in self._recent.items() if v[0] > now}
            done = self._recent.get((room_id, user_id))
            if done is not None:
                return done[1]
            new_room = await self._upgrade(user_id, room_id, new_version, additional_creators)
            self._recent[(room_id, user_id)] = (now + REPEAT_WINDOW_S, new_room)
            return new_room

    async def _upgrade(
        self,
        user_id: str,
        room_id: str,
        new_version: str,
        additional_creators: Sequence[str],
    ) -> str:
        try:
            rv = get_room_version(new_version)
        except UnsupportedRoomVersion as e:
            raise MatrixError(
                400,
                "M_UNSUPPORTED_ROOM_VERSION",
                f"This server does not support room version {new_version}",
            ) from e
        try:
            extra_creators = sorted({str(UserID.parse(u)) for u in additional_creators} - {user_id})
        except InvalidID as e:
            raise invalid_param(str(e)) from e
        await self._state.require_joined(room_id, user_id)
        old = {(e.type, e.state_key or ""): e for e in await self._state.all_events(room_id)}
        create, pl = old.get(("m.room.create", "")), old.get(("m.room.power_levels", ""))
        # 1.
        level = get_user_power_level(user_id, pl, create)
        if level < get_required_level("m.room.tombstone", True, pl):
            raise forbidden("You need the power to send m.room.tombstone to upgrade the room")
        # 2. and 3.
        new_room, events = await self._create_successor(
            user_id, room_id, rv, extra_creators if rv.privileged_creators else [], old
        )
        await self._membership.after_local_invites(
            new_room, [e for e in events if e.membership == "invite"]
        )
        # 4.
        for alias in await self._rooms.delete_room_aliases(room_id):
            await self._rooms.create_alias(alias, new_room, user_id)
        if await self._rooms.get_visibility(room_id) == "public":
            await self._rooms.set_visibility(new_room, "public")
            await self._rooms.set_visibility(room_id, "private")
        # 5.
        await self._messages.send_state(
            user_id,
            room_id,
            "m.room.tombstone",
            "",
            {"body": "This room has been replaced", "replacement_room": new_room},
        )
        # 6.
        await self._restrict_old_room(user_id, room_id, level, old)
        return new_room

    async def _create_successor(
        self,
        user_id: str,
        room_id: str,
        rv: RoomVersion,
        extra_creators: list[str],
        old: Mapping[StateKey, Event],
    ) -> tuple[str, list[Event]]:
        drafts: list[Draft] = []

        def add(type: str, content: Mapping[str, Any], state_key: str = "") -> None:
            drafts.append(Draft(type, user_id, content, state_key=state_key))

        old_create = old[("m.room.create", "")]
        create_content = {
            k: copy.deepcopy(v)
            for k, v in old_create.content.items()
            if k not in _CREATE_KEYS_NOT_COPIED
        }
        create_content["room_version"] = rv.identifier
        last = await self._creator.store.forward_extremities(room_id)
        create_content["predecessor"] = {
            "room_id": room_id,
            **({"event_id": last[0]} if last else {}),
        }
        if not rv.implicit_room_creator:
            create_content["creator"] = user_id
        if extra_creators:
            create_content["additional_creators"] = extra_creators
        add("m.room.create", create_content)
        add("m.room.member", await self._member_content(user_id, "join"), user_id)

        new_creators = {user_id, *extra_creators} if rv.privileged_creators else set()
        final_pl = _power_levels_for(old, rv, new_creators)
        copied = [
            e
            for (t, sk), e in sorted(old.items())
            if (t in TRANSFERRED and sk == "") or t in TRANSFERRED_ALL_KEYS
        ]
        banned = sorted(
            sk for (t, sk), e in old.items() if t == "m.room.member" and e.membership == "ban"
        )
        invitees = sorted(
            sk
            for (t, sk), e in old.items()
            if t == "m.room.member"
            and e.membership == "join"
            and sk != user_id
            and UserID.parse(sk).server_name == self._server_name
        )
        # The upgrader may need more power than the old levels give to write
        # all of that (the first power levels of a room are not checked
        # against earlier ones): they get the highest level named for the
        # copy, and the exact levels after (lowering one's own level is allowed).
        needed = _highest_level(final_pl)
        raised = user_id not in new_creators and _level_in(final_pl, user_id) < needed
        if raised:
            add(
                "m.room.power_levels", {**final_pl, "users": {**final_pl["users"], user_id: needed}}
            )
        else:
            add("m.room.power_levels", final_pl)
        for e in copied:
            add(e.type, copy.deepcopy(dict(e.content)), e.state_key or "")
        for u in banned:
            add("m.room.member", {"membership": "ban"}, u)
        for u in invitees:
            add("m.room.member", await self._member_content(u, "invite"), u)
        if raised:
            add("m.room.power_levels", final_pl)
        return await self._creator.create_room(rv, drafts)

    async def _member_content(self, user_id: str, membership: str) -> dict[str, Any]:
        profile = await self._profiles.get(user_id)
        content: dict[str, Any] = {"membership": membership}
        if profile.displayname is not None:
            content["displayname"] = profile.displayname
        if profile.avatar_url is not None:
            content["avatar_url"] = profile.avatar_url
        return content

    async def _restrict_old_room(
        self, user_id: str, room_id: str, level: float, old: Mapping[StateKey, Event]
    ) -> None:
        """Step 6, where the user has the power for it (otherwise the old
        room stays as it is, as in Synapse: the tombstone is what counts)."""
        pl = old.get(("m.room.power_levels", ""))
        if pl is None or level < get_required_level("m.room.power_levels", True, pl):
            return
        content = copy.deepcopy(dict(pl.content))
        users_default = content.get("users_default", 0)
        floor = max(50, (users_default if isinstance(users_default, int) else 0) + 1)
        changed = False
        for key in ("events_default", "invite"):
            current = content.get(key, 0)
            if not isinstance(current, int) or current < floor:
                content[key] = floor
                changed = True
        if changed:
            await self._messages.send_state(user_id, room_id, "m.room.power_levels", "", content)
        alias = old.get(("m.room.canonical_alias", ""))
        if (
            alias is not None
            and alias.content
            and level >= get_required_level("m.room.canonical_alias", True, pl)
        ):
            await self._messages.send_state(user_id, room_id, "m.room.canonical_alias", "", {})


def _power_levels_for(
    old: Mapping[StateKey, Event], rv: RoomVersion, new_creators: set[str]
) -> dict[str, Any]:
    """The new room's power levels: the old ones, without the new room's
    creators when they have unlimited power there (v12: they must not be
    listed), and with the old room's v12 creators at 100 when the new
    version has no such creators."""
    pl = old.get(("m.room.power_levels", ""))
    create = old[("m.room.create", "")]
    content = copy.deepcopy(dict(pl.content)) if pl is not None else {}
    users = content.get("users")
    users = dict(users) if isinstance(users, dict) else {}
    if rv.privileged_creators:
        for u in new_creators:
            users.pop(u, None)
    elif create.room_version.privileged_creators:
        for u in creators(create):
            users.setdefault(u, 100)
    content["users"] = users
    return content


def _level_in(pl: Mapping[str, Any], user_id: str) -> int:
    """A user's level under power levels ``pl`` (a content)."""
    users = pl.get("users", {})
    if isinstance(users.get(user_id), int):
        return int(users[user_id])
    d = pl.get("users_default", 0)
    return d if isinstance(d, int) else 0


def _highest_level(pl: Mapping[str, Any]) -> int:
    """The highest level any action needs under power levels ``pl``
    (at least the defaults of 50 for state and moderation)."""
    events = pl.get("events", {})
    named = [
        pl.get(k) for k in ("state_default", "events_default", "ban", "kick", "redact", "invite")
    ]
    values = [*(events.values() if isinstance(events, dict) else ()), *named]
    return max([50, *(v for v in values if isinstance(v, int) and not isinstance(v, bool))])
