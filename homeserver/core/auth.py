"""Authorization rules for room versions 10, 11 and 12, as pure functions.

``check_auth(event, auth_events)`` applies the rules of the event's room
version against the state it cites: ``auth_events`` maps (type, state_key)
to the events the rules may consult. For room v12 the create event is not
listed in an event's ``auth_events`` (the room id names it) but callers must
still include it in the map under ("m.room.create", "").

Comments number the rules as in the specification's "Authorization rules"
of room v11 (v10 and v12 differ where noted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.core.events import Event, StateKey
from homeserver.core.ids import InvalidID, UserID
from homeserver.core.room_versions import KNOWN_ROOM_VERSIONS

INFINITE = math.inf
_INT_KEYS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")
_NAMED_DEFAULTS = {"ban": 50, "kick": 50, "redact": 50, "invite": 0}


class AuthError(Exception):
    """The event breaks an authorization rule; the message says which."""


def _server(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def _obj(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ------------------------------------------------------------------ helpers
def creators(create: Event | None) -> set[str]:
    """Users with the creator's rights: v10 ``creator``; v11 the sender;
    v12 the sender plus ``additional_creators``."""
    if create is None:
        return set()
    rv = create.room_version
    if not rv.implicit_room_creator:
        c = create.content.get("creator")
        return {c} if isinstance(c, str) else set()
    out = {create.sender}
    if rv.privileged_creators:
        extra = create.content.get("additional_creators")
        if isinstance(extra, list):
            out |= {u for u in extra if isinstance(u, str)}
    return out


def is_creator(user_id: str, create: Event | None) -> bool:
    return user_id in creators(create)


def get_user_power_level(user_id: str, power_levels: Event | None, create: Event | None) -> float:
    """A user's power level; v12 creators have infinite power."""
    if (
        create is not None
        and create.room_version.privileged_creators
        and is_creator(user_id, create)
    ):
        return INFINITE
    if power_levels is not None:
        users = power_levels.content.get("users")
        if isinstance(users, Mapping) and _is_int(users.get(user_id)):
            return int(users[user_id])
        d = power_levels.content.get("users_default", 0)
        return int(d) if _is_int(d) else 0
    # No power levels yet: the creator has 100, everyone else 0.
    return 100 if is_creator(user_id, create) else 0


def get_named_level(power_levels: Event | None, name: str) -> int:
    """ban / kick / redact / invite levels with the spec's defaults."""
    default = _NAMED_DEFAULTS[name]
    if power_levels is None:
        return default
    v = power_levels.content.get(name, default)
    return int(v) if _is_int(v) else default


def get_required_level(event_type: str, is_state: bool, power_levels: Event | None) -> int:
    """The level needed to send an event. Without a power levels event the
    defaults still hold: 50 for state, 0 for the rest (matrix-spec#1479,
    as Synapse)."""
    c = power_levels.content if power_levels is not None else {}
    events = c.get("events")
    if isinstance(events, Mapping) and _is_int(events.get(event_type)):
        return int(events[event_type])
    key, default = ("state_default", 50) if is_state else ("events_default", 0)
    v = c.get(key, default)
    return int(v) if _is_int(v) else default


def _membership(ev: Event | None) -> str | None:
    return ev.membership if ev is not None else None


def check_auth_events_selection(
    event: Event, cited: Sequence[Event], allowed: Sequence[StateKey]
) -> None:
    """Rule 2 (v10/v11) / 2-3 (v12): the cited auth events are exactly of
    the selected kinds, without duplicates, and (v12) no create event."""
    seen: set[StateKey] = set()
    for a in cited:
        if a.state_key is None:
            raise AuthError(f"auth event {a.event_id} is not a state event")
        key = a.state_tuple
        if key in seen:
            raise AuthError(f"duplicate auth event for {key}")
        seen.add(key)
        if key not in allowed:
            raise AuthError(f"auth event {key} is not one the event may cite")


