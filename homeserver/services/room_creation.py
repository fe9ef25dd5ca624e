"""``POST /createRoom``: the room's first events, in the specification's order.

1. m.room.create (creation_content, room_version; v10: creator)
2. the creator's join
3. m.room.power_levels (preset defaults, then power_level_content_override)
4. m.room.canonical_alias (room_alias_name)
5. the preset's join rules, history visibility, guest access
6. initial_state (beats the preset)
7. m.room.name and m.room.topic (beat initial_state)
8. invites (with is_direct), then directory visibility.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.core.auth import AuthError
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

    async def create_room(self, user_id: str, body: Mapping[str, Any]) -> str:
        # -- validate the whole request before writing anything
        creation_content = _obj(body, "creation_content")
        kind = creation_content.get("io.homeserver.kind")
        if kind is not None and kind not in ("transient", "persistent", "public"):
            raise bad_json("io.homeserver.kind must be transient, persistent or public")
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

        create_content = dict(creation_content)
        create_content["room_version"] = rv.identifier
        if not rv.implicit_room_creator:
            create_content["creator"] = user_id
        if rv.privileged_creators and preset["invitees_are_admins"] and invitees:
            extra = create_content.get("additional_creators", [])
            create_content["additional_creators"] = sorted(set(extra) | set(invitees))
        add("m.room.create", create_content)
        profile = await self._profiles.get(user_id)
        member: dict[str, Any] = {"membership": "join"}
        if profile.displayname is not None:
            member["displayname"] = profile.displayname
        if profile.avatar_url is not None:
            member["avatar_url"] = profile.avatar_url
        add("m.room.member", member, user_id)
        pl = default_power_levels(rv, user_id, preset, invitees)
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
        for u in invitees:
            if u == user_id:
                continue
            if u.server_name != self._server_name:
                remote_invitees.append(u)  # their server countersigns: invited below
                continue
            content: dict[str, Any] = {"membership": "invite"}
            if is_direct:
                content["is_direct"] = True
            if u.server_name == self._server_name:
                p = await self._profiles.get_if_exists(u)
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


def _kind_of(create_content: Mapping[str, Any]) -> str | None:
    kind = create_content.get("io.homeserver.kind")
    return kind if isinstance(kind, str) else None


def _obj(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_json(f"{key} must be an object")
    return value
