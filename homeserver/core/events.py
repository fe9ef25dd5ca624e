"""The PDU as a frozen value, and the builders that make new ones.

An ``Event`` wraps the exact JSON object that was hashed and signed (``pdu``)
together with the parsed fields everything else reads. The JSON must never be
mutated after construction: its reference hash *is* the event id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from homeserver.core.room_versions import RoomVersion

StateKey = tuple[str, str]  # (event type, state key)


@dataclass(frozen=True, slots=True, eq=False)
class Event:
    """One persistent data unit of a room DAG (room versions 10-12).

    ``pdu`` is the event as it goes over federation (no ``event_id`` key:
    from event format v3 the id is derived from the reference hash). For v12
    create events the PDU has no ``room_id``; ``room_id`` here is the derived
    one, so readers never special-case it.
    """

    event_id: str
    room_id: str
    type: str
    sender: str
    content: Mapping[str, Any]
    state_key: str | None
    depth: int
    origin_server_ts: int
    prev_events: tuple[str, ...]
    auth_events: tuple[str, ...]
    room_version: RoomVersion
    pdu: Mapping[str, Any] = field(repr=False)
    redacts: str | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def state_tuple(self) -> StateKey:
        assert self.state_key is not None, "not a state event"
        return (self.type, self.state_key)

    @property
    def membership(self) -> str | None:
        if self.type != "m.room.member":
            return None
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    @classmethod
    def from_pdu(
        cls, pdu: Mapping[str, Any], rv: RoomVersion, *, event_id: str | None = None
    ) -> Event:
        """Parse and check a PDU; the id is computed unless given (trusted
        rows read back from our own store)."""
        return _from_pdu(cls, pdu, rv, event_id=event_id)

    def client_dict(self) -> dict[str, Any]:
        """The client-server API form (``ClientEvent`` without ``unsigned``)."""
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "room_id": self.room_id,
            "type": self.type,
            "sender": self.sender,
            "content": dict(self.content),
            "origin_server_ts": self.origin_server_ts,
        }
        if self.state_key is not None:
            d["state_key"] = self.state_key
        if self.redacts is not None:
            d["redacts"] = self.redacts
        return d


MAX_PDU_SIZE = 65_536
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
MAX_DEPTH = 2**53 - 1
_ID_FIELDS = ("type", "state_key", "sender", "room_id")


class InvalidEvent(ValueError):
    """A PDU whose shape breaks the room version's event format."""


def _str_list(pdu: Mapping[str, Any], key: str, limit: int) -> tuple[str, ...]:
    value = pdu.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidEvent(f"{key} must be a list of event ids")
    if len(value) > limit:
        raise InvalidEvent(f"too many {key} ({len(value)} > {limit})")
    return tuple(value)