# -------------------------------------------------------------------- rules
def check_auth(event: Event, auth_events: Mapping[StateKey, Event]) -> None:
    """Raise AuthError unless ``event`` is allowed by the rules of its room
    version, given the events in ``auth_events``."""
    rv = event.room_version
    # 1. m.room.create
    if event.type == "m.room.create":
        _check_create(event)
        return
    create = auth_events.get(("m.room.create", ""))
    # 2.4 (v10/v11) / v12: there must be a create event for the room.
    if create is None:
        raise AuthError("no m.room.create event among the auth events")
    if rv.room_id_is_create_event_hash:
        if event.room_id != "!" + create.event_id[1:]:
            raise AuthError("the room id does not name the room's create event")
    elif create.room_id != event.room_id:
        raise AuthError("the create event belongs to another room")
    # 3. m.federate
    if create.content.get("m.federate", True) is False and _server(event.sender) != _server(
        create.sender
    ):
        raise AuthError("this room does not federate: sender is on another server")
    power_levels = auth_events.get(("m.room.power_levels", ""))
    sender_member = auth_events.get(("m.room.member", event.sender))
    sender_level = get_user_power_level(event.sender, power_levels, create)
    # 4. m.room.member
    if event.type == "m.room.member":
        _check_member(event, auth_events, create, power_levels, sender_member, sender_level)
        return
    # 5. The sender must be joined.
    if _membership(sender_member) != "join":
        raise AuthError(f"{event.sender} is not in the room")
    # 6. m.room.third_party_invite needs the invite level.
    if event.type == "m.room.third_party_invite":
        need = get_named_level(power_levels, "invite")
        if sender_level < need:
            raise AuthError(
                f"insufficient power to invite (need {need}, have {_fmt(sender_level)})"
            )
        return
    # 7. The event type's required power level.
    need = get_required_level(event.type, event.is_state, power_levels)
    if sender_level < need:
        raise AuthError(
            f"insufficient power level to send {event.type} "
            f"(need {need}, have {_fmt(sender_level)})"
        )
    # 8. State keys starting with @ belong to that user.
    if (
        event.state_key is not None
        and event.state_key.startswith("@")
        and event.state_key != event.sender
    ):
        raise AuthError("you cannot set state keyed by another user's id")
    # 9. m.room.power_levels
    if event.type == "m.room.power_levels":
        _check_power_levels(event, power_levels, create, sender_level)
    # 10. Otherwise, allow.


def _fmt(level: float) -> str:
    return "unlimited" if level == INFINITE else str(int(level))


def _check_create(event: Event) -> None:
    rv = event.room_version
    # 1.1 No prev_events.
    if event.prev_events:
        raise AuthError("a create event has no prev_events")
    if rv.room_id_is_create_event_hash:
        # 1.2 (v12) The create event carries no room_id.
        if "room_id" in event.pdu:
            raise AuthError("a v12 create event must not have a room_id")
    elif _server(event.room_id) != _server(event.sender):
        # 1.2 (v10/v11) The room id's server is the sender's.
        raise AuthError("the room id's server does not match the sender's")
    # 1.3 A known room version.
    version = event.content.get("room_version", "1")
    if version not in KNOWN_ROOM_VERSIONS:
        raise AuthError(f"unsupported room version {version!r}")
    # 1.4 (v10) content.creator is required.
    if not rv.implicit_room_creator and not isinstance(event.content.get("creator"), str):
        raise AuthError("the create event has no creator")
    # 1.4 (v12) additional_creators are valid user ids.
    if rv.privileged_creators and "additional_creators" in event.content:
        extra = event.content["additional_creators"]
        if not isinstance(extra, list):
            raise AuthError("additional_creators must be a list of user ids")
        for u in extra:
            try:
                UserID.parse(u)
            except InvalidID as e:
                raise AuthError(f"invalid user id in additional_creators: {u!r}") from e


