"""``POST /createRoom``: the room's first events, in the specification's order.

1. m.room.create (creation_content; the server overwrites room_version,
   creator — set in v10, dropped in v11+ where the sender is the creator —
   and io.homeserver.owner, see below)
2. the creator's join
3. m.room.power_levels (preset defaults, then power_level_content_override)
4. m.room.canonical_alias (room_alias_name)
5. the preset's join rules, history visibility, guest access
6. initial_state (beats the preset)
7. m.room.name and m.room.topic (beat initial_state)
8. invites (with is_direct), then directory visibility.

Our own creation content (docs/room-kinds.md): ``io.homeserver.kind``
(transient, persistent, public, conference) and ``io.homeserver.owner_bound``
(the owner's leave closes the room; on by default for ``conference``, the
OpenSER IMC-style kind, whose invites also default to the room's admin
level). ``io.homeserver.owner`` names the owner of an owner-bound or
operator-created room; the server always writes it itself.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.core.auth import AuthError
from homeserver.core.events import Event
from homeserver.core.ids import InvalidID, RoomAlias, UserID
from homeserver.core.room_versions import (
    DEFAULT_ROOM_VERSION,
    RoomVersion,
    UnsupportedRoomVersion,
    get_room_version,
)
from homeserver.services.directory import DirectoryService
from homeserver.services.errors import MatrixError, bad_json, invalid_param
from homeserver.services.event_creator import Draft, EventCreator
from homeserver.services.membership import MembershipService
from homeserver.services.profile import ProfileService

KINDS = ("transient", "persistent", "public", "conference")
KIND = "io.homeserver.kind"
OWNER = "io.homeserver.owner"
OWNER_BOUND = "io.homeserver.owner_bound"

# Caps on one createRoom (issue 16, "unbounded work per request"): every
# entry is an event to hash, sign, authorise and give a state group, inside
# one request. Clients put a handful of entries here; more state and more
# invites can follow the creation, under the send and invite rate limits.
MAX_INITIAL_STATE = 50
MAX_INVITES = 50

PRESETS: dict[str, dict[str, Any]] = {
    "private_chat": {
        "join_rule": "invite",
        "history": "shared",
        "guest": "can_join",
        "invitees_are_admins": False,
        "invite_level": 0,
    },
    "trusted_private_chat": {
        "join_rule": "invite",
        "history": "shared",
        "guest": "can_join",
        "invitees_are_admins": True,
        "invite_level": 0,
    },
    "public_chat": {
        "join_rule": "public",
        "history": "shared",
        "guest": None,
        "invitees_are_admins": False,
        "invite_level": 50,
    },
}


def default_power_levels(
    rv: RoomVersion, creator: str, preset: Mapping[str, Any], invitees: Sequence[str]
) -> dict[str, Any]:
    users: dict[str, int] = {}
    if not rv.privileged_creators:
        users[creator] = 100
        if preset["invitees_are_admins"]:
            users.update({u: 100 for u in invitees})
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            # Creators outrank 100 in v12; only they may upgrade the room.
            "m.room.tombstone": 150 if rv.privileged_creators else 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": preset["invite_level"],
        "historical": 100,
        "notifications": {"room": 50},
    }


class RoomCreationService:
    def __init__(
        self,
        creator: EventCreator,
        membership: MembershipService,
        directory: DirectoryService,
        profiles: ProfileService,
        server_name: str,
    ) -> None:
        self._creator = creator
        self._membership = membership
        self._directory = directory
        self._profiles = profiles
        self._server_name = server_name

    async def _is_public_kind(self, room_id: str) -> bool:
        create = await self._membership.room_state.content(room_id, "m.room.create")
        return _kind_of(create) == "public"

    async def create_room(
        self,
        user_id: str,
        body: Mapping[str, Any],
        *,
        owner: str | None = None,
        capped: bool = True,
    ) -> str:
        """Create a room as ``user_id``. ``owner`` (operator creation only)
        names another user who gets the owner's power: a creator in room
        versions with privileged creators, else the admin level. ``capped``:
        hold the request to MAX_INITIAL_STATE and MAX_INVITES (operators,
        who are trusted, are not)."""
        # -- validate the whole request before writing anything
        creation_content = _obj(body, "creation_content")
        kind = creation_content.get(KIND)
        if kind is not None and kind not in KINDS:
            raise bad_json(f"{KIND} must be one of {', '.join(KINDS)}")
        owner_bound = creation_content.get(OWNER_BOUND, kind == "conference")
        if not isinstance(owner_bound, bool):
            raise bad_json(f"{OWNER_BOUND} must be a boolean")
        extra_creators = creation_content.get("additional_creators", [])
        if not isinstance(extra_creators, list) or not all(
            isinstance(u, str) for u in extra_creators
        ):
            raise bad_json("additional_creators must be an array of user ids")
        try:
            for u in extra_creators:
                UserID.parse(u)
        except InvalidID as e:
            raise invalid_param(str(e)) from e
        # A "public" room kind is findable: published and public by default.
        visibility = body.get("visibility", "public" if kind == "public" else "private")
        if visibility not in ("public", "private"):
            raise bad_json("visibility must be 'public' or 'private'")
        preset_name = body.get("preset")
        if preset_name is None:
            preset_name = "public_chat" if visibility == "public" else "private_chat"
        if not isinstance(preset_name, str) or preset_name not in PRESETS:
            raise bad_json(f"Unknown preset {preset_name!r}")
        preset = PRESETS[preset_name]
        version = body.get("room_version", DEFAULT_ROOM_VERSION.identifier)
        if not isinstance(version, str):
            raise bad_json("room_version must be a string")
        try:
            rv = get_room_version(version)
        except UnsupportedRoomVersion as e:
            raise MatrixError(
                400,
                "M_UNSUPPORTED_ROOM_VERSION",
                f"Your homeserver does not support room version {version}",
            ) from e
        pl_override = _obj(body, "power_level_content_override")
        invites = body.get("invite", [])
        if not isinstance(invites, list) or not all(isinstance(u, str) for u in invites):
            raise bad_json("invite must be an array of user ids")
        if capped and len(invites) > MAX_INVITES:
            raise invalid_param(
                f"invite may list at most {MAX_INVITES} users; invite more after creation"
            )
        try:
            invitees = [UserID.parse(u) for u in invites]
        except InvalidID as e:
            raise invalid_param(str(e)) from e
        if body.get("invite_3pid"):
            raise MatrixError(400, "M_UNKNOWN", "Third-party invites are not supported")
        is_direct = body.get("is_direct", False)
        if not isinstance(is_direct, bool):
            raise bad_json("is_direct must be a boolean")
        name, topic = body.get("name"), body.get("topic")
        if name is not None and not isinstance(name, str):
            raise bad_json("name must be a string")
        if topic is not None and not isinstance(topic, str):
            raise bad_json("topic must be a string")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list):
            raise bad_json("initial_state must be an array")
        if capped and len(initial_state) > MAX_INITIAL_STATE:
            raise invalid_param(
                f"initial_state may hold at most {MAX_INITIAL_STATE} events; "
                "send more state after creation"
            )
        for ev in initial_state:
            if (
                not isinstance(ev, dict)
                or not isinstance(ev.get("type"), str)
                or not isinstance(ev.get("content"), dict)
                or not isinstance(ev.get("state_key", ""), str)
            ):
                raise bad_json("initial_state entries need type (string) and content (object)")
        alias = None
        alias_name = body.get("room_alias_name")
        if alias_name is not None:
            if not isinstance(alias_name, str):
                raise bad_json("room_alias_name must be a string")
            if not alias_name or any(c in alias_name for c in ":# \t\n"):
                raise invalid_param("Invalid characters in room alias name")
            try:
                alias = RoomAlias.parse(f"#{alias_name}:{self._server_name}")
            except InvalidID as e:
                raise invalid_param(str(e)) from e
            existing = await self._directory.resolve_local(alias)
            if existing is not None:
                # A public room is reopened by its alias rather than duplicated.
                if kind == "public" and await self._is_public_kind(existing):
                    await self._membership.join(user_id, existing)
                    return existing
                raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")

        # -- the events, in order
        drafts: list[Draft] = []

        def add(type: str, content: Mapping[str, Any], state_key: str | None = "") -> None:
            drafts.append(Draft(type=type, sender=user_id, content=content, state_key=state_key))

        create_content = server_creation_content(
            rv, creation_content, user_id, owner or user_id, owner_bound=owner_bound
        )
        new_creators: set[str] = set(invitees) if preset["invitees_are_admins"] else set()
        if owner is not None and owner != user_id:
            new_creators.add(owner)
        if rv.privileged_creators and new_creators:
            extra = create_content.get("additional_creators", [])
            create_content["additional_creators"] = sorted(set(extra) | new_creators)
        add("m.room.create", create_content)
        profile = await self._profiles.get(user_id)
        member: dict[str, Any] = {"membership": "join"}
        if profile.displayname is not None:
            member["displayname"] = profile.displayname
        if profile.avatar_url is not None:
            member["avatar_url"] = profile.avatar_url
        add("m.room.member", member, user_id)
        pl = default_power_levels(rv, user_id, preset, invitees)
        if kind == "conference":
            # OpenSER IMC: only the owner and the administrators may invite.
            pl["invite"] = admin_level(pl)
        if owner is not None and not rv.privileged_creators:
            pl["users"][owner] = admin_level(pl)
        for k, v in pl_override.items():
            if isinstance(v, dict) and isinstance(pl.get(k), dict):
                pl[k] = {**pl[k], **copy.deepcopy(v)}
            else:
                pl[k] = copy.deepcopy(v)
        add("m.room.power_levels", pl)
        if alias is not None:
            add("m.room.canonical_alias", {"alias": alias})
        initial = {(e["type"], e.get("state_key", "")): e["content"] for e in initial_state}
        preset_events = [
            ("m.room.join_rules", {"join_rule": preset["join_rule"]}),
            ("m.room.history_visibility", {"history_visibility": preset["history"]}),
        ]
        if preset["guest"]:
            preset_events.append(("m.room.guest_access", {"guest_access": preset["guest"]}))
        for t, c in preset_events:
            if (t, "") not in initial:
                add(t, c)
        for (t, sk), c in initial.items():
            if t in ("m.room.create", "m.room.member") or (t == "m.room.power_levels" and sk == ""):
                raise bad_json(f"initial_state may not contain {t}")
            if (t == "m.room.name" and name is not None) or (
                t == "m.room.topic" and topic is not None
            ):
                continue
            add(t, c, sk)
        if name is not None:
            add("m.room.name", {"name": name})
        if topic is not None:
            add("m.room.topic", {"topic": topic})
        remote_invitees = []
        local_invitees = [u for u in invitees if u.server_name == self._server_name]
        profiles = await self._profiles.get_many(local_invitees)
        for u in invitees:
            if u == user_id:
                continue
            if u.server_name != self._server_name:
                remote_invitees.append(u)  # their server countersigns: invited below
                continue
            content: dict[str, Any] = {"membership": "invite"}
            if is_direct:
                content["is_direct"] = True
            p = profiles.get(u)
            if p is None:
                raise MatrixError(404, "M_NOT_FOUND", f"Unknown user {u}")
            if p.displayname:
                content["displayname"] = p.displayname
            add("m.room.member", content, u)
        try:
            room_id, events = await self._creator.create_room(rv, drafts)
        except AuthError as e:
            raise MatrixError(400, "M_INVALID_PARAM", f"Cannot create room: {e}") from e
        except ValueError as e:
            raise MatrixError(400, "M_BAD_JSON", f"Cannot create room: {e}") from e
        if alias is not None:
            await self._directory.create_alias(alias, room_id, user_id)
        if visibility == "public":
            await self._directory.set_visibility(room_id, "public")
        await self._membership.after_local_invites(
            room_id, [e for e in events if e.membership == "invite"]
        )
        for u in remote_invitees:
            await self._membership.invite(
                user_id, room_id, u, extra={"is_direct": True} if is_direct else None
            )
        return room_id


def server_creation_content(
    rv: RoomVersion,
    requested: Mapping[str, Any],
    sender: str,
    owner: str,
    *,
    owner_bound: bool,
) -> dict[str, Any]:
    """The create event's content from the client's ``creation_content``: the
    keys the server owns are overwritten, never taken from the client —
    ``room_version``; ``creator`` (the sender where the version has the field,
    dropped where it does not: v11+ derive the creator from the sender, and a
    client-chosen value would only mislead clients that still read it); and
    ``io.homeserver.owner`` (written for owner-bound rooms and rooms created
    for someone else, dropped otherwise)."""
    content = dict(requested)
    content["room_version"] = rv.identifier
    content.pop("creator", None)
    if not rv.implicit_room_creator:
        content["creator"] = sender
    content.pop(OWNER, None)
    if owner_bound:
        content[OWNER_BOUND] = True
    if owner_bound or owner != sender:
        content[OWNER] = owner
    return content


def admin_level(power_levels: Mapping[str, Any]) -> int:
    """The room's admin level: the power needed to change power levels (who
    may hand out roles), 100 unless the room says otherwise."""
    events = power_levels.get("events")
    needed = events.get("m.room.power_levels") if isinstance(events, dict) else None
    if isinstance(needed, int) and not isinstance(needed, bool):
        return needed
    default = power_levels.get("state_default", 50)
    return default if isinstance(default, int) and not isinstance(default, bool) else 50


def owner_of(create: Event) -> str:
    """The room's owner: ``io.homeserver.owner`` when the server wrote one
    (operator-created and owner-bound rooms), else the create event's sender."""
    owner = create.content.get(OWNER)
    return owner if isinstance(owner, str) else create.sender


def _kind_of(create_content: Mapping[str, Any]) -> str | None:
    kind = create_content.get(KIND)
    return kind if isinstance(kind, str) else None


def _obj(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_json(f"{key} must be an object")
    return value