def _from_pdu(
    cls: type[Event], pdu: Mapping[str, Any], rv: RoomVersion, *, event_id: str | None = None
) -> Event:
    """Parse and check a PDU (event format v3, room versions 10-12)."""
    from homeserver.core.canonical import (
        CanonicalJSONError,
        compute_event_id,
        compute_room_id_v12,
        encode_canonical_json,
    )

    if not isinstance(pdu, Mapping):
        raise InvalidEvent("event must be an object")
    for key, kind in (("type", str), ("sender", str), ("content", Mapping)):
        if not isinstance(pdu.get(key), kind):
            raise InvalidEvent(f"missing or invalid '{key}'")
    depth = pdu.get("depth")
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= MAX_DEPTH:
        raise InvalidEvent("depth must be an integer between 0 and 2**53-1")
    ts = pdu.get("origin_server_ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise InvalidEvent("origin_server_ts must be an integer")
    state_key = pdu.get("state_key")
    if state_key is not None and not isinstance(state_key, str):
        raise InvalidEvent("state_key must be a string")
    for key in _ID_FIELDS:
        v = pdu.get(key)
        if isinstance(v, str) and len(v.encode()) > 255:
            raise InvalidEvent(f"{key} is longer than 255 bytes")
    prev_events = _str_list(pdu, "prev_events", MAX_PREV_EVENTS)
    auth_events = _str_list(pdu, "auth_events", MAX_AUTH_EVENTS)
    try:
        size = len(encode_canonical_json(dict(pdu)))
    except CanonicalJSONError as e:
        raise InvalidEvent(str(e)) from e
    if size > MAX_PDU_SIZE:
        raise InvalidEvent(f"event is too large ({size} > {MAX_PDU_SIZE} bytes)")
    is_create = pdu["type"] == "m.room.create" and state_key == ""
    room_id = pdu.get("room_id")
    if rv.room_id_is_create_event_hash and is_create:
        if room_id is not None:
            raise InvalidEvent("a v12 create event has no room_id")
        room_id = compute_room_id_v12(pdu, rv)
    elif not isinstance(room_id, str):
        raise InvalidEvent("missing or invalid 'room_id'")
    redacts = pdu.get("redacts")
    if rv.redacts_in_content and pdu["type"] == "m.room.redaction":
        redacts = pdu["content"].get("redacts", redacts)
    if redacts is not None and not isinstance(redacts, str):
        raise InvalidEvent("redacts must be an event id")
    return cls(
        event_id=event_id or compute_event_id(pdu, rv),
        room_id=room_id,
        type=pdu["type"],
        sender=pdu["sender"],
        content=pdu["content"],
        state_key=state_key,
        depth=depth,
        origin_server_ts=ts,
        prev_events=prev_events,
        auth_events=auth_events,
        room_version=rv,
        pdu=pdu,
        redacts=redacts,
    )


def build_event(
    rv: RoomVersion,
    *,
    room_id: str | None,
    sender: str,
    type: str,
    content: Mapping[str, Any],
    state_key: str | None = None,
    prev_events: Sequence[str],
    auth_events: Sequence[str],
    depth: int,
    origin_server_ts: int,
    server_name: str,
    signing_key: Any,
    redacts: str | None = None,
) -> Event:
    """A new local event: hashed, signed, with its id."""
    from homeserver.core.signing import sign_event

    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": dict(content),
        "depth": min(depth, MAX_DEPTH),
        "origin_server_ts": origin_server_ts,
        "prev_events": list(prev_events)[:MAX_PREV_EVENTS],
        "auth_events": list(auth_events)[:MAX_AUTH_EVENTS],
        "hashes": {},
        "signatures": {},
        "unsigned": {},
    }
    if not (rv.room_id_is_create_event_hash and type == "m.room.create"):
        if room_id is None:
            raise InvalidEvent("room_id is required")
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    if redacts is not None:
        if rv.redacts_in_content:
            pdu["content"]["redacts"] = redacts
        else:
            pdu["redacts"] = redacts
    del pdu["hashes"], pdu["signatures"], pdu["unsigned"]
    signed = sign_event(pdu, server_name, signing_key, rv)
    return Event.from_pdu(signed, rv)


def auth_types_for_event(
    rv: RoomVersion, type: str, state_key: str | None, sender: str, content: Mapping[str, Any]
) -> list[StateKey]:
    """The spec's "auth events selection": which state an event cites."""
    if type == "m.room.create":
        return []
    keys: list[StateKey] = []
    if not rv.room_id_is_create_event_hash:
        keys.append(("m.room.create", ""))
    keys += [("m.room.power_levels", ""), ("m.room.member", sender)]
    if type == "m.room.member" and state_key is not None:
        if state_key != sender:
            keys.append(("m.room.member", state_key))
        membership = content.get("membership")
        if membership in ("join", "invite", "knock"):
            keys.append(("m.room.join_rules", ""))
        tpi = content.get("third_party_invite")
        if membership == "invite" and isinstance(tpi, Mapping):
            signed = tpi.get("signed")
            if isinstance(signed, Mapping) and isinstance(signed.get("token"), str):
                keys.append(("m.room.third_party_invite", signed["token"]))
        via = content.get("join_authorised_via_users_server")
        if membership == "join" and isinstance(via, str):
            keys.append(("m.room.member", via))
    return list(dict.fromkeys(keys))  # first occurrence of each, in order


# Stripped state given with invites and knocks, to the invitee's client and to
# other servers alike: the spec's recommended list (Client-Server API,
# "Stripped state").
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.encryption",
)