def _check_member(
    event: Event,
    auth_events: Mapping[StateKey, Event],
    create: Event,
    power_levels: Event | None,
    sender_member: Event | None,
    sender_level: float,
) -> None:
    # 4.1 state_key and membership are required.
    target = event.state_key
    membership = event.content.get("membership")
    if target is None or not isinstance(membership, str):
        raise AuthError("member events need a state_key and a membership")
    target_member = auth_events.get(("m.room.member", target))
    target_membership = _membership(target_member)
    sender_membership = _membership(sender_member)
    join_rules = auth_events.get(("m.room.join_rules", ""))
    join_rule = join_rules.content.get("join_rule", "invite") if join_rules else "invite"
    target_level = get_user_power_level(target, power_levels, create)
    # 4.2 join_authorised_via_users_server must be signed by that user's server.
    via = event.content.get("join_authorised_via_users_server")
    if via is not None:
        if not isinstance(via, str):
            raise AuthError("join_authorised_via_users_server must be a user id")
        sigs = event.pdu.get("signatures", {})
        if not isinstance(sigs, Mapping) or _server(via) not in sigs:
            raise AuthError("the join is not signed by the authorising user's server")

    if membership == "join":
        # 4.3.1 The creator's first join right after the create event (v10:
        # the create content's creator; v11+: the create event's sender).
        first_member = (
            create.content.get("creator")
            if not create.room_version.implicit_room_creator
            else create.sender
        )
        if (
            len(event.prev_events) == 1
            and event.prev_events[0] == create.event_id
            and target == first_member
        ):
            return
        # 4.3.2 Only the user may join themself.
        if event.sender != target:
            raise AuthError("you cannot join on behalf of someone else")
        # 4.3.3 Banned users may not join.
        if sender_membership == "ban":
            raise AuthError("user is banned from the room")
        # 4.3.4 invite / knock rooms need an invite (or an existing join).
        if join_rule in ("invite", "knock"):
            if sender_membership in ("invite", "join"):
                return
            raise AuthError("you are not invited to this room")
        # 4.3.5 restricted / knock_restricted
        if join_rule in ("restricted", "knock_restricted"):
            if sender_membership in ("invite", "join"):
                return
            if not isinstance(via, str):
                raise AuthError("you are not allowed to join this restricted room")
            via_member = auth_events.get(("m.room.member", via))
            if _membership(via_member) != "join" or get_user_power_level(
                via, power_levels, create
            ) < get_named_level(power_levels, "invite"):
                raise AuthError("the authorising user cannot invite to this room")
            return
        # 4.3.6 public rooms: anyone may join.
        if join_rule == "public":
            return
        # 4.3.7
        raise AuthError(f"you cannot join a room whose join rule is {join_rule!r}")

    if membership == "invite":
        # 4.4.1 third-party invites
        tpi = event.content.get("third_party_invite")
        if tpi is not None:
            _check_third_party_invite(event, tpi, auth_events, target_membership)
            return
        # 4.4.2 The inviter must be joined.
        if sender_membership != "join":
            raise AuthError(f"{event.sender} is not in the room")
        # 4.4.3 The target may not be joined or banned.
        if target_membership == "join":
            raise AuthError(f"{target} is already in the room")
        if target_membership == "ban":
            raise AuthError(f"{target} is banned from the room")
        # 4.4.4 The invite power level.
        need = get_named_level(power_levels, "invite")
        if sender_level >= need:
            return
        # 4.4.5
        raise AuthError(f"insufficient power to invite (need {need}, have {_fmt(sender_level)})")

    if membership == "leave":
        # 4.5.1 Leaving yourself: only from invite, join or knock.
        if event.sender == target:
            if sender_membership in ("invite", "join", "knock"):
                return
            raise AuthError("you are not in the room")
        # 4.5.2 Kicking needs the kicker to be joined.
        if sender_membership != "join":
            raise AuthError(f"{event.sender} is not in the room")
        # 4.5.3 Unbanning needs the ban level.
        ban = get_named_level(power_levels, "ban")
        if target_membership == "ban" and sender_level < ban:
            raise AuthError(f"insufficient power to unban (need {ban}, have {_fmt(sender_level)})")
        # 4.5.4 Kick level, and more power than the target.
        kick = get_named_level(power_levels, "kick")
        if sender_level >= kick and target_level < sender_level:
            return
        # 4.5.5
        if sender_level < kick:
            raise AuthError(f"insufficient power to kick (need {kick}, have {_fmt(sender_level)})")
        raise AuthError(f"{target} has at least your power level")

    if membership == "ban":
        # 4.6.1 The banner must be joined.
        if sender_membership != "join":
            raise AuthError(f"{event.sender} is not in the room")
        # 4.6.2 Ban level, and more power than the target.
        ban = get_named_level(power_levels, "ban")
        if sender_level >= ban and target_level < sender_level:
            return
        # 4.6.3
        if sender_level < ban:
            raise AuthError(f"insufficient power to ban (need {ban}, have {_fmt(sender_level)})")
        raise AuthError(f"{target} has at least your power level")

    if membership == "knock":
        # 4.7.1 Only knock / knock_restricted rooms accept knocks.
        if join_rule not in ("knock", "knock_restricted"):
            raise AuthError("this room does not accept knocks")
        # 4.7.2 Only for yourself.
        if event.sender != target:
            raise AuthError("you cannot knock on behalf of someone else")
        # 4.7.3 Not when banned, invited or joined.
        if sender_membership not in ("ban", "invite", "join"):
            return
        # 4.7.4
        raise AuthError(f"you cannot knock while your membership is {sender_membership}")

    # 4.8 Unknown membership.
    raise AuthError(f"unknown membership {membership!r}")


def _check_third_party_invite(
    event: Event, tpi: Any, auth_events: Mapping[StateKey, Event], target_membership: str | None
) -> None:
    # 4.4.1.1 Not for banned users.
    if target_membership == "ban":
        raise AuthError(f"{event.state_key} is banned from the room")
    # 4.4.1.2-3 A signed block with mxid and token.
    signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
    if not isinstance(signed, Mapping):
        raise AuthError("third_party_invite has no signed block")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed needs mxid and token")
    # 4.4.1.4 mxid is the invitee.
    if mxid != event.state_key:
        raise AuthError("third_party_invite mxid does not match the invitee")
    # 4.4.1.5 The m.room.third_party_invite for the token.
    tp_event = auth_events.get(("m.room.third_party_invite", token))
    if tp_event is None:
        raise AuthError("no m.room.third_party_invite for this token")
    # 4.4.1.6 Same sender as that event.
    if tp_event.sender != event.sender:
        raise AuthError("the third-party invite was made by someone else")
    # 4.4.1.7 A signature by one of its public keys.
    keys = []
    if isinstance(tp_event.content.get("public_key"), str):
        keys.append(tp_event.content["public_key"])
    for k in tp_event.content.get("public_keys", []) or []:
        if isinstance(k, Mapping) and isinstance(k.get("public_key"), str):
            keys.append(k["public_key"])
    if _signed_by_any(signed, keys):
        return
    # 4.4.1.8
    raise AuthError("the third-party invite signature does not verify")


def _signed_by_any(signed: Mapping[str, Any], keys: list[str]) -> bool:
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey
    from unpaddedbase64 import decode_base64

    from homeserver.core.canonical import encode_canonical_json

    sigs = signed.get("signatures")
    if not isinstance(sigs, Mapping):
        return False
    message = encode_canonical_json(
        {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
    )
    for server_sigs in sigs.values():
        if not isinstance(server_sigs, Mapping):
            continue
        for sig in server_sigs.values():
            for key in keys:
                try:
                    VerifyKey(decode_base64(key)).verify(message, decode_base64(sig))
                    return True
                except (BadSignatureError, ValueError, TypeError):
                    continue
    return False


def _check_power_levels(
    event: Event, current: Event | None, create: Event, sender_level: float
) -> None:
    c = event.content
    # 9.1 Integer properties.
    for key in _INT_KEYS:
        if key in c and not _is_int(c[key]):
            raise AuthError(f"power level {key} must be an integer")
    # 9.2 events / notifications map to integers.
    for key in ("events", "notifications"):
        if key in c and (
            not isinstance(c[key], Mapping) or not all(_is_int(v) for v in c[key].values())
        ):
            raise AuthError(f"power levels {key} must map to integers")
    # 9.3 users: valid user ids to integers.
    users = c.get("users", {})
    if not isinstance(users, Mapping):
        raise AuthError("power levels users must be an object")
    for u, lvl in users.items():
        try:
            UserID.parse(u)
        except InvalidID as e:
            raise AuthError(f"invalid user id in power levels: {u!r}") from e
        if not _is_int(lvl):
            raise AuthError(f"power level of {u} must be an integer")
    # 9.3 (v12) Creators may not be listed.
    if event.room_version.privileged_creators:
        listed = creators(create) & set(users)
        if listed:
            raise AuthError(f"creators cannot be given a power level: {sorted(listed)}")
    # 9.4 The first power levels event is allowed.
    if current is None:
        return
    old = current.content
    # 9.5 Changed top-level levels: old and new value within the sender's power.
    for key in _INT_KEYS:
        if old.get(key) != c.get(key):
            for v in (old.get(key), c.get(key)):
                if isinstance(v, int) and _is_int(v) and v > sender_level:
                    raise AuthError(f"cannot change {key} beyond your own power level")
    # 9.6-9.7 events / notifications entries.
    for key in ("events", "notifications"):
        o = _obj(old.get(key))
        n = _obj(c.get(key))
        for k in set(o) | set(n):
            if o.get(k) == n.get(k):
                continue
            if k in o and _is_int(o[k]) and o[k] > sender_level:
                raise AuthError(f"cannot change {key}.{k}: it is above your power level")
            if k in n and n[k] > sender_level:
                raise AuthError(f"cannot set {key}.{k} above your power level")
    # 9.8-9.9 users entries.
    o_users = _obj(old.get("users"))
    for u in set(o_users) | set(users):
        if o_users.get(u) == users.get(u):
            continue
        if (
            u in o_users
            and u != event.sender
            and _is_int(o_users[u])
            and o_users[u] >= sender_level
        ):
            raise AuthError(f"cannot change the power level of {u}: not below yours")
        if u in users and users[u] > sender_level:
            raise AuthError(f"cannot give {u} more power than you have")
